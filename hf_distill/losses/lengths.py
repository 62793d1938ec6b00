"""Pick groups of rows of similar length, so that work which treats rows independently can skip the padding.

A batch padded to its longest sentence spends most of its work on padding when lengths vary: SST-2 sentences have 13
tokens on average, batches of 32 are padded to 40, so 67% of a forward's token work and 82% of a ``(T, T)``
self-relation's work is padding. :func:`length_groups` picks contiguous runs of the rows sorted by length that
minimise ``Σ_g rows_g · length_g^power``; the self-relation loss (:mod:`.attention`) and a live teacher's forward
(:mod:`hf_distill.teachers.length_buckets`) run group by group.
"""

from __future__ import annotations

import torch


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
