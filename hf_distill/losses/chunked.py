"""A loss over a linear output head that never materialises the full ``(B, T, V)`` logits: the building block of the
fused causal-LM loss (:func:`hf_distill.losses.token.fused_causal_lm_loss`).

For large vocabularies the logits dominate memory: ``8 x 512 x 49,152`` floats are 0.8 GB per tensor, and a naive
KD loss keeps several such tensors (student logits, both log-softmaxes, the pointwise divergence) alive until the
backward pass. :func:`chunked_linear_loss` takes the student's last hidden states and output head instead, and walks
over the valid tokens ``chunk_size`` rows at a time: it computes the chunk's student logits, the caller's loss of the
chunk (the teacher's rows coming from precomputed logits, or from the teacher's hidden states and head), and the
gradient of the chunk's loss with respect to the student's hidden states, head weight and bias. Only those gradients
(``(B*T, D)``, ``(V, D)``, ``(V,)``) are kept for the backward pass, which merely scales them by the incoming gradient;
the chunk's ``(chunk_size, V)`` intermediates are freed before the next chunk. This is the approach of Liger-Kernel's
fused linear losses: compared with recomputing each chunk in the backward pass (activation checkpointing) it keeps
the same ``O(chunk_size x V)`` peak, avoids computing the student's and teacher's chunk logits twice, and does not
touch the head's weight in the backward pass (which keeps it compatible with sharded weights).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


def head_params(head, who: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(weight (V, D), bias (V,) or None)`` of an ``nn.Linear``-like module, a weight tensor or a pair."""
    if isinstance(head, nn.Module):
        if not isinstance(getattr(head, "weight", None), torch.Tensor):
            raise ValueError(f"{who} must be a linear output head with a `weight` (V, D); got {type(head).__name__}.")
        return head.weight, getattr(head, "bias", None)
    if isinstance(head, torch.Tensor):
        return head, None
    if isinstance(head, (tuple, list)) and len(head) == 2:
        return head[0], head[1]
    raise ValueError(f"{who} must be an nn.Linear-like module, a weight tensor (V, D) or a (weight, bias) pair.")


class _ChunkedLinearLoss(torch.autograd.Function):
    """Sum over the selected rows of ``loss_fn(hidden @ weight.T + bias, targets)``; the gradients are computed chunk
    by chunk in the forward pass and scaled by the incoming gradient in the backward pass."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, rows, targets: dict, loss_fn: Callable, chunk_size, want_grad):
        # hidden (M, D) all tokens, weight (V, D), bias (V,) or None, rows (N,) the valid tokens or None for all;
        # targets: name -> (M, ...) per-token tensors (teacher logits or hidden states, labels, top-k tables), whose
        # chunk rows reach loss_fn(logits (n, V), {name: (n, ...)}) -> the chunk's summed loss (float32 scalar)
        need_h, need_w, need_b = (want_grad and needs for needs in ctx.needs_input_grad[:3])
        grad_h = torch.zeros_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        num_rows = hidden.shape[0] if rows is None else rows.shape[0]
        for start in range(0, num_rows, chunk_size):
            end = min(start + chunk_size, num_rows)
            h = hidden[start:end] if rows is None else hidden.index_select(0, rows[start:end])  # (n, D)
            chunk = {name: _take_rows(t, rows, start, end) for name, t in targets.items()}
            logits = F.linear(h, weight, bias).requires_grad_(need_h or need_w or need_b)  # (n, V)
            with torch.enable_grad():
                value = loss_fn(logits, chunk)  # summed over the chunk's rows, float32
            d_logits = None
            if isinstance(value, tuple):  # the loss gave its gradient in closed form (no autograd graph)
                value, d_logits = value
            elif logits.requires_grad:
                (d_logits,) = torch.autograd.grad(value, logits)  # (n, V), in the head's dtype
            if d_logits is not None:
                d_logits = d_logits.to(weight.dtype)
                if need_h and rows is None:
                    grad_h[start:end] = d_logits @ weight  # (n, V) @ (V, D)
                elif need_h:
                    grad_h.index_copy_(0, rows[start:end], d_logits @ weight)
                if need_w and d_logits.dtype == torch.float32:
                    grad_w.addmm_(d_logits.t(), h)  # (V, n) @ (n, D), in place
                elif need_w:
                    grad_w.add_(d_logits.t() @ h)  # bf16/fp16 products accumulated in float32
                if need_b:
                    grad_b.add_(d_logits.sum(0, dtype=torch.float32))
            total += value.detach()
            del chunk, logits, value  # free the chunk's (n, V) tensors before the next chunk
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grads = [None if g is None else (g * grad_output).to(dtype) for g, dtype in zip(ctx.saved_tensors, ctx.dtypes)]
        return (*grads, None, None, None, None, None)


def _take_rows(t: torch.Tensor, rows: torch.Tensor | None, start: int, end: int) -> torch.Tensor:
    """Rows ``start:end`` of the valid tokens of a flattened ``(M, ...)`` tensor (which may live on another device)."""
    if rows is None:
        return t[start:end]
    return t.index_select(0, rows[start:end].to(t.device))


def chunked_linear_loss(
    hidden: torch.Tensor,
    head,
    loss_fn: Callable,
    targets: dict[str, torch.Tensor] | None = None,
    *,
    mask: torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """``sum over valid tokens of loss_fn(head(hidden), targets)``, computed ``chunk_size`` tokens at a time.

    The building block of the fused causal-LM loss: the ``(N, V)`` logits never exist in full, the gradients
    w.r.t. ``hidden`` and the head's parameters are exact.

    Args:
        hidden: ``(*batch, D)`` hidden states (the head's input).
        head: an ``nn.Linear``-like module, a weight ``(V, D)`` or a ``(weight, bias)`` pair.
        loss_fn: ``loss_fn(logits (n, V), {name: (n, ...)}) -> float32 scalar``, the SUM of the chunk's loss; it runs
            with gradients enabled for the logits only (targets carry no graph). It may instead return
            ``(value, d_value/d_logits (n, V))`` when it knows the gradient in closed form (``None`` when
            ``logits.requires_grad`` is false); autograd is then skipped.
        targets: name -> ``(*batch, ...)`` per-token tensors; each chunk's rows of them are passed to ``loss_fn``.
        mask: ``(*batch)`` boolean/0-1 valid tokens; ``None`` for all.
        chunk_size: tokens per chunk (>= 1).

    Returns:
        A float32 scalar (the unnormalised sum).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}.")
    weight, bias = head_params(head, "head")
    if hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(f"Hidden size {hidden.shape[-1]} does not match the head's weight {tuple(weight.shape)}.")
    batch_shape = hidden.shape[:-1]
    if mask is not None and mask.shape != batch_shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the tokens {tuple(batch_shape)}.")
    flat = {}
    for name, t in (targets or {}).items():
        if t.shape[: len(batch_shape)] != batch_shape:
            raise ValueError(f"Target {name!r} {tuple(t.shape)} does not match the tokens {tuple(batch_shape)}.")
        flat[name] = t.detach().reshape(batch_shape.numel(), *t.shape[len(batch_shape) :])
    flat_hidden = hidden.reshape(-1, hidden.shape[-1])  # (B*T, D)
    rows = None if mask is None else mask.reshape(-1).bool().nonzero().squeeze(1).to(hidden.device)  # (N,)
    want_grad = torch.is_grad_enabled()
    return _ChunkedLinearLoss.apply(flat_hidden, weight, bias, rows, flat, loss_fn, chunk_size, want_grad)
