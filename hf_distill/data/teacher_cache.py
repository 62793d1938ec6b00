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

The meta file records what the cache is only valid for, and :func:`load_teacher_cache` checks each: the token ids of
the dataset *as indexed* (a shuffled, filtered or selected dataset is other data, :func:`data_fingerprint`), the
teacher's weights (a SHA-256 of its weight files, :func:`teacher_fingerprint`), the temperature and vocabulary, and
a SHA-256 of every file of the cache, so that a damaged file is refused by name rather than trained on. A NaN or a
positive log-probability is refused when the cache is built, and again in every batch the loss reads
(:func:`hf_distill.losses.topk.topk_token_kd`).

A teacher with another tokenizer than the student's (a :class:`~hf_distill.teachers.CrossTokenizerTeacher`) is cached
the same way, by the same function, in its own token space: at each student position where an aligned group is
compared, its top-k there and the chain rule's span log-probability (:mod:`hf_distill.data.cross_tokenizer_cache`,
columns :data:`~hf_distill.constants.CROSS_TOKENIZER_CACHE_COLUMNS`). Its meta file records both tokenizers (name
and a SHA-256 of each vocabulary), and a cache built for another pair is refused when it is loaded.
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
from torch import nn

from ..constants import CROSS_TOKENIZER_CACHE_COLUMNS, TEACHER_CACHE_COLUMNS
from ..cross_tokenizer.vocab import check_tokenizer_pair, describe_record, tokenizer_record
from ..file_checks import is_weight_file
from ..losses.topk import teacher_topk
from ..teachers.cross_tokenizer import CrossTokenizerTeacher
from ..version import __version__
from .cross_tokenizer_cache import check_logprobs, cross_tokenizer_features, cross_tokenizer_rows
from .padding import pad_rows

logger = logging.getLogger(__name__)

CACHE_META_FILE = "hf_distill_teacher_cache.json"
CACHE_DTYPES = {"float16": np.float16, "float32": np.float32}
CACHE_FORMAT_VERSION = 2  # 2: checksums of the files, the teacher's weights, data as indexed
_CHUNK_ROWS = 10_000  # rows hashed at a time
_READ_BYTES = 1 << 24


def cache_bytes_per_token(k: int, dtype: str = "float16") -> int:
    """Theoretical payload of the top-k columns per token: ``k`` int32 ids plus ``k`` ``dtype`` log-probabilities."""
    _check_dtype(dtype)
    return k * (4 + np.dtype(CACHE_DTYPES[dtype]).itemsize)


def is_teacher_cache_batch(batch) -> bool:
    """Whether a batch (a mapping of columns) carries cached teacher top-k columns."""
    return all(name in batch for name in TEACHER_CACHE_COLUMNS)


def data_fingerprint(dataset: datasets.Dataset) -> str:
    """SHA-256 of the token ids (and attention masks) of ``dataset`` in the order its rows are read, so through any
    indices mapping: a shuffled, filtered or selected dataset is other data. A cache fits only the data it was built
    on."""
    columns = [c for c in ("input_ids", "attention_mask") if c in dataset.column_names]
    digests = {(c, part): hashlib.sha256() for c in columns for part in ("lengths", "values")}
    for batch in dataset.with_format("arrow").select_columns(columns).iter(batch_size=_CHUNK_ROWS):
        for c in columns:
            column = batch.column(c).combine_chunks()  # list<int>: row lengths, then the values of every row
            lengths = np.diff(np.asarray(column.offsets)).astype(np.int64)
            digests[c, "lengths"].update(lengths.tobytes())
            digests[c, "values"].update(np.asarray(column.flatten()).astype(np.int64).tobytes())
    return hashlib.sha256("".join(d.hexdigest() for d in digests.values()).encode()).hexdigest()


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _model_folder(model: nn.Module) -> str | None:
    """The folder ``model`` was loaded from: a local one, or its copy in the Hub cache; None for a model built in
    memory."""
    return _named_folder(getattr(getattr(model, "config", None), "_name_or_path", None) or "")


def _named_folder(name: str) -> str | None:
    """The local folder of a model named ``name``: the folder itself, or its copy in the Hub cache; None if none."""
    if os.path.isdir(name):
        return name
    if not name or name.startswith((".", "/")):
        return None
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(name, "config.json")
    except Exception:  # not a repository id
        return None
    return os.path.dirname(config) if isinstance(config, str) else None


def teacher_weight_folder(name: str) -> str | None:
    """The folder holding the weight files of the teacher named ``name`` (a local folder or a Hub name in the Hub
    cache), read without loading the model; None when there are none here."""
    folder = _named_folder(name)
    return folder if folder and any(is_weight_file(n) for n in os.listdir(folder)) else None


def teacher_fingerprint(teacher: nn.Module | str) -> tuple[str, str]:
    """``(SHA-256, what it is of)`` of a teacher's weights: of the weight files in its folder (``teacher`` a folder or
    Hub name, or a model loaded from one; ``"weight files"``), else of the model's tensors in memory (``"tensors"``)."""
    folder = _named_folder(teacher) if isinstance(teacher, str) else _model_folder(teacher)
    names = sorted(n for n in os.listdir(folder) if is_weight_file(n)) if folder and os.path.isdir(folder) else []
    if names:
        digest = hashlib.sha256()
        for name in names:
            digest.update(f"{name}\0{file_sha256(os.path.join(folder, name))}\n".encode())
        return digest.hexdigest(), "weight files"
    if isinstance(teacher, str):
        raise ValueError(f"{teacher} holds no weight files (*.safetensors, *.bin) to fingerprint the teacher by.")
    digest = hashlib.sha256()
    for name, tensor in sorted(teacher.state_dict().items()):
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\n".encode())
        # flat first: a 0-dim tensor (a scalar buffer) cannot be viewed as bytes of another element size
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest(), "tensors"


def meta_checksum(meta: dict) -> str:
    """SHA-256 of the meta record itself (its ``checksum`` field left out), so that a damaged value is caught too."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _check_dtype(dtype: str) -> None:
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"Unknown cache dtype {dtype!r}; choose one of {list(CACHE_DTYPES)}.")


def check_cache_input(dataset, batch_size: int) -> None:
    """What any teacher cache needs of the data it runs the teacher over: tokenized rows, at least one, and a batch
    size."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if "input_ids" not in dataset.column_names:
        raise ValueError(f"The dataset needs an `input_ids` column; it has {dataset.column_names}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty; there is nothing to cache.")


def _check_build_args(dataset, k, temperature, batch_size, dtype) -> None:
    _check_dtype(dtype)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    check_cache_input(dataset, batch_size)
    present = [c for c in (*TEACHER_CACHE_COLUMNS, *CROSS_TOKENIZER_CACHE_COLUMNS) if c in dataset.column_names]
    if present:
        raise ValueError(
            f"The dataset already has {present}; remove them (dataset.remove_columns) before building a new cache."
        )


def _cache_features(dataset, k: int, dtype: str) -> datasets.Features:
    """The dataset's features plus the two columns: ragged lists (one per position) of ``k`` values. The inner lists
    have a fixed length, which Arrow stores without offsets: ``k * (4 + 2)`` bytes a token, not 8 more."""
    features = dataset.features.copy()
    features[TEACHER_CACHE_COLUMNS[0]] = datasets.Sequence(datasets.Sequence(datasets.Value("int32"), length=k))
    features[TEACHER_CACHE_COLUMNS[1]] = datasets.Sequence(datasets.Sequence(datasets.Value(dtype), length=k))
    return features


def _teacher_batch_fn(teacher, k, temperature, dtype, pad_token_id, stats):
    """The ``map`` function: pad a batch, run the teacher, cut each row back to its own length (a
    :class:`CrossTokenizerTeacher`: its targets at the student's positions, ``cross_tokenizer_rows``)."""
    cross = isinstance(teacher, CrossTokenizerTeacher)
    model = teacher.model if cross else teacher
    device = next(model.parameters()).device
    np_dtype = CACHE_DTYPES[dtype]

    @torch.no_grad()
    def fn(batch):
        lengths = [len(r) for r in batch["input_ids"]]
        input_ids = pad_rows(batch["input_ids"], pad_token_id, dtype=torch.int64).to(device)  # (B, L)
        if "attention_mask" in batch:
            attention_mask = pad_rows(batch["attention_mask"], 0, dtype=torch.int64).to(device)  # (B, L)
        else:
            attention_mask = (torch.arange(input_ids.shape[1])[None, :] < torch.tensor(lengths)[:, None]).long()
            attention_mask = attention_mask.to(device)
        if cross:
            stats["vocab_size"] = model.get_output_embeddings().weight.shape[0]
            rows = cross_tokenizer_rows(teacher, input_ids, attention_mask, lengths, k, temperature, np_dtype)
            stats["num_tokens"] += sum(lengths)
            return rows
        logits = teacher(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, L, V)
        stats["vocab_size"] = logits.shape[-1]
        ids, logprobs = teacher_topk(logits, k, temperature)  # (B, L, k) each
        check_logprobs(logprobs[attention_mask.bool()])  # (N, k) of the real tokens
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
            ``eval()`` under ``no_grad`` on its own device, then put back in its previous mode. Or a
            :class:`~hf_distill.teachers.CrossTokenizerTeacher` (a teacher with another tokenizer than the rows'):
            the cache then holds its targets at the aligned groups (module docstring) and records both tokenizers.
        dataset: rows with ``input_ids`` (ragged or padded), optionally ``attention_mask``, ``labels`` and other
            columns, which are all kept. Ragged rows are right-padded per batch with ``pad_token_id``; the padding
            positions are cut off again, so each row of the new columns has the length of its ``input_ids``.
        k: top-k tokens kept per position.
        temperature: the ``T`` of the stored log-probabilities; train at the same ``T``.
        batch_size: examples per teacher forward pass.
        output_dir: where to ``save_to_disk`` the dataset and then write ``CACHE_META_FILE``; ``None`` keeps it in
            memory only (or in the ``datasets`` cache, for a dataset loaded from disk).
        dtype: ``"float16"`` (default, 2 bytes) or ``"float32"`` for the log-probabilities; ids are int32.
        teacher_name: recorded in the meta file; default ``teacher.config._name_or_path`` or the class name. The
            teacher's weights are recorded too (:func:`teacher_fingerprint`), which is what the cache is checked by.

    Returns:
        The dataset with ``teacher_topk_ids`` ``(T, k)`` int32 and ``teacher_topk_logprobs`` ``(T, k)`` per example
        (across tokenizers: the four :data:`~hf_distill.constants.CROSS_TOKENIZER_CACHE_COLUMNS`).
    """
    _check_build_args(dataset, k, temperature, batch_size, dtype)
    cross = isinstance(teacher, CrossTokenizerTeacher)
    model = teacher.model if cross else teacher
    stats = {"num_tokens": 0, "vocab_size": None}
    was_training = model.training
    model.eval()
    try:
        cached = dataset.map(
            _teacher_batch_fn(teacher, k, temperature, dtype, pad_token_id, stats),
            batched=True,
            batch_size=batch_size,
            features=(cross_tokenizer_features if cross else _cache_features)(dataset, k, dtype),
            load_from_cache_file=False,  # the fingerprint cannot see the teacher's weights: never reuse a result
            new_fingerprint=datasets.fingerprint.generate_random_fingerprint(),
            desc=f"Teacher top-{k} log-probs" + (" across tokenizers" if cross else ""),
        )
    finally:
        model.train(was_training)

    if output_dir is not None:
        if teacher_name is None:
            config = getattr(model, "config", None)
            teacher_name = getattr(config, "_name_or_path", None) or type(model).__name__
        meta = {
            "format": "hf_distill_teacher_cache",
            "format_version": CACHE_FORMAT_VERSION,
            "teacher": teacher_name,
            "k": k,
            "temperature": float(temperature),
            "tail": "bucket",
            "vocab_size": stats["vocab_size"],
            "dtype": dtype,
            "columns": list(CROSS_TOKENIZER_CACHE_COLUMNS if cross else TEACHER_CACHE_COLUMNS),
            "num_tokens": stats["num_tokens"],
            "num_examples": len(cached),
            "data_sha256": data_fingerprint(dataset),
        }
        if cross:  # the teacher's ids and the re-encoding of the rows hold for this pair only
            meta["tokenizers"] = {
                "teacher": tokenizer_record(teacher.tokenizer),
                "student": tokenizer_record(teacher.student_tokenizer),
            }
        meta["teacher_sha256"], meta["teacher_sha256_of"] = teacher_fingerprint(model)
        _save_cache(cached, output_dir, meta)
    return cached


def _save_cache(cached: datasets.Dataset, output_dir: str, meta: dict) -> None:
    """``save_to_disk`` then the meta file, last and atomically, so that only a complete folder reads as a cache."""
    meta_path = os.path.join(output_dir, CACHE_META_FILE)
    if os.path.exists(meta_path):  # an older cache is being overwritten: it stops counting as finished right now
        os.remove(meta_path)
    cached.save_to_disk(output_dir)
    arrow_bytes = sum(
        os.path.getsize(os.path.join(output_dir, name)) for name in os.listdir(output_dir) if name.endswith(".arrow")
    )
    topk_bytes = sum(cached.data.column(name).nbytes for name in meta["columns"])
    tokens = max(meta["num_tokens"], 1)
    meta["bytes_per_token"] = arrow_bytes / tokens  # everything saved: the top-k columns, input_ids, labels...
    meta["topk_bytes_per_token"] = topk_bytes / tokens  # the two top-k columns alone, with their per-example offsets
    write_meta(output_dir, meta)
    logger.info(
        "Saved a teacher top-%d cache of %d tokens to %s (%.1f bytes per token on disk).",
        meta["k"],
        meta["num_tokens"],
        output_dir,
        meta["bytes_per_token"],
    )


def write_meta(output_dir: str, meta: dict, meta_file: str = CACHE_META_FILE) -> None:
    """Finish a cache folder: ``meta`` plus the package version, the SHA-256 of every other file of the folder and its
    own checksum, written to ``meta_file`` last and atomically (temporary file, then ``os.replace``)."""
    meta_path = os.path.join(output_dir, meta_file)
    meta["hf_distill_version"] = __version__
    meta["files"] = {  # every file of the cache but the meta file, checked on load
        name: file_sha256(os.path.join(output_dir, name))
        for name in sorted(os.listdir(output_dir))
        if name not in (meta_file, meta_file + ".tmp") and os.path.isfile(os.path.join(output_dir, name))
    }
    meta["checksum"] = meta_checksum(meta)
    tmp_path = meta_path + ".tmp"
    with open(tmp_path, "w") as f:
        json.dump(meta, f, indent=2)
    os.replace(tmp_path, meta_path)


def load_teacher_cache(
    path: str,
    *,
    temperature: float | None = None,
    vocab_size: int | None = None,
    dataset: datasets.Dataset | None = None,
    teacher_name: str | None = None,
    teacher: nn.Module | str | None = None,
    tokenizers: tuple | None = None,
) -> tuple[datasets.Dataset, dict]:
    """Load a cache written by :func:`build_teacher_cache`; returns ``(dataset, meta)``.

    Args:
        path: the cache folder.
        temperature: the training temperature; refused unless it equals the cache's (top-k log-probabilities are
            taken at one temperature and cannot be re-softened without the full logits).
        vocab_size: the student's vocabulary (output rows); refused unless it equals the teacher's (a cache across
            tokenizers: not compared, the tokenizers are).
        dataset: the training data the caller means to use; refused unless its token ids are those the cache was
            built on (:func:`data_fingerprint`).
        teacher_name: the teacher the caller means to use; refused unless the cache names the same one.
        teacher: the teacher's model or folder; refused unless its weights are those the cache was built with
            (:func:`teacher_fingerprint`).
        tokenizers: ``(teacher_tokenizer, student_tokenizer)`` of a student with another tokenizer than the teacher:
            the cache must be a cross-tokenizer one built for these two (the vocabularies it records), else refused
            in one line naming both pairs. A cross-tokenizer cache is refused without them.

    Every file of the cache is checked against the SHA-256 recorded when it was built; a damaged one is refused.
    """
    meta_path = os.path.join(path, CACHE_META_FILE)
    if not os.path.isfile(meta_path):
        raise ValueError(
            f"{path!r} is not a finished teacher cache: it has no {CACHE_META_FILE} (written last by "
            "build_teacher_cache, so an interrupted build has none). Build it with "
            "hf_distill.data.build_teacher_cache(teacher, dataset, k=..., output_dir=...)."
        )
    meta = read_meta(path, meta_path)
    check_files(path, meta)
    if temperature is not None and not math.isclose(float(temperature), meta["temperature"], rel_tol=1e-9):
        raise ValueError(
            f"The teacher cache at {path!r} holds log-probabilities at temperature {meta['temperature']}, but "
            f"training uses temperature {temperature}; rebuild the cache at the training temperature "
            f"(build_teacher_cache(..., temperature={temperature})) or train at {meta['temperature']}."
        )
    check_cache_tokenizers(path, meta, tokenizers)
    if vocab_size is not None and "tokenizers" not in meta and vocab_size != meta["vocab_size"]:
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
    if teacher is not None:
        check_teacher(path, meta, teacher)
    if dataset is not None and meta.get("data_sha256") != data_fingerprint(dataset):
        raise ValueError(
            f"The teacher cache at {path!r} was built on other training data than the data given now (token ids "
            "differ, or their order: another file, block size, tokenizer, sample count, shuffle or filter): point "
            "--teacher_cache_dir at a new folder (or delete this one) to build a cache for this data."
        )
    cached = datasets.load_from_disk(path)
    missing = [c for c in meta["columns"] if c not in cached.column_names]
    if missing:
        raise ValueError(f"The teacher cache at {path!r} lacks the columns {missing}; rebuild it.")
    return cached, meta


def check_cache_tokenizers(path: str, meta: dict, tokenizers: tuple | None) -> None:
    """A cross-tokenizer cache is read with the tokenizer pair it was built for, and only with tokenizers given."""
    recorded = meta.get("tokenizers")
    if tokenizers is None and recorded is not None:
        raise ValueError(
            f"The teacher cache at {path!r} was built across tokenizers (teacher "
            f"{describe_record(recorded['teacher'])}, student {describe_record(recorded['student'])}): load it with "
            "tokenizers=(teacher_tokenizer, student_tokenizer), which are checked against these (hf-distill "
            f"causal-lm: give the student it was built for, or {RETARGET})."
        )
    if tokenizers is None:
        return
    if recorded is None:
        raise ValueError(
            f"The teacher cache at {path!r} holds the top-k of {meta['teacher']!r} in the vocabulary it shares with "
            f"its student, not across tokenizers: {RETARGET} to build a cache for this pair of tokenizers."
        )
    check_tokenizer_pair(recorded, *tokenizers, f"The teacher cache at {path!r}", f"{RETARGET} to build one for it")


# how to get a good top-k cache again, in its error messages
REBUILD = "delete the folder (the causal-lm job then builds it again) or point --teacher_cache_dir elsewhere"
RETARGET = "point --teacher_cache_dir at a new folder (or delete this one)"


def read_meta(path: str, meta_path: str, *, version: int = CACHE_FORMAT_VERSION, fix: str = REBUILD) -> dict:
    """The meta record, checked against its own checksum; a format older than ``version`` (no checksums) is refused.
    ``fix`` ends the error message: how to get a good cache."""
    name = os.path.basename(meta_path)
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"The teacher cache at {path!r} has a damaged {name} ({err}): {fix}.") from None
    if not isinstance(meta, dict) or meta.get("format_version", 0) < version:
        raise ValueError(
            f"The teacher cache at {path!r} was built by an older hf_distill, without the checksums this one checks "
            f"a cache by: {fix}."
        )
    if meta.get("checksum") != meta_checksum(meta):
        raise ValueError(f"The teacher cache at {path!r} has a damaged {name} (its checksum differs): {fix}.")
    return meta


def check_files(path: str, meta: dict, *, fix: str = REBUILD) -> None:
    """Every file the build recorded is there, with the SHA-256 it had then."""
    for name, digest in meta["files"].items():
        file = os.path.join(path, name)
        if not os.path.isfile(file):
            raise ValueError(f"The teacher cache at {path!r} lacks {name}, which it was built with: {fix}.")
        if file_sha256(file) != digest:
            raise ValueError(
                f"The teacher cache at {path!r} is damaged: {name} does not match the checksum recorded when it was "
                f"built; {fix}."
            )


def check_teacher(path: str, meta: dict, teacher: nn.Module | str, *, fix: str = RETARGET) -> None:
    """The teacher's weights are those the cache was built with (compared as the build recorded them)."""
    digest, of = teacher_fingerprint(teacher)
    if of != meta["teacher_sha256_of"]:
        logger.warning(
            "The teacher cache at %s recorded its teacher's %s, but this teacher has only its %s to compare: its "
            "weights are not checked.",
            path,
            meta["teacher_sha256_of"],
            of,
        )
        return
    if digest != meta["teacher_sha256"]:
        name = teacher if isinstance(teacher, str) else getattr(teacher.config, "_name_or_path", "") or "the teacher"
        raise ValueError(
            f"The teacher cache at {path!r} was built with other teacher weights than those of {name} (the SHA-256 "
            f"of its {of} differs): {fix} to build a cache for this teacher."
        )
