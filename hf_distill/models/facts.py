"""The per-architecture facts: one table keyed by ``config.model_type``, the config fields and head attributes that
differ between families, and the way to the transformers model inside training wrappers.

``layers`` is the attribute path, from the bare base model (``model.base_model``), to the ``nn.ModuleList`` of
transformer blocks. ``qkv`` names the query/key/value projections inside one block: three names, or one fused
projection whose output is split by ``capture.qkv_widths`` (GPT-2 ``c_attn``). ``attn_dropout`` is the dropout on
attention probabilities, switched off for attention-map KD (the returned maps are taken after it). ``causal`` marks
decoders, whose default student keeps the first block (see ``build_student``). Add a row to support a new family.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchFacts:
    layers: str
    qkv: tuple[str, ...]
    attn_dropout: str  # in a block: the dropout applied to attention probabilities (an nn.Dropout or a float)
    causal: bool = False  # a decoder (causal attention): build_student keeps its first block by default


_BERT = ArchFacts(
    "encoder.layer", ("attention.self.query", "attention.self.key", "attention.self.value"), "attention.self.dropout"
)
_LLAMA = ArchFacts(
    "layers", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), "self_attn.attention_dropout", causal=True
)

MODEL_FACTS: dict[str, ArchFacts] = {
    "bert": _BERT,
    "roberta": _BERT,
    "xlm-roberta": _BERT,
    "electra": _BERT,
    "camembert": _BERT,
    "distilbert": ArchFacts(
        "transformer.layer", ("attention.q_lin", "attention.k_lin", "attention.v_lin"), "attention.dropout"
    ),
    "llama": _LLAMA,
    "mistral": _LLAMA,
    "qwen2": _LLAMA,
    "qwen3": _LLAMA,
    "gemma": _LLAMA,
    "gemma2": _LLAMA,
    "phi3": ArchFacts("layers", ("self_attn.qkv_proj",), "self_attn.attention_dropout", causal=True),
    "gpt2": ArchFacts("h", ("attn.c_attn",), "attn.attn_dropout", causal=True),
}


def arch_facts(model: nn.Module) -> ArchFacts:
    """The table row for ``model``'s ``config.model_type``; a ``ValueError`` lists the supported types."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MODEL_FACTS:
        raise ValueError(
            f"hf_distill has no layer facts for model_type {model_type!r}; supported: {sorted(MODEL_FACTS)}. "
            "Add an entry to hf_distill.models.facts.MODEL_FACTS."
        )
    return MODEL_FACTS[model_type]


# config fields of dropout probabilities across the families above, heads included: BERT's classifier_dropout
# (which falls back to hidden_dropout_prob when None), DistilBERT's seq_classif_dropout / qa_dropout, GPT-2's and
# ELECTRA's summary dropouts
DROPOUT_FIELDS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "attention_dropout",
    "seq_classif_dropout",
    "qa_dropout",
    "hidden_dropout",
    "activation_dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "summary_last_dropout",
)


def config_dropout(config) -> float:
    """The largest dropout rate among ``config``'s ``DROPOUT_FIELDS`` (its text config's, for a multimodal one); 0:
    no dropout. Attention implementations read their rate from the config, not from an ``nn.Dropout``."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return max((getattr(config, name, 0.0) or 0.0 for name in DROPOUT_FIELDS), default=0.0)


def dropout_overrides(rate: float | None, config) -> dict:
    """The ``config`` fields (``DROPOUT_FIELDS`` it has) that set a student's dropout to ``rate``, for
    ``from_pretrained`` / ``build_student`` keyword arguments; ``{}`` when ``rate`` is None (keep the model's own)."""
    if rate is None:
        return {}
    overrides = {name: rate for name in DROPOUT_FIELDS if hasattr(config, name)}
    if not overrides:
        raise ValueError(
            f"--student_dropout {rate}: {type(config).__name__} has none of the dropout fields "
            f"{list(DROPOUT_FIELDS)}; leave --student_dropout unset."
        )
    return overrides


# config attributes of output heads that are not a plain linear map (the fused causal-LM loss needs a linear head)
NONLINEAR_HEAD_ATTRS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def unwrap(model: nn.Module, *, peft: bool = True) -> nn.Module:
    """The transformers model inside DDP/Accelerate/DeepSpeed wrappers (``.module``) and, with ``peft``, inside a
    PEFT model (``peft=False`` keeps the PEFT wrapper, whose ``generate`` works)."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    if peft and hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def base_model(model: nn.Module) -> nn.Module:
    """The bare transformer under heads and wrappers."""
    model = unwrap(model)
    return getattr(model, "base_model", model)


def get_layers(model: nn.Module) -> nn.ModuleList:
    """The ``nn.ModuleList`` of transformer blocks of ``model``."""
    module = base_model(model)
    for attr in arch_facts(model).layers.split("."):
        module = getattr(module, attr)
    return module


def layers_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the block list in ``model`` (e.g. ``"bert.encoder.layer"``, ``"model.layers"``)."""
    layers = get_layers(model)
    for name, module in model.named_modules():
        if module is layers:
            return name
    raise ValueError(f"Could not locate the layer list of {type(model).__name__}.")


def disable_attention_dropout(model: nn.Module) -> int:
    """Set the attention-probability dropout of every block to 0; returns how many were non-zero.

    Eager attention returns its maps *after* dropout, so a student trained on them would match zeroed entries.
    """
    changed = 0
    parent_name, _, attr = arch_facts(model).attn_dropout.rpartition(".")
    for block in get_layers(model):
        parent = block
        for name in parent_name.split(".") if parent_name else []:
            parent = getattr(parent, name)
        current = getattr(parent, attr)
        if isinstance(current, nn.Dropout):
            changed += current.p > 0
            current.p = 0.0
        else:
            changed += float(current) > 0
            setattr(parent, attr, 0.0)
    return changed


def fused_loss_blockers(models: list[nn.Module]) -> list[str]:
    """Why the fused, chunked causal-LM loss cannot serve these models (empty when it can): it needs a forward that
    takes ``logits_to_keep`` and a plain linear output head (no soft-capping or scaling after it)."""
    reasons = []
    for m in models:
        name = type(m).__name__
        if "logits_to_keep" not in inspect.signature(m.forward).parameters or m.get_output_embeddings() is None:
            reasons.append(f"{name} takes no logits_to_keep or has no output embeddings")
        for attr in NONLINEAR_HEAD_ATTRS:
            if getattr(m.config, attr, None) not in (None, 1, 1.0):
                reasons.append(f"the head of {name} is not linear ({attr}={getattr(m.config, attr)})")
    return reasons
