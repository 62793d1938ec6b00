"""Keep freed memory in the process when training runs on a CPU (glibc's allocator only).

A training step allocates and frees the same large buffers every step: activations, gradients, and for relation KD a
``(B R, T, T)`` float32 matrix per relation and pass (6 MB each on 32 x 64 batches, about 280 MB a step for the MiniLM
recipe's nine relations). glibc serves blocks above a threshold that starts at 128 KB with ``mmap`` and gives the
pages back on ``free``, and trims the top of its heap above a similar threshold, so the next step page-faults on all of
that memory again: 67,000 minor faults a step (about a fifth of its time) for the cached-teacher KD step of
``benchmarks/glue_step_time.py`` on 32 x 64 batches, against 3,800 for a plain student step.

:func:`keep_freed_memory` fixes both thresholds with ``mallopt``: blocks up to 32 MB (glibc's largest ``mmap``
threshold) come from the heap and are reused, and the heap is never trimmed. The process keeps its peak memory
instead of returning it between steps, which is what a training loop needs anyway. It is what
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=...`` does, but at run time. Other allocators (musl, macOS,
Windows) are left alone; with jemalloc or tcmalloc preloaded, glibc's settings are made but unused.
"""

from __future__ import annotations

import ctypes
import logging
import sys

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit
TRIM_THRESHOLD = 2**31 - 1  # an int: "never" in practice

_applied: bool | None = None


def _glibc():
    """The C library, when it is glibc (it has ``gnu_get_libc_version``), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: no ldconfig subprocess to find the library
        libc.gnu_get_libc_version  # noqa: B018 (musl has no such symbol)
    except (OSError, AttributeError):
        return None
    return libc


def keep_freed_memory() -> bool:
    """Set glibc's ``mmap`` and trim thresholds so that freed blocks up to 32 MB stay in the process for reuse.

    Once per process; returns whether the thresholds are set (False where the C library is not glibc, or refused).
    """
    global _applied
    if _applied is None:
        libc = _glibc()
        _applied = bool(
            libc is not None
            and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
        )
        if _applied:
            logger.debug("glibc malloc: mmap threshold %d bytes, trim threshold %d", MMAP_THRESHOLD, TRIM_THRESHOLD)
    return _applied
