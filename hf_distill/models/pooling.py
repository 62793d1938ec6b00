"""Sentence embeddings the way a sentence-transformers folder defines them (issue 20): its pooling (mean, CLS, max,
last token, mean / sqrt(length)) and whether it normalises, read from ``modules.json`` and the pooling module's
``config.json``, applied to a model's last hidden states, and written back beside a student so that loading it
applies the same pooling.

A sentence-transformers folder is an ordinary Hugging Face model folder plus::

    modules.json                 [{"idx": 0, "path": "", "type": "sentence_transformers.models.Transformer"},
                                  {"idx": 1, "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
                                  {"idx": 2, "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
    1_Pooling/config.json        {"word_embedding_dimension": 384, "pooling_mode_mean_tokens": true, ...}
    sentence_bert_config.json    {"max_seq_length": 256, "do_lower_case": false}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

POOLING_MODES = ("mean", "cls", "max", "lasttoken", "mean_sqrt_len")
# sentence-transformers' pooling config keys, by mode
_MODE_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "lasttoken": "pooling_mode_lasttoken",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
}
_POOLING = "sentence_transformers.models.Pooling"
_NORMALIZE = "sentence_transformers.models.Normalize"


@dataclass(frozen=True)
class PoolingConfig:
    """How token states become one sentence embedding: ``mode`` (one of :data:`POOLING_MODES`) and whether the
    embedding is L2-normalised."""

    mode: str = "mean"
    normalize: bool = False

    def __post_init__(self):
        if self.mode not in POOLING_MODES:
            raise ValueError(f"pooling mode {self.mode!r} is unknown; choose one of {', '.join(POOLING_MODES)}.")


def read_pooling(folder: str) -> PoolingConfig | None:
    """The pooling a sentence-transformers ``folder`` defines, or ``None`` when it is no such folder (no
    ``modules.json`` with a Pooling module). A pooling config that turns on several modes (concatenated embeddings)
    is refused in one line."""
    path = os.path.join(folder, "modules.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        modules = json.load(f)
    pooling = [m for m in modules if m.get("type") == _POOLING]
    if not pooling:
        return None
    with open(os.path.join(folder, pooling[0].get("path", ""), "config.json")) as f:
        config = json.load(f)
    modes = [mode for mode, key in _MODE_KEYS.items() if config.get(key)]
    if len(modes) != 1:
        raise ValueError(
            f"{folder}: its pooling config turns on {modes or 'no'} pooling modes; hf_distill pools with exactly one "
            f"of {', '.join(POOLING_MODES)} (pass --pooling to choose)."
        )
    return PoolingConfig(modes[0], any(m.get("type") == _NORMALIZE for m in modules))


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, config: PoolingConfig) -> torch.Tensor:
    """``(B, T, D)`` token states and ``(B, T)`` mask (1 for real tokens, any padding side) -> ``(B, D)``.

    mean: the mean over real tokens; cls: the first position; max: the maximum over real tokens; lasttoken: the last
    real token; mean_sqrt_len: the sum over real tokens divided by the square root of their number. Then, with
    ``normalize``, divided by its L2 norm.
    """
    mask = torch.ones(hidden.shape[:2], device=hidden.device) if attention_mask is None else attention_mask
    mask = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
    lengths = mask.sum(1).clamp(min=1.0)  # (B, 1)
    if config.mode == "mean":
        out = (hidden * mask).sum(1) / lengths
    elif config.mode == "mean_sqrt_len":
        out = (hidden * mask).sum(1) / lengths.sqrt()
    elif config.mode == "cls":
        out = hidden[:, 0]
    elif config.mode == "max":
        out = hidden.masked_fill(mask == 0, torch.finfo(hidden.dtype).min).max(1).values
    else:  # lasttoken: the real position with the largest index, whatever the padding side
        index = (mask.squeeze(-1) * torch.arange(1, hidden.shape[1] + 1, device=hidden.device)).argmax(1)  # (B,)
        out = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    return F.normalize(out, dim=-1) if config.normalize else out


def write_pooling(folder: str, config: PoolingConfig, dimension: int, max_seq_length: int | None = None) -> None:
    """Write the sentence-transformers files of ``config`` into the model ``folder`` (already holding the model), so
    that ``SentenceTransformer(folder)`` applies the same pooling; the folder stays a plain Hugging Face model folder."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": _POOLING},
    ]
    if config.normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": _NORMALIZE})
        os.makedirs(os.path.join(folder, "2_Normalize"), exist_ok=True)
    os.makedirs(os.path.join(folder, "1_Pooling"), exist_ok=True)
    pooling = {"word_embedding_dimension": dimension, **{key: mode == config.mode for mode, key in _MODE_KEYS.items()}}
    files = {
        "modules.json": modules,
        os.path.join("1_Pooling", "config.json"): pooling,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length or 512, "do_lower_case": False},
    }
    for name, value in files.items():
        with open(os.path.join(folder, name), "w") as f:
            json.dump(value, f, indent=2)
