"""Run an encoder teacher once over the training data, keep exactly what the losses read, and distil without it.

:func:`build_encoder_cache` runs the teacher (a :class:`~hf_distill.teachers.ModelTeacher`, length-grouped, as a
live run would) over ``dataset`` in order and stores, for each example and its real tokens only (no padding), what a
:class:`~hf_distill.teachers.TeacherRequest` asks: the logits, the hidden states of the mapped layers, the attention
maps of attention-map KD, and for self-relation KD (``attention_loss: relation``) either each block's queries, keys
and values (``relation_heads=None``: any relation head count can be computed from them) or, with ``relation_heads=R``,
the relation distributions themselves (:class:`hf_distill.losses.attention.RelationTarget`), which a training step
then reads instead of computing: ``3 R n^2`` values a block and example against ``3 n D`` for Q/K/V (at MiniLM's
``R = 12``, ``D = 384``: smaller below 32 tokens, as SST-2 sentences are, twice the size at 64), and the teacher's
half of every relation term (a quarter of its cost) is gone from the step. Such a cache serves runs with that ``R``
only.

Values are stored in float16: 10 mantissa bits against bfloat16's 7 (8x finer rounding of the Q/K/V the relation
softmax amplifies), and an encoder's logits, hidden states and projections stay far below float16's 65504 (a value
that does not is refused when the cache is built, as are NaNs).

A cache folder holds ``encoder_cache.safetensors``, the teacher's ``config.json`` and ``ENCODER_META_FILE``, written
last: what the cache is valid for, checked by :func:`load_encoder_cache` with the top-k cache's helpers
(:mod:`hf_distill.data.teacher_cache`): the SHA-256 of the teacher's weights, of the dataset's token ids as indexed,
of every file, and the request it covers.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict

import datasets
import safetensors.torch
import torch
from torch import nn
from transformers import AutoConfig

from ..constants import TEACHER_CACHE_INDEX
from ..losses.attention import relation_target
from ..losses.lengths import valid_lengths
from ..teachers.base import Teacher, TeacherRequest
from ..teachers.encoder_cache import EncoderCacheTeacher, missing_from, stored_relation_heads, stored_request
from ..teachers.model import ModelTeacher
from .padding import pad_rows
from .teacher_cache import (
    check_cache_input,
    check_files,
    check_teacher,
    data_fingerprint,
    read_meta,
    teacher_fingerprint,
    write_meta,
)

logger = logging.getLogger(__name__)

ENCODER_META_FILE = "hf_distill_encoder_cache.json"
ENCODER_CACHE_FILE = "encoder_cache.safetensors"
ENCODER_FORMAT = "hf_distill_encoder_cache"
ENCODER_FORMAT_VERSION = 2  # 2: may hold self-relations (relation_heads) instead of Q/K/V
_FIX = "delete the folder (the glue job then builds it again) or point --teacher_cache elsewhere"
_RETARGET = "point --teacher_cache at a new folder (or delete this one)"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def with_cache_index(dataset: datasets.Dataset) -> datasets.Dataset:
    """``dataset`` with a ``teacher_cache_index`` column: each row's number, which names its row of the cache."""
    if TEACHER_CACHE_INDEX in dataset.column_names:
        dataset = dataset.remove_columns(TEACHER_CACHE_INDEX)
    return dataset.add_column(TEACHER_CACHE_INDEX, list(range(len(dataset))))


def _check_build_args(dataset, request: TeacherRequest, batch_size: int) -> None:
    if not isinstance(request, TeacherRequest) or not request:
        raise ValueError(f"request must be a TeacherRequest that asks for something, got {request!r}.")
    if request.chunked:
        raise ValueError("An encoder cache stores logits, not the chunked causal-LM path: set request.chunked=False.")
    check_cache_input(dataset, batch_size)


def _batch(rows: dict, pad_id: int, device) -> dict:
    """Ragged rows -> the right-padded model inputs ``(B, T)``."""
    out = {"input_ids": pad_rows(rows["input_ids"], pad_id, dtype=torch.int64)}
    if "attention_mask" in rows:
        out["attention_mask"] = pad_rows(rows["attention_mask"], 0, dtype=torch.int64)
    else:
        out["attention_mask"] = pad_rows([[1] * len(r) for r in rows["input_ids"]], 0, dtype=torch.int64)
    if "token_type_ids" in rows:
        out["token_type_ids"] = pad_rows(rows["token_type_ids"], 0, dtype=torch.int64)
    return {k: v.to(device) for k, v in out.items()}


def _relations(x: torch.Tensor, mask: torch.Tensor, heads: int, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Each example's relation distributions ``(R, n, n)`` flattened, examples after examples ``(sum R n^2,)`` in
    ``dtype``, and ``Σ p log p`` of each of its query rows ``(sum n, R)`` in float32, from the rounded ``p`` (so that
    the loss from the stored values is a divergence of exactly those)."""
    if valid_lengths(mask) is None:
        raise ValueError(
            "Self-relations are cached for right-padded rows only (real tokens first): drop the padding inside the "
            "dataset's rows, or build the cache without relation_heads."
        )
    probs = relation_target(x.float(), mask, heads).probs.to(dtype)  # (B, R, T, T), zeros off the real pairs
    rounded = probs.float()
    neg_entropy = torch.special.xlogy(rounded, rounded).sum(-1).transpose(1, 2)[mask]  # (sum n, R)
    flat = [probs[b, :, :n, :n].reshape(-1) for b, n in enumerate(mask.sum(1).tolist())]
    return torch.cat(flat), neg_entropy


def _real(outputs, request: TeacherRequest, mask: torch.Tensor, dtype, relation_heads=None) -> dict[str, torch.Tensor]:
    """The batch's outputs at its real tokens only, rows after rows: ``{name: (sum n, ...)}`` (``logits`` ``(B, C)``).
    With ``relation_heads``, the relations of the Q/K/V (see :func:`_relations`) instead of the Q/K/V."""
    out = {}
    if request.logits:
        logits = outputs.logits
        out["logits" if logits.dim() == 2 else "token_logits"] = logits if logits.dim() == 2 else logits[mask]
    for i in request.hidden_layers:
        out[f"hidden.{i}"] = outputs.hidden_states[i][mask]
    for i in request.qkv_layers:
        for name, x in zip("qkv", outputs.qkv[i], strict=True):
            if relation_heads:
                out[f"relation.{name}.{i}"], out[f"relation_negent.{name}.{i}"] = _relations(
                    x, mask, relation_heads, dtype
                )
            else:
                out[f"{name}.{i}"] = x[mask]
    for i in request.attention_layers:  # (B, H, T, T) -> each example's (n, n, H), flattened
        maps = outputs.attentions[i - 1]
        parts = []
        for b in range(mask.shape[0]):
            pos = mask[b].nonzero().squeeze(1)
            parts.append(maps[b][:, pos[:, None], pos[None, :]].permute(1, 2, 0).reshape(-1, maps.shape[1]))
        out[f"attention.{i}"] = torch.cat(parts)
    return {k: v.detach().to("cpu", torch.float32 if "negent" in k else dtype) for k, v in out.items()}


def _check_finite(tensors: dict) -> None:
    for name, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(
                f"The teacher's {name} is NaN or beyond float16's range (65504), so no cache was written: check the "
                "teacher's weights and dtype (run it in float32)."
            )


def build_encoder_cache(
    teacher,
    dataset: datasets.Dataset,
    request: TeacherRequest,
    output_dir: str | None = None,
    *,
    batch_size: int = 64,
    weights: str | None = None,
    name: str | None = None,
    relation_heads: int | None = None,
) -> EncoderCacheTeacher:
    """Run ``teacher`` once over ``dataset`` and keep what ``request`` asks, per example, real tokens only.

    Args:
        teacher: an encoder model (sequence or token classification) or a :class:`ModelTeacher` of one; run in
            ``eval()`` under ``no_grad``.
        dataset: tokenized rows (``input_ids``, optionally ``attention_mask`` and ``token_type_ids``; ragged), in the
            order the cache indexes them: train on :func:`with_cache_index` of this very dataset.
        request: what the losses read, e.g. ``DistillationPlan.request(0, chunked=False)``.
        output_dir: where to write the cache (see the module docstring); ``None`` keeps it in memory only.
        batch_size: examples per teacher forward.
        weights: the folder of the teacher's weight files, recorded as its fingerprint; default the folder it was
            loaded from, else its tensors in memory (give it for a teacher fine-tuned since it was loaded).
        name: recorded as the teacher's name; default its ``name_or_path``.
        relation_heads: store the self-relations of the requested Q/K/V with this many relation heads (the run's
            ``ObjectiveSettings.relation_heads``) instead of the Q/K/V: faster steps, for that head count only.

    Returns:
        The :class:`EncoderCacheTeacher` of the cache (``source=None``).
    """
    _check_build_args(dataset, request, batch_size)
    if relation_heads is not None and (not isinstance(relation_heads, int) or relation_heads < 1):
        raise ValueError(f"relation_heads must be a positive number of heads or None, got {relation_heads!r}.")
    live = teacher if isinstance(teacher, ModelTeacher) else ModelTeacher(teacher)
    model = live.model
    device = next(model.parameters()).device
    pad_id = getattr(live.config, "pad_token_id", None) or 0
    inputs = dataset.select_columns([c for c in _INPUTS if c in dataset.column_names])
    parts: dict[str, list[torch.Tensor]] = {}
    lengths = []
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(dataset), batch_size):
            rows = inputs[start : start + batch_size]
            batch = _batch(rows, pad_id, device)
            mask = batch["attention_mask"].bool()
            outputs = live.outputs(batch, request)
            for name_, value in _real(outputs, request, mask, torch.float16, relation_heads).items():
                parts.setdefault(name_, []).append(value)
            lengths += mask.sum(1).tolist()
    finally:
        model.train(was_training)
    tensors = {k: torch.cat(v) for k, v in parts.items()}
    _check_finite(tensors)
    tensors["lengths"] = torch.tensor(lengths, dtype=torch.int32)
    name = name or live.name
    if output_dir is not None:
        _save(output_dir, tensors, live, dataset, request, weights or model, name)
    return EncoderCacheTeacher(tensors, live.config, name=name, task=live.task)


def _save(output_dir: str, tensors: dict, live: ModelTeacher, dataset, request, weights, name: str) -> None:
    os.makedirs(output_dir, exist_ok=True)
    meta_path = os.path.join(output_dir, ENCODER_META_FILE)
    if os.path.exists(meta_path):  # an older cache is overwritten: it stops counting as finished right now
        os.remove(meta_path)
    safetensors.torch.save_file(tensors, os.path.join(output_dir, ENCODER_CACHE_FILE))
    live.config.save_pretrained(output_dir)
    num_tokens = int(tensors["lengths"].sum())
    payload = sum(t.numel() * t.element_size() for k, t in tensors.items() if k != "lengths")
    meta = {
        "format": ENCODER_FORMAT,
        "format_version": ENCODER_FORMAT_VERSION,
        "teacher": name,
        "task": live.task,
        "request": asdict(request),
        "relation_heads": stored_relation_heads(tensors),
        "dtype": "float16",
        "num_examples": len(dataset),
        "num_tokens": num_tokens,
        "payload_bytes": payload,
        "bytes_per_token": payload / max(num_tokens, 1),
        "data_sha256": data_fingerprint(dataset),
    }
    meta["teacher_sha256"], meta["teacher_sha256_of"] = teacher_fingerprint(weights)
    write_meta(output_dir, meta, ENCODER_META_FILE)
    logger.info(
        "Saved an encoder teacher cache of %d examples (%d tokens, %.1f MB) to %s.",
        len(dataset),
        num_tokens,
        payload / 1e6,
        output_dir,
    )


def is_encoder_cache(path: str) -> bool:
    """Whether ``path`` holds a finished encoder teacher cache (its meta file is written last)."""
    return os.path.isfile(os.path.join(path, ENCODER_META_FILE))


def load_encoder_cache(
    path: str,
    *,
    dataset: datasets.Dataset | None = None,
    teacher: nn.Module | str | None = None,
    request: TeacherRequest | None = None,
    source: Teacher | None = None,
    relation_heads: int | None = None,
) -> EncoderCacheTeacher:
    """Load a cache written by :func:`build_encoder_cache`, checked first (each check is optional but the files').

    Args:
        path: the cache folder.
        dataset: the data the caller trains on (without or with its ``teacher_cache_index``); refused unless its
            token ids are those the cache was built on, in the same order.
        teacher: the teacher's model or weight folder; refused unless its weights are those the cache was built with.
        request: what the run's losses read; refused unless the cache holds all of it.
        source: the teacher for batches without the index column (see :class:`EncoderCacheTeacher`).
        relation_heads: the run's relation head count; refused when the cache holds relations of another count.
    """
    if not is_encoder_cache(path):
        raise ValueError(
            f"{path!r} is not a finished encoder teacher cache: it has no {ENCODER_META_FILE} (written last, so an "
            "interrupted build has none); build it with hf_distill.data.build_encoder_cache(teacher, dataset, "
            "request, output_dir)."
        )
    meta = read_meta(path, os.path.join(path, ENCODER_META_FILE), version=ENCODER_FORMAT_VERSION, fix=_FIX)
    if meta.get("format") != ENCODER_FORMAT:
        raise ValueError(f"{path!r} holds a {meta.get('format')!r}, not an encoder teacher cache: {_FIX}.")
    if meta["format_version"] > ENCODER_FORMAT_VERSION:
        raise ValueError(
            f"The teacher cache at {path!r} has format {meta['format_version']}, newer than this hf_distill reads "
            f"({ENCODER_FORMAT_VERSION}): upgrade hf_distill, or {_RETARGET}."
        )
    check_files(path, meta, fix=_FIX)
    if teacher is not None:
        check_teacher(path, meta, teacher, fix=_RETARGET)
    if dataset is not None and meta["data_sha256"] != data_fingerprint(dataset):
        raise ValueError(
            f"The teacher cache at {path!r} was built on other training data than the data given now (token ids "
            f"differ, or their order: task, sample counts, seed, max_seq_length, augmentation or tokenizer): "
            f"{_RETARGET} to build a cache for this data."
        )
    held = TeacherRequest(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["request"].items()})
    if request is not None and (missing := missing_from(held, request)):
        raise ValueError(
            f"The teacher cache at {path!r} holds no {', '.join(missing)}, which the configured losses need: "
            f"{_RETARGET} to build a cache for this configuration."
        )
    stored_heads = meta.get("relation_heads")
    if (
        relation_heads is not None
        and request is not None
        and request.qkv_layers
        and stored_heads not in (None, relation_heads)
    ):
        raise ValueError(
            f"The teacher cache at {path!r} holds self-relations of {stored_heads} heads but the run uses "
            f"{relation_heads} (relation_heads): {_RETARGET} to build a cache for this configuration."
        )
    tensors = safetensors.torch.load_file(os.path.join(path, ENCODER_CACHE_FILE))
    if stored_request(tensors) != held or stored_relation_heads(tensors) != stored_heads:
        raise ValueError(f"The teacher cache at {path!r} does not hold what its meta file says: {_FIX}.")
    config = AutoConfig.from_pretrained(path)
    return EncoderCacheTeacher(tensors, config, source=source, name=meta["teacher"], task=meta["task"])
