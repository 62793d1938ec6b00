"""Record the query/key/value projections of chosen blocks with forward hooks (for self-relation KD)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .facts import arch_facts, get_layers


def _module(root: nn.Module, dotted: str) -> nn.Module:
    for attr in dotted.split("."):
        root = getattr(root, attr)
    return root


def qkv_widths(config) -> list[int]:
    """Output widths ``[q, k, v]`` of the query/key/value projections (grouped-query attention: smaller k, v)."""
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]


@contextlib.contextmanager
def capture_qkv(model: nn.Module, layers: list[int]):
    """Inside the block, forward passes fill ``records[layer] = [q, k, v]`` (each ``(B, T, D_x)``).

    ``layers`` are hidden-state indices (block ``i`` is ``i >= 1``). Fused projections (GPT-2 ``c_attn``, Phi-3
    ``qkv_proj``) are split by :func:`qkv_widths`; grouped-query K/V keep their (smaller) width.
    """
    records: dict[int, list[torch.Tensor]] = {}
    handles = []
    if not layers:  # nothing to record: no architecture facts needed
        yield records
        return
    facts = arch_facts(model)
    blocks = get_layers(model)
    split = qkv_widths(model.config)

    def hook_for(layer: int, slot: int, fused: bool):
        def hook(_module, _inputs, output):
            if fused:
                records[layer] = list(output.split(split, dim=-1))
            else:
                records.setdefault(layer, [None, None, None])[slot] = output

        return hook

    try:
        for layer in layers:
            block = blocks[layer - 1]
            fused = len(facts.qkv) == 1
            for slot, name in enumerate(facts.qkv):
                handles.append(_module(block, name).register_forward_hook(hook_for(layer, slot, fused)))
        yield records
    finally:
        for handle in handles:
            handle.remove()
