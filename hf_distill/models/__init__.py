"""Models: the per-architecture facts, loading by name, the student builder, vocabulary checks and Q/K/V capture."""

from .capture import capture_qkv, qkv_widths
from .facts import (
    DROPOUT_FIELDS,
    MODEL_FACTS,
    NONLINEAR_HEAD_ATTRS,
    ArchFacts,
    arch_facts,
    config_dropout,
    disable_attention_dropout,
    dropout_overrides,
    fused_loss_blockers,
    get_layers,
    layers_prefix,
    unwrap,
)
from .loading import infer_task, load_model, resolve_dtype, resolve_model_path
from .student import build_student
from .vocab import check_tokenizers, first_vocab_difference, load_tokenizer_for, output_rows, shared_vocab_rows

__all__ = [
    "DROPOUT_FIELDS",
    "MODEL_FACTS",
    "NONLINEAR_HEAD_ATTRS",
    "ArchFacts",
    "arch_facts",
    "build_student",
    "capture_qkv",
    "check_tokenizers",
    "config_dropout",
    "disable_attention_dropout",
    "dropout_overrides",
    "first_vocab_difference",
    "fused_loss_blockers",
    "get_layers",
    "infer_task",
    "layers_prefix",
    "load_model",
    "load_tokenizer_for",
    "output_rows",
    "qkv_widths",
    "resolve_dtype",
    "resolve_model_path",
    "shared_vocab_rows",
    "unwrap",
]
