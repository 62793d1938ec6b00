"""Skip padding: split a padded batch into a few groups of rows of similar length, each cut to its own longest row.

A batch padded to its longest sentence spends most of its work on padding when lengths vary: SST-2 sentences have 13
tokens on average, batches of 32 are padded to 40, so 67% of a forward's token work and 82% of a ``(T, T)``
self-relation's work is padding. Work that treats rows independently and ignores padded positions (a frozen
teacher's forward, the self-relation KD loss) gives the same result on the groups as on the whole batch.

:func:`length_groups` picks the groups (contiguous runs of the rows sorted by length that minimise
``Σ_g rows_g · length_g^power``), :func:`split_batch` cuts the inputs, :func:`merge_outputs` pads the group outputs
back into batch tensors.
"""

from __future__ import annotations

import torch
from transformers.utils import ModelOutput


def valid_lengths(mask: torch.Tensor) -> torch.Tensor | None:
    """``(B, T)`` 0/1 mask -> ``(B,)`` lengths when every row is right-padded (its real tokens first), else None."""
    lengths = mask.bool().sum(1)
    prefix = torch.arange(mask.shape[1], device=mask.device)[None, :] < lengths[:, None]
    return lengths if bool((prefix == mask.bool()).all()) else None


def length_groups(
    lengths: torch.Tensor, *, max_groups: int = 4, power: int = 1, multiple: int = 1, min_gain: float = 0.05
) -> list[tuple[torch.Tensor, int]]:
    """Rows grouped by length: ``[(row indices (n_g,), group length), ...]``, shortest group first.

    The group length is the group's longest row rounded up to a ``multiple`` (it can exceed the batch's length: the
    caller pads). The groups are contiguous runs of the rows sorted by length, chosen (by dynamic programming over
    the sorted lengths) to minimise ``Σ_g n_g · length_g ** power``: ``power=1`` for work linear in the length (a
    forward), ``2`` for ``(T, T)`` work. One more group is taken only while it saves at least ``min_gain`` of the
    unsplit cost, which each group's fixed cost (more, smaller kernels) must pay for. Rows of length 0 are left out.
    A single group holding every row means: nothing to gain.

    ``multiple=16`` is for softmaxes over the length on CPU: PyTorch's vectorised softmax kernels take ~10x longer
    per element on rows shorter than 16 and are fastest on multiples of 16 (figures in docs/losses.md).
    """
    if max_groups < 1:
        raise ValueError(f"max_groups must be >= 1, got {max_groups}.")
    host = lengths.cpu()
    order = torch.argsort(host, stable=True)
    order = order[host[order] > 0]
    if len(order) == 0:
        return []
    padded = [-(-int(n) // multiple) * multiple for n in host[order]]
    # runs of equal (rounded) lengths: an optimal grouping never splits one, so the search runs over runs
    ends = [i + 1 for i in range(len(padded)) if i + 1 == len(padded) or padded[i + 1] != padded[i]]
    value = [padded[e - 1] for e in ends]
    starts = [0] + ends[:-1]
    runs = len(ends)

    def cost(a: int, b: int) -> int:  # runs a..b-1 in one group
        return (ends[b - 1] - starts[a]) * value[b - 1] ** power

    inf = float("inf")
    # best[k][j]: least cost of the first j runs in k groups; cut[k][j]: the run where the last group starts
    best = [[inf] * (runs + 1) for _ in range(max_groups + 1)]
    cut = [[0] * (runs + 1) for _ in range(max_groups + 1)]
    best[0][0] = 0
    for k in range(1, max_groups + 1):
        for j in range(1, runs + 1):
            for i in range(k - 1, j):
                c = best[k - 1][i] + cost(i, j)
                if c < best[k][j]:
                    best[k][j], cut[k][j] = c, i
    whole, groups = best[1][runs], 1
    for k in range(2, min(max_groups, runs) + 1):
        if best[groups][runs] - best[k][runs] >= min_gain * whole * (k - groups):
            groups = k
    bounds, j = [], runs
    for k in range(groups, 0, -1):
        i = cut[k][j]
        bounds.append((starts[i], ends[j - 1], value[j - 1]))
        j = i
    return [(order[a:b].to(lengths.device), length) for a, b, length in reversed(bounds)]


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
