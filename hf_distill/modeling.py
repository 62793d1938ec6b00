"""Task detection and loading of models by name (safetensors only, no remote code unless asked)."""

from __future__ import annotations

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto import modeling_auto

_AUTO_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "sequence_classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
}
_MAPPINGS = {
    "causal_lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "sequence_classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "token_classification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
}
_SUFFIXES = {
    "causal_lm": ("ForCausalLM", "LMHeadModel"),
    "sequence_classification": ("ForSequenceClassification",),
    "token_classification": ("ForTokenClassification",),
}


def unwrap(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def infer_task(model: nn.Module) -> str:
    """``"causal_lm"``, ``"sequence_classification"`` or ``"token_classification"`` from the model class."""
    name = type(unwrap(model)).__name__
    for task, mapping in _MAPPINGS.items():
        names = {n for v in mapping.values() for n in (v if isinstance(v, tuple | list) else (v,))}
        if name in names or name.endswith(_SUFFIXES[task]):
            return task
    raise ValueError(
        f"Cannot tell which task {name} solves; hf_distill supports causal LMs, sequence classification and token "
        "classification heads."
    )


def resolve_dtype(name: str | None, default: torch.dtype) -> torch.dtype | str:
    if name is None:
        return default
    return "auto" if name == "auto" else getattr(torch, name)


def load_model(name_or_path: str, task: str, *, dtype=None, trust_remote_code=False, attn_implementation=None):
    """Load a model by Hub name or local folder with the Auto class of ``task`` (safetensors weights only)."""
    kwargs = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return _AUTO_CLASSES[task].from_pretrained(name_or_path, **kwargs)
