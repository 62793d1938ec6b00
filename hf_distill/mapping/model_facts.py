"""One table of per-architecture facts, keyed by ``config.model_type``.

``layers`` is the attribute path, from the bare base model (``model.base_model``), to the ``nn.ModuleList`` of
transformer blocks. ``qkv`` names the query/key/value projections inside one block: three names, or one fused
projection whose output is split by ``capture.qkv_widths`` (GPT-2 ``c_attn``). ``attn_dropout`` is the dropout on
attention probabilities, switched off for attention-map KD (the returned maps are taken after it). ``causal`` marks
decoders, whose default student keeps the first block (see ``build_student``). Add a row to support a new family.
"""

from __future__ import annotations

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
            "Add an entry to hf_distill.mapping.model_facts.MODEL_FACTS."
        )
    return MODEL_FACTS[model_type]


def base_model(model: nn.Module) -> nn.Module:
    """The bare transformer under heads and PEFT wrappers."""
    model = getattr(model, "get_base_model", lambda: model)()
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
