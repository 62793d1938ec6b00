"""Losses on self-attention: attention maps (TinyBERT) and self-relations (MiniLM v2).

Attention maps are probabilities ``(B, H, T, T)`` (query rows sum to 1), as returned with ``output_attentions=True``
under eager attention. One item is one valid query row: ``mask`` is ``(B, T)`` with 1 for real tokens. When teacher
and student have different head counts, :func:`match_heads` reduces both to one averaged map.

Self-relation KD compares ``softmax(X X^T / sqrt(d_r))`` for ``X`` in {queries, keys, values}, split into ``R``
relation heads. It needs neither equal head counts nor equal widths, nor attention maps (any backend works).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reduction import reduce_items
from .registry import register_loss

_EPS = 1e-12


def match_heads(student_attn: torch.Tensor, teacher_attn: torch.Tensor, reduction: str = "none"):
    """Make two attention tensors ``(B, Hs, T, T)`` and ``(B, Ht, T, T)`` comparable.

    ``reduction="none"`` requires ``Hs == Ht``; ``"mean"`` averages over heads, giving ``(B, 1, T, T)`` each.
    """
    if reduction == "mean":
        return student_attn.mean(1, keepdim=True), teacher_attn.mean(1, keepdim=True)
    if student_attn.shape[1] != teacher_attn.shape[1]:
        raise ValueError(
            f"Attention KD on maps needs equal head counts (student {student_attn.shape[1]}, teacher "
            f"{teacher_attn.shape[1]}); set attention_head_reduction='mean' or attention_loss='relation'."
        )
    return student_attn, teacher_attn


def _rows(attn: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, H, T, T) -> (N, H, T)``: the valid query rows, heads kept."""
    rows = attn.float().transpose(1, 2)  # (B, T, H, T)
    rows = rows.reshape(-1, attn.shape[1], attn.shape[-1])
    return rows if mask is None else rows[mask.reshape(-1).bool()]


@register_loss("attention", "mse")
def attention_mse(student_attn, teacher_attn, *, mask=None, normalizer=None, **_):
    """Per query row, the mean over heads of the sum over keys of ``(a_s - a_t)^2`` on probabilities.

    Summing over keys (not averaging) keeps the loss of an example independent of how far its batch is padded.
    """
    s, t = _rows(student_attn, mask), _rows(teacher_attn, mask)
    return reduce_items((s - t).pow(2).sum(-1).mean(-1), normalizer)


@register_loss("attention", "kl")
def attention_kl(student_attn, teacher_attn, *, mask=None, normalizer=None, **_):
    """Per query row, the mean over heads of ``KL(a_t || a_s)``."""
    s, t = _rows(student_attn, mask), _rows(teacher_attn, mask)
    kl = (t * (t.clamp_min(_EPS).log() - s.clamp_min(_EPS).log())).sum(-1)  # (N, H)
    return reduce_items(kl.mean(-1), normalizer)


def _relation_scores(states: torch.Tensor, num_heads: int, key_bias: torch.Tensor | None) -> torch.Tensor:
    """``X_r X_r^T / sqrt(d_r) + key_bias``: ``(B, T, D) -> (B, R, T, T)``.

    ``key_bias`` is ``(B, T)``: 0 for real keys, the float32 minimum for padded ones (added inside the matmul).
    """
    b, t, d = states.shape
    if d % num_heads:
        raise ValueError(f"{num_heads} relation heads do not divide a projection of width {d}.")
    head_dim = d // num_heads
    x = states.float().view(b, t, num_heads, head_dim).transpose(1, 2).reshape(b * num_heads, t, head_dim)
    if key_bias is None:
        scores = torch.bmm(x * head_dim**-0.5, x.transpose(1, 2))
    else:
        bias = key_bias[:, None, None, :].expand(b, num_heads, 1, t).reshape(b * num_heads, 1, t)
        scores = torch.baddbmm(bias, x, x.transpose(1, 2), alpha=head_dim**-0.5)
    return scores.view(b, num_heads, t, t)


def _key_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, T)`` mask -> additive key bias, or None when nothing is padded."""
    if mask is None or bool(mask.all()):
        return None
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return bias.masked_fill_(~mask.bool(), torch.finfo(torch.float32).min)


def self_relation(states: torch.Tensor, num_heads: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Log self-relation ``log softmax(X_r X_r^T / sqrt(d_r))``: ``(B, T, D) -> (B, R, T, T)``.

    Keys at padded positions are excluded (probability 0).
    """
    return F.log_softmax(_relation_scores(states, num_heads, _key_bias(mask)), dim=-1)


class _RowKL(torch.autograd.Function):
    """``KL(p_t || softmax(z_s))`` per row, ``(..., T) -> (...)``, with the fused gradient ``softmax(z_s) - p_t``.

    Autograd through ``log_softmax`` and the products takes about 1.5x longer on CPU. ``p_t``/``log_t`` are targets
    (no gradient). Padded keys hold the float32 minimum in both ``z_s`` and ``log_t``, and ``p_t = 0`` there, so they
    add exactly 0 (no ``inf - inf``).
    """

    @staticmethod
    def forward(ctx, z_s, p_t, log_t):
        kl = (log_t - z_s.log_softmax(-1)).mul_(p_t).sum(-1)
        ctx.save_for_backward(z_s.softmax(-1), p_t)
        return kl

    @staticmethod
    def backward(ctx, grad):
        s, p_t = ctx.saved_tensors
        return s.sub_(p_t).mul_(grad[..., None]), None, None


@register_loss("attention", "relation")
def relation_kl(student_states, teacher_states, *, mask=None, normalizer=None, num_relation_heads=1, **_):
    """MiniLM v2 self-relation KD for one of Q, K or V: per query row, mean over relation heads of
    ``KL(rel_t || rel_s)``. ``student_states`` is ``(B, T, Ds)``, ``teacher_states`` ``(B, T, Dt)`` (a target: no
    gradient flows into it).
    """
    key_bias = _key_bias(mask)
    scores_s = _relation_scores(student_states, num_relation_heads, key_bias)
    with torch.no_grad():
        # masking with the float32 minimum, not -inf: exp/logsumexp of -inf would be fast but inf - inf is NaN; the
        # fused softmax kernels handle the minimum at full speed (a standalone exp of it takes a 5x slower path)
        scores_t = _relation_scores(teacher_states, num_relation_heads, key_bias)
        p_t, log_t = scores_t.softmax(-1), scores_t.log_softmax(-1)
    kl = _RowKL.apply(scores_s, p_t, log_t).mean(1).reshape(-1)  # (B, R, T) -> (B * T,)
    if mask is not None:
        kl = kl[mask.reshape(-1).bool()]
    return reduce_items(kl, normalizer)
