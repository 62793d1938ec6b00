"""Layer matching: records, map resolution and projection adapters (per-architecture facts: ``hf_distill.models``)."""

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
from .layer_map import LayerMatch, build_layer_matches, parse_layer_pairs, resolve_layer_pairs

__all__ = [
    "ADAPTERS_ATTR",
    "ADAPTERS_FILE",
    "DistillationAdapters",
    "LayerMatch",
    "adapter_state",
    "attach_adapters",
    "build_layer_matches",
    "parse_layer_pairs",
    "projected_states",
    "projection_hook",
    "resolve_layer_pairs",
    "strip_adapters",
]
