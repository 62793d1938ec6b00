"""Skip padding in a teacher's forward: split a padded batch into a few groups of rows of similar length, each cut to
its own longest row, and merge the groups' outputs back.

A frozen teacher's forward treats rows independently and ignores padded positions, so it gives the same outputs on
the groups as on the whole batch, for less work. :func:`hf_distill.losses.lengths.length_groups` picks the groups,
:func:`split_batch` cuts the inputs, :func:`merge_outputs` pads the group outputs back into batch tensors.
"""

from __future__ import annotations

import torch
from transformers.utils import ModelOutput


def split_batch(inputs: dict, rows: torch.Tensor, length: int, seq_len: int) -> dict:
    """The ``rows`` of every batch tensor in ``inputs``, cut to ``length`` positions where it has ``seq_len``.

    Tensors ``(B, T, ...)`` with ``T == seq_len`` lose their positions past ``length``; other ``(B, ...)`` tensors
    keep all of theirs. Anything else passes through.
    """
    batch = next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))
    out = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == batch:
            value = value[rows]
            if value.dim() >= 2 and value.shape[1] == seq_len:
                value = value[:, :length]
        out[key] = value
    return out


def _pad_into(parts: list[torch.Tensor], groups, batch: int, seq_dims: tuple[int, ...], seq_len: int):
    """Scatter group tensors ``(n_g, ...)`` back into one ``(B, ...)`` tensor, zeros at cut positions and rows
    left out; the ``seq_dims`` are padded back to ``seq_len``."""
    shape = list(parts[0].shape)
    shape[0] = batch
    for d in seq_dims:
        shape[d] = seq_len
    out = parts[0].new_zeros(shape)
    for (rows, _), part in zip(groups, parts, strict=True):
        index = [rows] + [slice(0, part.shape[d]) for d in range(1, part.dim())]
        out[tuple(index)] = part
    return out


def merge_outputs(outputs: list, groups, batch: int, seq_len: int, token_logits: bool):
    """One model output for the whole batch from the groups' outputs (in the order of ``groups``).

    ``logits`` are ``(n_g, C)`` per example, or ``(n_g, T_g, C)`` per token when ``token_logits``; ``hidden_states``
    are ``(n_g, T_g, D)`` each and ``attentions`` ``(n_g, H, T_g, T_g)`` each. Other tensor fields are per-row
    ``(n_g, ...)``. Positions cut off and rows left out (length 0) hold zeros: the losses mask them.
    """
    first = outputs[0]
    merged = {}
    for key in first.keys():
        values = [o[key] for o in outputs]
        if key in ("hidden_states", "attentions"):
            dims = (1,) if key == "hidden_states" else (2, 3)
            merged[key] = tuple(  # layers not asked for may be None
                None if layer[0] is None else _pad_into(list(layer), groups, batch, dims, seq_len)
                for layer in zip(*values, strict=True)
            )
        elif isinstance(values[0], torch.Tensor):
            dims = (1,) if key == "logits" and token_logits else ()
            merged[key] = _pad_into(values, groups, batch, dims, seq_len)
        else:
            merged[key] = values[0]
    return type(first)(**merged) if isinstance(first, ModelOutput) else merged


def merge_records(records: list[dict], groups, batch: int, seq_len: int) -> dict:
    """Captured ``{layer: [q, k, v]}`` (``(n_g, T_g, D)`` each) of the groups -> one ``(B, T, D)`` each."""
    if not records or not records[0]:
        return {}
    return {
        layer: [
            _pad_into([r[layer][i] for r in records], groups, batch, (1,), seq_len)
            for i in range(len(records[0][layer]))
        ]
        for layer in records[0]
    }
