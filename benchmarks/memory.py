"""Resident-memory readings of this process for the CPU memory benchmarks (Linux /proc; glibc for malloc_trim)."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path


def rss_mb(field: str) -> float:
    """``VmRSS`` (resident now) or ``VmHWM`` (high-water mark) of this process from /proc, in MB (Linux only)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux >= 4.0: resets VmHWM to the current RSS


def release_freed_memory() -> None:
    """Give freed heap pages back to the OS, so that the warm-up step's leftovers do not count as resident."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass
