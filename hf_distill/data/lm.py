"""Causal-LM data for distillation: load text or chat data, tokenize it with loss masks, pad batches, score perplexity.

Three layouts are accepted (:func:`detect_format` tells them apart by their columns):

``text``
    Raw documents. They are tokenized without special tokens, joined with an eos after each document, and cut into
    blocks of exactly ``block_size`` tokens; every token is a target.
``prompt_completion``
    ``prompt`` and ``completion`` (TRL's convention), either strings or lists of ``{"role", "content"}`` messages
    rendered with the chat template. Only the completion is a target.
``messages``
    A conversation rendered with the chat template. Only the assistant turns are targets.

Labels are *unshifted* (``labels[t]`` is the token at ``t``; the model shifts), with ``-100`` where there is no loss.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..constants import IGNORE_INDEX
from .padding import pad_rows

logger = logging.getLogger(__name__)

LM_FORMATS = ("text", "prompt_completion", "messages")
TEXT_PARTS = ("train", "validation", "all")

# Builder for each local file extension; .txt files are read whole (one row per file).
_LOCAL_BUILDERS = {".txt": "text", ".json": "json", ".jsonl": "json"}
LM_FILE_EXTENSIONS = tuple(_LOCAL_BUILDERS)  # the endings of the local files load_lm_dataset reads


# ----------------------------------------------------------------------------------------------------------- loading


def load_lm_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_file: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    split: str = "train",
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """One split of a causal-LM dataset, from the Hub (``dataset_name``) or from local files (``train_file``).

    Local ``.txt`` files are read as whole documents (one row per file, column ``text``); ``.json``/``.jsonl``
    files are read with the ``json`` builder (their columns as they are). ``split`` applies to Hub datasets only: the
    local files *are* the split. ``cache_dir`` is passed on to ``datasets.load_dataset``.
    """
    if (dataset_name is None) == (train_file is None):
        raise ValueError(
            f"Pass exactly one of dataset_name (a Hub dataset) or train_file (local .txt/.json/.jsonl files); got "
            f"dataset_name={dataset_name!r} and train_file={train_file!r}."
        )
    if dataset_name is not None:
        return datasets.load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)

    files = [train_file] if isinstance(train_file, (str, os.PathLike)) else list(train_file)
    files = [os.fspath(f) for f in files]
    if not files:
        raise ValueError("train_file is an empty list; pass one or more .txt, .json or .jsonl files.")
    builders = set()
    for file in files:
        suffix = Path(file).suffix.lower()
        if suffix not in _LOCAL_BUILDERS:
            raise ValueError(
                f"Cannot read {file!r}: unknown extension {suffix or '(none)'!r}. Use {sorted(_LOCAL_BUILDERS)} "
                "(.txt: one document per file; .json/.jsonl: records with text, prompt/completion or messages)."
            )
        if not Path(file).is_file():
            raise ValueError(f"train_file {file!r} does not exist or is not a file.")
        builders.add(_LOCAL_BUILDERS[suffix])
    if len(builders) > 1:
        raise ValueError(f"train_file mixes .txt and .json/.jsonl files ({files}); load them separately.")
    builder = builders.pop()
    extra = {"sample_by": "document"} if builder == "text" else {}
    return datasets.load_dataset(builder, data_files=files, split="train", cache_dir=cache_dir, **extra)


def read_text_split(path: str | os.PathLike, part: str = "train", validation_fraction: float = 0.1) -> str:
    """The first ``1 - validation_fraction`` (``part="train"``) or the rest (``"validation"``) of a UTF-8 text file.

    The cut is at ``int(len(text) * (1 - validation_fraction))`` characters (tinyshakespeare's usual 90/10 split),
    moved forward to the end of the line it falls in, so the validation part starts at a line boundary.
    ``part="all"`` returns the whole text.
    """
    if part not in TEXT_PARTS:
        raise ValueError(f"part={part!r} is not one of {TEXT_PARTS}.")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {validation_fraction!r}; 0.1 keeps 10% apart.")
    text = Path(path).read_text(encoding="utf-8")
    if part == "all":
        return text
    target = int(len(text) * (1 - validation_fraction))
    newline = text.find("\n", target - 1) if target > 0 else -1
    cut = 0 if target == 0 else (len(text) if newline < 0 else newline + 1)
    piece = text[:cut] if part == "train" else text[cut:]
    if not piece:
        raise ValueError(
            f"The {part} part of {path} is empty ({len(text)} characters, cut at {cut} on a line boundary); "
            "use a different validation_fraction or a file with more lines."
        )
    return piece


# -------------------------------------------------------------------------------------------------------- formats


def detect_format(column_names: Iterable[str]) -> str:
    """``"messages"``, ``"prompt_completion"`` or ``"text"``, from a dataset's column names (checked in that order)."""
    columns = set(column_names)
    if "messages" in columns:
        return "messages"
    if {"prompt", "completion"} <= columns:
        return "prompt_completion"
    if "text" in columns:
        return "text"
    raise ValueError(
        f"Cannot tell the data layout from columns {sorted(columns)}. Expected one of: a 'text' column (raw "
        "documents), 'prompt' and 'completion' columns, or a 'messages' column (lists of {role, content})."
    )


def tokenize_lm_dataset(
    raw: datasets.Dataset,
    tokenizer,
    *,
    block_size: int,
    data_format: str | None = None,
    add_eos: bool = True,
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Tokenize ``raw`` into ``input_ids``, ``attention_mask`` and ``labels`` (+ ``prompt_length`` for chat/prompts).

    ``data_format`` defaults to :func:`detect_format`. ``text``: blocks of exactly ``block_size`` tokens, with an eos
    after each document when ``add_eos`` (empty documents are skipped; the remainder is dropped). ``prompt_completion``
    and ``messages``: one row per example of at most ``block_size`` tokens, truncated on the right; rows left without
    any target token are dropped (and counted in a warning). ``prompt_length`` counts the tokens before the first
    target, the prompt to give ``generate``. ``add_eos`` appends an eos to string completions; chat renderings end
    their turns as the template does. All other columns are removed.
    """
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}.")
    data_format = detect_format(raw.column_names) if data_format is None else data_format
    needed = {"text": ["text"], "prompt_completion": ["prompt", "completion"], "messages": ["messages"]}
    if data_format not in needed:
        raise ValueError(f"data_format={data_format!r} is not one of {LM_FORMATS} (or None to detect it).")
    missing = [c for c in needed[data_format] if c not in raw.column_names]
    if missing:
        raise ValueError(
            f"data_format={data_format!r} needs columns {missing}, but the dataset has {raw.column_names}."
        )
    if data_format == "text":
        return _tokenize_text(raw, tokenizer, block_size, add_eos, num_proc)
    return _tokenize_examples(raw, tokenizer, block_size, data_format, add_eos, num_proc)


def _tokenize_text(raw, tokenizer, block_size, add_eos, num_proc) -> datasets.Dataset:
    eos = _eos_id(tokenizer) if add_eos else None

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
        return {"input_ids": [row + [eos] if eos is not None else row for row in ids if row]}

    def group(batch):
        # Called once on the whole column (batch_size=None), so blocks span documents and map batches.
        stream = list(itertools.chain.from_iterable(batch["input_ids"]))
        blocks = [stream[i : i + block_size] for i in range(0, len(stream) - block_size + 1, block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * block_size for _ in blocks], "labels": blocks}

    tokens = raw.map(encode, batched=True, remove_columns=raw.column_names, num_proc=num_proc, desc="Tokenizing")
    blocks = tokens.map(group, batched=True, batch_size=None, desc=f"Grouping into blocks of {block_size}")
    if len(blocks) == 0:
        total = sum(len(row) for row in tokens["input_ids"])
        raise ValueError(
            f"The text has {total} tokens, fewer than block_size={block_size}: not even one block. "
            "Use a smaller block_size or more text."
        )
    logger.info("Cut %d documents into %d blocks of %d tokens.", len(raw), len(blocks), block_size)
    return blocks


def _tokenize_examples(raw, tokenizer, block_size, data_format, add_eos, num_proc) -> datasets.Dataset:
    eos = _eos_id(tokenizer) if add_eos else None

    def encode(batch):
        out = {"input_ids": [], "attention_mask": [], "labels": [], "prompt_length": []}
        if data_format == "messages":
            rows = (_messages_example(tokenizer, messages) for messages in batch["messages"])
        else:
            rows = (
                _prompt_completion_example(tokenizer, p, c, eos) for p, c in zip(batch["prompt"], batch["completion"])
            )
        for ids, labels, prompt_length in rows:
            ids, labels = ids[:block_size], labels[:block_size]
            if all(label == IGNORE_INDEX for label in labels):
                continue  # nothing left to learn from
            out["input_ids"].append(ids)
            out["attention_mask"].append([1] * len(ids))
            out["labels"].append(labels)
            out["prompt_length"].append(prompt_length)
        return out

    encoded = raw.map(encode, batched=True, remove_columns=raw.column_names, num_proc=num_proc, desc="Tokenizing")
    dropped = len(raw) - len(encoded)
    if dropped:
        logger.warning(
            "Dropped %d of %d %s rows with no target token within block_size=%d (prompt too long, or no assistant "
            "turn).",
            dropped,
            len(raw),
            data_format,
            block_size,
        )
    if len(encoded) == 0:
        raise ValueError(f"No {data_format} row has a target token within block_size={block_size}; raise block_size.")
    return encoded


def _prompt_completion_example(tokenizer, prompt, completion, eos: int | None) -> tuple[list[int], list[int], int]:
    """``(input_ids, labels, prompt_length)`` for one prompt/completion pair, strings or message lists."""
    if _is_conversational(prompt):
        prompt_ids = _chat_ids(tokenizer, prompt, add_generation_prompt=True)
        full = _chat_ids(tokenizer, list(prompt) + list(completion), add_generation_prompt=False)
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError(
                "The chat template renders prompt + completion with a different start than the prompt alone (with "
                f"add_generation_prompt=True): {prompt_ids} is not a prefix of {full}. The completion tokens cannot be "
                "told apart; use a template whose generation prompt is the start of the assistant turn."
            )
        completion_ids = full[len(prompt_ids) :]
    else:
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
        completion_ids = completion_ids + [eos] if eos is not None else completion_ids
    labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    return prompt_ids + completion_ids, labels, len(prompt_ids)


def _messages_example(tokenizer, messages) -> tuple[list[int], list[int], int]:
    """``(input_ids, labels, prompt_length)`` with targets exactly on the assistant turns' tokens.

    Assistant turn ``i`` spans from the end of ``template(messages[:i], add_generation_prompt=True)`` to the end of
    ``template(messages[:i + 1])``, both of which must be prefixes of ``template(messages)``.
    """
    messages = list(messages)
    full = _chat_ids(tokenizer, messages, add_generation_prompt=False)
    labels = [IGNORE_INDEX] * len(full)
    prompt_length = len(full)
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        start = len(_prefix_of(full, _chat_ids(tokenizer, messages[:i], add_generation_prompt=True)))
        end = len(_prefix_of(full, _chat_ids(tokenizer, messages[: i + 1], add_generation_prompt=False)))
        labels[start:end] = full[start:end]
        prompt_length = min(prompt_length, start)
    return full, labels, prompt_length


def _prefix_of(full: list[int], part: list[int]) -> list[int]:
    if full[: len(part)] != part:
        raise ValueError(
            f"The chat template is not prefix-stable: rendering the first messages gives {part}, which is not a "
            f"prefix of the whole conversation's {full}, so assistant tokens cannot be located. Use a template that "
            "renders earlier turns the same whatever follows them."
        )
    return part


def _chat_ids(tokenizer, messages, add_generation_prompt: bool) -> list[int]:
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError(
            "The tokenizer has no chat template, needed to render data made of {role, content} messages. Set "
            "tokenizer.chat_template (or use a chat/instruct model's tokenizer), or give plain-text prompts."
        )
    # Render to text and tokenize without special tokens: the template writes any bos/eos itself.
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _is_conversational(value) -> bool:
    return isinstance(value, (list, tuple)) and len(value) > 0 and isinstance(value[0], dict)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has no eos_token_id to end documents with; set one or pass add_eos=False.")
    return tokenizer.eos_token_id


# ------------------------------------------------------------------------------------------------------- collation


@dataclass
class DistillationDataCollator:
    """Pad a list of tokenized rows into a batch of tensors, for training and for ``generate`` on the prompts.

    ``input_ids`` (``pad_token_id``), ``attention_mask`` (0, built from the lengths when absent) and ``labels``
    (``label_pad_token_id``) are right-padded to the longest row, rounded up to ``pad_to_multiple_of``: ``(B, T)``.
    Other per-token columns (rows as long as ``input_ids``, e.g. a ``(T_i, k)`` ``teacher_topk_ids`` table) are
    zero-padded along the first axis to ``(B, T, ...)``: integers as ``torch.long``, floats as ``torch.float32``.
    With ``prompt_length`` in the rows, the prompts ``input_ids[:prompt_length]`` are also given LEFT-padded as
    ``prompt_input_ids`` and ``prompt_attention_mask`` ``(B, P)``, and ``prompt_length`` itself is dropped. Other
    scalar or fixed-size columns are stacked; string columns are left out.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    label_pad_token_id: int = IGNORE_INDEX

    def __post_init__(self):
        if not isinstance(self.pad_token_id, int):
            raise ValueError(
                f"pad_token_id must be an int, got {self.pad_token_id!r}; pass tokenizer.pad_token_id (set "
                "tokenizer.pad_token = tokenizer.eos_token first if the tokenizer has no pad token)."
            )
        if self.pad_to_multiple_of is not None and (
            not isinstance(self.pad_to_multiple_of, int) or self.pad_to_multiple_of < 1
        ):
            raise ValueError(f"pad_to_multiple_of must be a positive int or None, got {self.pad_to_multiple_of!r}.")

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        if not features or any("input_ids" not in f for f in features):
            raise ValueError(
                "Every row given to DistillationDataCollator needs input_ids (got an empty batch or none)."
            )
        lengths = [len(f["input_ids"]) for f in features]
        width = max(lengths)
        if self.pad_to_multiple_of:
            width = math.ceil(width / self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad_values = {"input_ids": self.pad_token_id, "attention_mask": 0, "labels": self.label_pad_token_id}
        columns = {"input_ids": [f["input_ids"] for f in features]}
        columns["attention_mask"] = [f.get("attention_mask", [1] * n) for f, n in zip(features, lengths)]
        for key in features[0]:
            if key in columns or key == "prompt_length":
                continue
            if any(key not in f for f in features):
                raise ValueError(
                    f"Column {key!r} is missing from some rows of the batch; every row needs the same keys."
                )
            columns[key] = [f[key] for f in features]

        batch = {}
        for key, values in columns.items():
            if all(isinstance(v, str) or v is None for v in values):
                continue
            if key in pad_values or _is_per_token(values, lengths):
                batch[key] = _pad_column(key, values, lengths, width, pad_values.get(key, 0))
            else:
                batch[key] = _stack(key, values)
        if "prompt_length" in features[0]:
            batch.update(self._prompts(features, lengths))
        return batch

    def _prompts(self, features, lengths) -> dict[str, torch.Tensor]:
        """``prompt_input_ids`` and ``prompt_attention_mask`` ``(B, P)``: the prompts, left-padded for ``generate``."""
        prompt_lengths = [int(f["prompt_length"]) for f in features]
        for n, length in zip(prompt_lengths, lengths):
            if not 0 <= n <= length:
                raise ValueError(f"prompt_length {n} is outside 0..len(input_ids)={length}.")
        prompts = [f["input_ids"][:n] for f, n in zip(features, prompt_lengths)]
        ids = pad_rows(prompts, self.pad_token_id, dtype=torch.long, left=True)
        mask = pad_rows([[1] * n for n in prompt_lengths], 0, dtype=torch.long, left=True)
        return {"prompt_input_ids": ids, "prompt_attention_mask": mask}


def _is_per_token(values, lengths) -> bool:
    return all(isinstance(v, (list, tuple, torch.Tensor)) and len(v) == n for v, n in zip(values, lengths))


def _pad_column(key: str, values, lengths, width: int, pad_value) -> torch.Tensor:
    """``(B, width, *rest)``: each row ``(T_i, *rest)`` of column ``key`` right-padded with ``pad_value``, after
    checking it is as long as its ``input_ids`` and shaped like the other rows."""
    rows = [torch.as_tensor(v) for v in values]
    for row, n in zip(rows, lengths):
        if row.shape[:1] != (n,):
            raise ValueError(f"Column {key!r} has a row of length {row.shape[:1]} for input_ids of length {n}.")
    shaped = [row for row in rows if row.numel()]
    rest = shaped[0].shape[1:] if shaped else ()
    if any(row.shape[1:] != rest for row in shaped):
        raise ValueError(f"Column {key!r} mixes per-token shapes {sorted({tuple(r.shape[1:]) for r in shaped})}.")
    return pad_rows(rows, pad_value, width=width, dtype=_tensor_dtype(shaped))


def _stack(key: str, values) -> torch.Tensor:
    try:
        rows = [torch.as_tensor(v) for v in values]
        return torch.stack(rows).to(_tensor_dtype(rows))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(
            f"Column {key!r} is neither per-token (rows as long as input_ids) nor stackable ({err}); remove it from "
            "the dataset before collating."
        ) from err


def _tensor_dtype(rows: list[torch.Tensor]) -> torch.dtype:
    if any(row.is_floating_point() for row in rows):
        return torch.float32
    if rows and all(row.dtype == torch.bool for row in rows):
        return torch.bool
    return torch.long


# ------------------------------------------------------------------------------------------------------ evaluation


def perplexity(
    model,
    input_ids_or_text: str | Sequence[int] | torch.Tensor,
    tokenizer=None,
    *,
    block_size: int,
    batch_size: int = 8,
    max_blocks: int | None = None,
    max_tokens: int | None = None,
    progress: bool = False,
    desc: str | None = None,
    bos_token_id: int | None = None,
) -> dict:
    """Perplexity of a causal LM on non-overlapping blocks of ``block_size`` tokens, each scored independently.

    With ``bos_token_id`` (a model that needs its BOS, as Gemma-3) each block is that token followed by
    ``block_size - 1`` tokens of the text, all of which it predicts.

    Text is tokenized without special tokens; the remainder after the last whole block is dropped. Each block
    predicts its ``block_size - 1`` next tokens. The first blocks are scored, at most ``max_blocks`` of them and at
    most ``max_tokens`` predicted tokens (whole blocks only: ``max_tokens // (block_size - 1)`` blocks). Returns
    ``nll`` (mean per predicted token), ``perplexity = exp(nll)``, ``tokens`` (predicted tokens) and ``blocks``. The
    model runs in eval mode under ``no_grad`` on its own device and is put back in the mode it was in. ``progress``
    shows a tqdm bar over the blocks, labelled ``desc``.
    """
    if not isinstance(block_size, int) or block_size < 2:
        raise ValueError(
            f"block_size must be an int >= 2 (a block predicts block_size - 1 tokens), got {block_size!r}."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    if max_blocks is not None and (not isinstance(max_blocks, int) or max_blocks < 1):
        raise ValueError(f"max_blocks must be a positive int or None, got {max_blocks!r}.")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < block_size - 1):
        raise ValueError(
            f"max_tokens={max_tokens!r} is fewer than the {block_size - 1} tokens one block of block_size="
            f"{block_size} predicts; raise it or lower block_size."
        )
    ids = _token_ids(input_ids_or_text, tokenizer)
    width = block_size - (bos_token_id is not None)  # text tokens per block
    num_blocks = len(ids) // width
    if num_blocks == 0:
        raise ValueError(f"Only {len(ids)} tokens, fewer than block_size={block_size}; use a smaller block_size.")
    for cap in (max_blocks, None if max_tokens is None else max_tokens // (block_size - 1)):
        num_blocks = num_blocks if cap is None else min(num_blocks, cap)
    blocks = ids[: num_blocks * width].view(num_blocks, width)  # (N, T), or (N, T - 1) after a BOS
    if bos_token_id is not None:
        blocks = torch.cat([torch.full((num_blocks, 1), bos_token_id, dtype=blocks.dtype), blocks], dim=1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    bar = tqdm(total=num_blocks, desc=desc, unit="block", disable=not progress)
    try:
        with torch.no_grad():
            for batch in blocks.split(batch_size):
                batch = batch.to(device)
                logits = model(input_ids=batch).logits[:, :-1]  # (b, T - 1, V): position t predicts token t + 1
                nll = F.cross_entropy(logits.flatten(0, 1).float(), batch[:, 1:].flatten(), reduction="sum")
                total += nll.item()
                bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    tokens = num_blocks * (block_size - 1)
    nll = total / tokens
    return {"perplexity": math.exp(nll), "nll": nll, "tokens": tokens, "blocks": num_blocks}


def _token_ids(input_ids_or_text, tokenizer) -> torch.Tensor:
    """A 1-D ``torch.long`` tensor of token ids from text (needs ``tokenizer``) or from ids."""
    if isinstance(input_ids_or_text, str):
        if tokenizer is None:
            raise ValueError("perplexity() was given text but no tokenizer; pass tokenizer= or token ids.")
        return torch.tensor(tokenizer(input_ids_or_text, add_special_tokens=False)["input_ids"], dtype=torch.long)
    ids = torch.as_tensor(input_ids_or_text, dtype=torch.long)
    if ids.dim() == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.dim() != 1:
        raise ValueError(f"perplexity() needs one 1-D sequence of token ids, got shape {tuple(ids.shape)}.")
    return ids
