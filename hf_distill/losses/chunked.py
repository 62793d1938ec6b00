"""Token-level logit KD for causal LMs that never materialises the full ``(B, T, V)`` student logits.

For large vocabularies the logits dominate memory: ``8 x 512 x 49,152`` floats are 0.8 GB per tensor, and a naive
KD loss keeps several such tensors (student logits, both log-softmaxes, the pointwise divergence) alive until the
backward pass. :func:`chunked_token_kd` takes the student's last hidden states and output head instead, and walks
over the valid tokens ``chunk_size`` rows at a time: it computes the chunk's student logits, the teacher's chunk (from
precomputed logits, or from the teacher's hidden states and head), the registered divergence in float32, and the
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

from .reduction import reduce_items
from .registry import get_loss


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


def _check_shapes(student_hidden, weight, batch_shape, teacher_logits, teacher_hidden, teacher_weight, mask):
    if student_hidden.shape[-1] != weight.shape[-1]:
        raise ValueError(
            f"Student hidden size {student_hidden.shape[-1]} does not match its head's weight {tuple(weight.shape)}."
        )
    if teacher_logits is not None:
        teacher_batch, teacher_vocab = teacher_logits.shape[:-1], teacher_logits.shape[-1]
    else:
        teacher_batch, teacher_vocab = teacher_hidden.shape[:-1], teacher_weight.shape[0]
        if teacher_hidden.shape[-1] != teacher_weight.shape[-1]:
            raise ValueError(
                f"Teacher hidden size {teacher_hidden.shape[-1]} does not match its head's weight "
                f"{tuple(teacher_weight.shape)}."
            )
    if teacher_batch != batch_shape:
        raise ValueError(f"Student tokens {tuple(batch_shape)} and teacher tokens {tuple(teacher_batch)} differ.")
    if teacher_vocab != weight.shape[0]:
        raise ValueError(
            f"Student vocabulary {weight.shape[0]} and teacher vocabulary {teacher_vocab} differ; "
            "logit KD needs the same label set or vocabulary."
        )
    if mask is not None and mask.shape != batch_shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the tokens {tuple(batch_shape)}.")


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

    The building block of :func:`chunked_token_kd` and of the fused causal-LM loss: the ``(N, V)`` logits never
    exist in full, the gradients w.r.t. ``hidden`` and the head's parameters are exact.

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


def chunked_token_kd(
    student_hidden: torch.Tensor,
    student_head,
    teacher_logits: torch.Tensor | None = None,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head=None,
    mask: torch.Tensor | None = None,
    loss: str = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    normalizer: float | torch.Tensor | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """Token-level logit KD computed ``chunk_size`` tokens at a time from the student's hidden states.

    The value and the gradients (w.r.t. ``student_hidden`` and the head's weight and bias) are those of
    ``get_loss("logits", loss)(student_head(student_hidden), teacher_logits, mask=mask, temperature=temperature,
    beta=beta, normalizer=normalizer)``, to float rounding, but neither the student's ``(N, V)`` logits nor their
    softmax intermediates ever exist in full: peak extra memory is ``O(chunk_size x V)`` plus the gradients kept for
    the backward pass, ``O(B*T x D + V x D)``. No gradient flows to the teacher. The divergences hold about eight
    float32 ``(chunk_size, V)`` tensors at their peak (``chunk_size=1024``, ``V=49,152``: 1.5 GB; ``256``: 0.4 GB),
    so lower ``chunk_size`` for large vocabularies; chunks of a few hundred rows cost no measurable time.

    Args:
        student_hidden: ``(B, T, D)`` last hidden states of the student (any ``(*batch, D)``), already aligned with
            the teacher's prediction positions (shifted for causal LMs).
        student_head: the output head: an ``nn.Linear``-like module (``weight`` ``(V, D)``, optional ``bias``
            ``(V,)``), a weight tensor ``(V, D)``, or a ``(weight, bias)`` pair. It must be purely linear (no logit
            soft-capping or scaling after it).
        teacher_logits: ``(B, T, V)`` teacher logits, any float dtype (bf16/fp16 are upcast per chunk). Give either
            these or ``teacher_hidden`` and ``teacher_head``.
        teacher_hidden: ``(B, T, Dt)`` teacher last hidden states; the teacher's logits are then computed per chunk
            (under ``no_grad``) with ``teacher_head`` (same forms as ``student_head``, weight ``(V, Dt)``).
        mask: ``(B, T)`` boolean/0-1, true for the tokens to distil (padding and prompt tokens false).
        loss: a registered logits loss: ``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_reverse_kl`` (see
            :mod:`hf_distill.losses.logits` for the definitions) or ``mse``.
        temperature: softmax temperature ``T``; divergences are multiplied by ``T^2``.
        beta: the ``beta`` of ``jsd`` and the skew weight of ``skew_kl`` / ``skew_reverse_kl``.
        normalizer: the sum over valid tokens is divided by it; default the number of valid tokens.
        chunk_size: tokens per chunk (>= 1).

    Returns:
        A float32 scalar.
    """
    if (teacher_logits is None) == (teacher_hidden is None) or (teacher_hidden is None) != (teacher_head is None):
        raise ValueError("Give either teacher_logits, or teacher_hidden together with teacher_head.")
    divergence = get_loss("logits", loss)
    weight, _ = head_params(student_head, "student_head")
    teacher_weight, teacher_bias = (None, None) if teacher_head is None else head_params(teacher_head, "teacher_head")
    _check_shapes(
        student_hidden, weight, student_hidden.shape[:-1], teacher_logits, teacher_hidden, teacher_weight, mask
    )
    teacher = teacher_logits if teacher_logits is not None else teacher_hidden

    def loss_fn(logits, chunk):
        target = chunk["teacher"].to(logits.device)
        if teacher_hidden is not None:
            with torch.no_grad():
                target = F.linear(target, teacher_weight, teacher_bias)  # (n, V)
        return divergence(logits, target, normalizer=1, temperature=temperature, beta=beta)

    total = chunked_linear_loss(
        student_hidden, student_head, loss_fn, {"teacher": teacher}, mask=mask, chunk_size=chunk_size
    )
    count = student_hidden.shape[:-1].numel() if mask is None else int(mask.bool().sum())
    return reduce_items(total.reshape(1), count if normalizer is None else normalizer)
