"""Layer matching: records, map resolution, projection adapters and per-architecture facts."""

from .adapters import (
    ADAPTERS_ATTR,
    ADAPTERS_FILE,
    DistillationAdapters,
    adapter_state,
    attach_adapters,
    projected_states,
    projection_hook,
    strip_adapters,
)
from .layer_map import FEATURES, LayerMatch, build_layer_matches, parse_layer_pairs, resolve_layer_pairs
from .model_facts import MODEL_FACTS, ArchFacts, arch_facts, disable_attention_dropout, get_layers, layers_prefix

__all__ = [
    "ADAPTERS_ATTR",
    "ADAPTERS_FILE",
    "FEATURES",
    "MODEL_FACTS",
    "ArchFacts",
    "DistillationAdapters",
    "LayerMatch",
    "adapter_state",
    "attach_adapters",
    "arch_facts",
    "build_layer_matches",
    "disable_attention_dropout",
    "get_layers",
    "layers_prefix",
    "parse_layer_pairs",
    "projected_states",
    "projection_hook",
    "resolve_layer_pairs",
    "strip_adapters",
]
