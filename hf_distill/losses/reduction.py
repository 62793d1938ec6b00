"""Masking and normalisation, in one place, for every loss.

Every loss computes one value per *item* (a token, an example, or a query row) and reduces with
:func:`reduce_items`: the sum over valid items divided by ``normalizer``. By default the normalizer is the number of
valid items (a plain mean). The trainer passes the count over the whole gradient-accumulation window (and over all
processes) instead, which makes accumulated micro-batches give exactly the gradient of one large batch.
"""

from __future__ import annotations

import torch


def flatten_valid(x: torch.Tensor, mask: torch.Tensor | None, item_dims: int) -> torch.Tensor:
    """Select the valid items of ``x``.

    Args:
        x: ``(*batch, *item)`` where the trailing ``item_dims`` dimensions belong to one item, e.g. logits
            ``(B, T, V)`` with ``item_dims=1`` or hidden states ``(B, T, D)``.
        mask: ``(*batch)`` boolean/0-1 tensor, or ``None`` for all valid.

    Returns:
        ``(N, *item)`` with ``N`` the number of valid items.
    """
    item_shape = x.shape[x.dim() - item_dims :]
    flat = x.reshape(-1, *item_shape)
    if mask is None:
        return flat
    mask = mask.reshape(-1).bool()
    return flat if bool(mask.all()) else flat[mask]  # a batch without padding: no copy (and none in the backward)


def reduce_items(per_item: torch.Tensor, normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """Sum of ``per_item`` ``(N,)`` divided by ``normalizer`` (default: ``N``, the mean; 0 items gives 0)."""
    return reduce_sum(per_item.sum(), per_item.numel(), normalizer)


def reduce_sum(total: torch.Tensor, count: int, normalizer: float | torch.Tensor | None = None) -> torch.Tensor:
    """``total`` (a sum over ``count`` items) divided by ``normalizer`` (default: ``count``; 0 items gives 0)."""
    if normalizer is None:
        normalizer = count
    if isinstance(normalizer, torch.Tensor):
        normalizer = normalizer.to(total.device, total.dtype)
    elif normalizer == 0:
        return total * 0.0
    return total / normalizer


def count_items(mask: torch.Tensor | None, batch_shape: torch.Size) -> int:
    """Number of valid items: ``mask.sum()``, or the product of ``batch_shape`` when there is no mask."""
    if mask is None:
        return int(torch.Size(batch_shape).numel())
    return int(mask.bool().sum().item())
