"""Run a causal-LM teacher once, keep its top-k log-probabilities beside the dataset on disk, and distil without it.

A cached example gains two columns aligned with its ``input_ids`` positions: ``teacher_topk_ids`` (``T`` rows of
``k`` int32 ids) and ``teacher_topk_logprobs`` (``T`` rows of ``k`` float16 log-probabilities at the cache's
temperature, normalised over the full vocabulary). Row ``t`` is the teacher's distribution for the token at ``t + 1``,
so the training loss uses rows ``[:-1]`` against the student's shifted logits, with
:func:`hf_distill.losses.topk.topk_token_kd` (tail bucket). The last row is stored too, so that every column has the
length of ``input_ids`` and can be padded like it.

Cost: ``k * (4 + 2)`` bytes per token (:func:`cache_bytes_per_token`); ``k = 32`` is 192 bytes, against ``4 V``
bytes for full float32 logits. A finished cache is a ``save_to_disk`` folder plus ``CACHE_META_FILE``, written last
(temporary file then ``os.replace``): a folder without it is a build that never finished, and is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os

import datasets
import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

from .losses.topk import teacher_topk

logger = logging.getLogger(__name__)

CACHE_META_FILE = "hf_distill_teacher_cache.json"
TEACHER_CACHE_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs")
CACHE_DTYPES = {"float16": np.float16, "float32": np.float32}
CACHE_FORMAT_VERSION = 1


def cache_bytes_per_token(k: int, dtype: str = "float16") -> int:
    """Theoretical payload of the top-k columns per token: ``k`` int32 ids plus ``k`` ``dtype`` log-probabilities."""
    _check_dtype(dtype)
    return k * (4 + np.dtype(CACHE_DTYPES[dtype]).itemsize)


def is_teacher_cache_batch(batch) -> bool:
    """Whether a batch (a mapping of columns) carries cached teacher top-k columns."""
    return all(name in batch for name in TEACHER_CACHE_COLUMNS)


def data_fingerprint(dataset: datasets.Dataset) -> str:
    """SHA-256 of the token ids of ``dataset`` (rows and their boundaries): a cache fits only the data it was built on."""
    digest = hashlib.sha256()
    column = dataset.with_format(None).data.column("input_ids").combine_chunks()
    digest.update(np.asarray(column.offsets).astype(np.int64).tobytes())
    digest.update(np.asarray(column.flatten()).astype(np.int64).tobytes())
    return digest.hexdigest()


def _check_dtype(dtype: str) -> None:
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"Unknown cache dtype {dtype!r}; choose one of {list(CACHE_DTYPES)}.")


def _check_build_args(dataset, k, temperature, batch_size, dtype) -> None:
    _check_dtype(dtype)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if "input_ids" not in dataset.column_names:
        raise ValueError(f"The dataset needs an `input_ids` column; it has {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty; there is nothing to cache.")
    present = [c for c in TEACHER_CACHE_COLUMNS if c in dataset.column_names]
    if present:
        raise ValueError(
            f"The dataset already has {present}; remove them (dataset.remove_columns) before building a new cache."
        )


def _pad_rows(rows, pad_value: int) -> torch.Tensor:
    """Ragged rows (lists or 1-d tensors) -> ``(B, L)`` int64, right-padded with ``pad_value``."""
    return pad_sequence(
        [torch.as_tensor(r, dtype=torch.int64) for r in rows], batch_first=True, padding_value=pad_value
    )


def _cache_features(dataset, k: int, dtype: str) -> datasets.Features:
    """The dataset's features plus the two columns: ragged lists (one per position) of ``k`` values. The inner lists
    have a fixed length, which Arrow stores without offsets: ``k * (4 + 2)`` bytes a token, not 8 more."""
    features = dataset.features.copy()
    features[TEACHER_CACHE_COLUMNS[0]] = datasets.Sequence(datasets.Sequence(datasets.Value("int32"), length=k))
    features[TEACHER_CACHE_COLUMNS[1]] = datasets.Sequence(datasets.Sequence(datasets.Value(dtype), length=k))
    return features


def _teacher_batch_fn(teacher, k, temperature, dtype, pad_token_id, stats):
    """The ``map`` function: pad a batch, run the teacher, cut each row back to its own length."""
    device = next(teacher.parameters()).device
    np_dtype = CACHE_DTYPES[dtype]

    @torch.no_grad()
    def fn(batch):
        lengths = [len(r) for r in batch["input_ids"]]
        input_ids = _pad_rows(batch["input_ids"], pad_token_id).to(device)  # (B, L)
        if "attention_mask" in batch:
            attention_mask = _pad_rows(batch["attention_mask"], 0).to(device)  # (B, L)
        else:
            attention_mask = (torch.arange(input_ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
            attention_mask = attention_mask.to(device)
        logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, L, V)
        stats["vocab_size"] = logits.shape[-1]
        ids, logprobs = teacher_topk(logits, k, temperature)  # (B, L, k) each
        ids, logprobs = ids.to(torch.int32).cpu().numpy(), logprobs.cpu().numpy().astype(np_dtype)
        stats["num_tokens"] += sum(lengths)
        return {
            TEACHER_CACHE_COLUMNS[0]: [ids[b, :n] for b, n in enumerate(lengths)],  # each (n, k)
            TEACHER_CACHE_COLUMNS[1]: [logprobs[b, :n] for b, n in enumerate(lengths)],
        }

    return fn


def build_teacher_cache(
    teacher,
    dataset: datasets.Dataset,
    *,
    k: int,
    temperature: float = 1.0,
    batch_size: int = 8,
    output_dir: str | None = None,
    dtype: str = "float16",
    teacher_name: str | None = None,
    pad_token_id: int = 0,
) -> datasets.Dataset:
    """Add the teacher's top-k log-probabilities to every example of ``dataset``; optionally save it as a cache.

    Args:
        teacher: a causal LM (``teacher(input_ids=, attention_mask=).logits`` is ``(B, L, V)``); it is run in
            ``eval()`` under ``no_grad`` on its own device, then put back in its previous mode.
        dataset: rows with ``input_ids`` (ragged or padded), optionally ``attention_mask``, ``labels`` and other
            columns, which are all kept. Ragged rows are right-padded per batch with ``pad_token_id``; the padding
            positions are cut off again, so each row of the new columns has the length of its ``input_ids``.
        k: top-k tokens kept per position.
        temperature: the ``T`` of the stored log-probabilities; train at the same ``T``.
        batch_size: examples per teacher forward pass.
        output_dir: where to ``save_to_disk`` the dataset and then write ``CACHE_META_FILE``; ``None`` keeps it in
            memory only (or in the ``datasets`` cache, for a dataset loaded from disk).
        dtype: ``"float16"`` (default, 2 bytes) or ``"float32"`` for the log-probabilities; ids are int32.
        teacher_name: recorded in the meta file; default ``teacher.config._name_or_path`` or the class name.

    Returns:
        The dataset with ``teacher_topk_ids`` ``(T, k)`` int32 and ``teacher_topk_logprobs`` ``(T, k)`` per example.
    """
    _check_build_args(dataset, k, temperature, batch_size, dtype)
    stats = {"num_tokens": 0, "vocab_size": None}
    was_training = teacher.training
    teacher.eval()
    try:
        cached = dataset.map(
            _teacher_batch_fn(teacher, k, temperature, dtype, pad_token_id, stats),
            batched=True,
            batch_size=batch_size,
            features=_cache_features(dataset, k, dtype),
            load_from_cache_file=False,  # the fingerprint cannot see the teacher's weights: never reuse a result
            new_fingerprint=datasets.fingerprint.generate_random_fingerprint(),
            desc=f"Teacher top-{k} log-probs",
        )
    finally:
        teacher.train(was_training)

    if output_dir is not None:
        if teacher_name is None:
            config = getattr(teacher, "config", None)
            teacher_name = getattr(config, "_name_or_path", None) or type(teacher).__name__
        meta = {
            "format": "hf_distill_teacher_cache",
            "format_version": CACHE_FORMAT_VERSION,
            "teacher": teacher_name,
            "k": k,
            "temperature": float(temperature),
            "tail": "bucket",
            "vocab_size": stats["vocab_size"],
            "dtype": dtype,
            "columns": list(TEACHER_CACHE_COLUMNS),
            "num_tokens": stats["num_tokens"],
            "num_examples": len(cached),
            "data_sha256": data_fingerprint(dataset),
        }
        _save_cache(cached, output_dir, meta)
    return cached


def _save_cache(cached: datasets.Dataset, output_dir: str, meta: dict) -> None:
    """``save_to_disk`` then the meta file, last and atomically, so that only a complete folder reads as a cache."""
    from . import __version__

    meta_path = os.path.join(output_dir, CACHE_META_FILE)
    if os.path.exists(meta_path):  # an older cache is being overwritten: it stops counting as finished right now
        os.remove(meta_path)
    cached.save_to_disk(output_dir)
    arrow_bytes = sum(
        os.path.getsize(os.path.join(output_dir, name)) for name in os.listdir(output_dir) if name.endswith(".arrow")
    )
    topk_bytes = sum(cached.data.column(name).nbytes for name in TEACHER_CACHE_COLUMNS)
    tokens = max(meta["num_tokens"], 1)
    meta["bytes_per_token"] = arrow_bytes / tokens  # everything saved: the top-k columns, input_ids, labels...
    meta["topk_bytes_per_token"] = topk_bytes / tokens  # the two top-k columns alone, with their per-example offsets
    meta["hf_distill_version"] = __version__
    tmp_path = meta_path + ".tmp"
    with open(tmp_path, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp_path, meta_path)
    logger.info(
        "Saved a teacher top-%d cache of %d tokens to %s (%.1f bytes per token on disk).",
        meta["k"],
        meta["num_tokens"],
        output_dir,
        meta["bytes_per_token"],
    )


def load_teacher_cache(
    path: str,
    *,
    temperature: float | None = None,
    vocab_size: int | None = None,
    dataset: datasets.Dataset | None = None,
    teacher_name: str | None = None,
) -> tuple[datasets.Dataset, dict]:
    """Load a cache written by :func:`build_teacher_cache`; returns ``(dataset, meta)``.

    Args:
        path: the cache folder.
        temperature: the training temperature; refused unless it equals the cache's (top-k log-probabilities are
            taken at one temperature and cannot be re-softened without the full logits).
        vocab_size: the student's vocabulary (output rows); refused unless it equals the teacher's.
        dataset: the training data the caller means to use; refused unless its token ids are those the cache was
            built on (:func:`data_fingerprint`).
        teacher_name: the teacher the caller means to use; refused unless the cache names the same one.
    """
    meta_path = os.path.join(path, CACHE_META_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(
            f"{path!r} is not a finished teacher cache: it has no {CACHE_META_FILE} (written last by "
            "build_teacher_cache, so an interrupted build has none). Build it with "
            "hf_distill.teacher_cache.build_teacher_cache(teacher, dataset, k=..., output_dir=...)."
        )
    with open(meta_path) as f:
        meta = json.load(f)
    if temperature is not None and not math.isclose(float(temperature), meta["temperature"], rel_tol=1e-9):
        raise ValueError(
            f"The teacher cache at {path!r} holds log-probabilities at temperature {meta['temperature']}, but "
            f"training uses temperature {temperature}; rebuild the cache at the training temperature "
            f"(build_teacher_cache(..., temperature={temperature})) or train at {meta['temperature']}."
        )
    if vocab_size is not None and vocab_size != meta["vocab_size"]:
        raise ValueError(
            f"The teacher cache at {path!r} was built for a vocabulary of {meta['vocab_size']} tokens, but the "
            f"student has {vocab_size}; logit KD needs the same vocabulary: use a student with the teacher's "
            "tokenizer and output size, or rebuild the cache with a matching teacher."
        )
    if teacher_name is not None and teacher_name != meta["teacher"]:
        raise ValueError(
            f"The teacher cache at {path!r} was built with the teacher {meta['teacher']!r}, not {teacher_name!r}: "
            "point --teacher_cache_dir at a new folder (or delete this one) to build a cache for this teacher."
        )
    if dataset is not None and meta.get("data_sha256") != data_fingerprint(dataset):
        raise ValueError(
            f"The teacher cache at {path!r} was built on other training data than the data given now (token ids "
            "differ: another file, block size, tokenizer or sample count): point --teacher_cache_dir at a new "
            "folder (or delete this one) to build a cache for this data."
        )
    cached = datasets.load_from_disk(path)
    missing = [c for c in TEACHER_CACHE_COLUMNS if c not in cached.column_names]
    if missing:
        raise ValueError(f"The teacher cache at {path!r} lacks the columns {missing}; rebuild it.")
    return cached, meta
