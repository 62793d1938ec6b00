"""Losses on self-attention: attention maps (TinyBERT) and self-relations (MiniLM v2).

Attention maps are probabilities ``(B, H, T, T)`` (query rows sum to 1), as returned with ``output_attentions=True``
under eager attention. One item is one valid query row: ``mask`` is ``(B, T)`` with 1 for real tokens. When teacher
and student have different head counts, :func:`match_heads` reduces both to one averaged map.

Self-relation KD compares ``softmax(X X^T / sqrt(d_r))`` for ``X`` in {queries, keys, values}, split into ``R``
relation heads. It needs neither equal head counts nor equal widths, nor attention maps (any backend works). The
teacher's side is either its projections ``X`` or, computed once ahead (an encoder teacher cache), its relation
distributions as a :class:`RelationTarget` (:func:`relation_target`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .lengths import length_groups, valid_lengths
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


def _key_bias(mask: torch.Tensor | None) -> torch.Tensor | None:
    """``(B, T)`` mask -> additive key bias, or None when nothing is padded."""
    if mask is None or bool(mask.all()):
        return None
    bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    return bias.masked_fill_(~mask.bool(), torch.finfo(torch.float32).min)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """``(n, L, D) -> (n * R, L, D / R)`` in float32."""
    n, length, d = x.shape
    if d % num_heads:
        raise ValueError(f"{num_heads} relation heads do not divide a projection of width {d}.")
    return x.float().view(n, length, num_heads, d // num_heads).transpose(1, 2).reshape(n * num_heads, length, -1)


def _is_whole(rows: torch.Tensor, length: int, shape: torch.Size) -> bool:
    """Whether the group is the whole ``(B, T, ...)`` tensor, rows in order (a batch of full-length rows)."""
    return (
        length == shape[1]
        and len(rows) == shape[0]
        and bool((rows == torch.arange(shape[0], device=rows.device)).all())
    )


def _take(x: torch.Tensor, rows: torch.Tensor, length: int) -> torch.Tensor:
    """``x[rows, :length]``, zero-padded when ``length`` exceeds ``x``'s positions (``x`` itself when that is all)."""
    if _is_whole(rows, length, x.shape):
        return x
    x = x[rows, :length]
    return F.pad(x, (0, 0, 0, length - x.shape[1])) if length > x.shape[1] else x


class RelationTarget(NamedTuple):
    """A teacher's self-relations for one of Q, K or V, computed ahead: what :func:`relation_kl` reads of the teacher.

    ``probs`` ``(B, R, T, T)``: ``softmax(X X^T / sqrt(d_r))`` per relation head over each row's real keys, zero at
    padded keys and padded queries. ``neg_entropy`` ``(B, R, T)``: ``Σ_k p log p`` of each query row (the constant
    part of the KL), zero at padded queries. Real tokens first in each row (right padding).
    """

    probs: torch.Tensor
    neg_entropy: torch.Tensor


def relation_target(states: torch.Tensor, mask: torch.Tensor | None, num_heads: int) -> RelationTarget:
    """``states`` ``(B, T, D)`` (right-padded, ``mask`` ``(B, T)``) -> its :class:`RelationTarget` with ``num_heads``
    relation heads, in float32."""
    batch, seq, _ = states.shape
    bias = None if mask is None else _key_bias(mask)
    log_p = _relation_scores(_heads(states, num_heads), num_heads, bias).log_softmax(-1)  # (B R, T, T)
    probs = log_p.exp()
    neg_entropy = (probs * log_p).sum(-1).view(batch, num_heads, seq)
    probs = probs.view(batch, num_heads, seq, seq)
    if mask is not None:  # padded queries: no distribution
        keep = mask.bool()[:, None, :]
        probs, neg_entropy = probs * keep[..., None], neg_entropy * keep
    return RelationTarget(probs, neg_entropy)


def _target_group(target: RelationTarget, rows: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A group's ``(p_t (n R, L, L), Σ p_t log p_t (n R, L))`` from a :class:`RelationTarget`, zero-padded to ``L``."""
    probs, neg_entropy = target
    if not _is_whole(rows, length, probs.shape[:1] + probs.shape[2:]):
        probs, neg_entropy = probs[rows, :, :length, :length], neg_entropy[rows, :, :length]
        if length > probs.shape[-1]:
            extra = length - probs.shape[-1]
            probs, neg_entropy = F.pad(probs, (0, extra, 0, extra)), F.pad(neg_entropy, (0, extra))
    n, heads = probs.shape[:2]
    # a 16-bit p_t stays so: the float32 ops that read it convert on the fly (no float32 copy of it to write and read)
    return probs.reshape(n * heads, length, length), neg_entropy.float().reshape(n * heads, length)


class _GroupedRelationKL(torch.autograd.Function):
    """Per valid query row (a row's first ``lengths[b]`` positions), the mean over ``R`` relation heads of
    ``KL(rel_t || rel_s)``, computed group by group (``groups`` from :func:`length_groups`).

    Forward: ``student (B, T, Ds)``, ``teacher (B, T, Dt)``, ``lengths (B,)`` -> ``(N,)`` in group order. The
    backward is written out: with ``z_s = X X^T / sqrt(d_r)`` and ``G = (softmax(z_s) - p_t) · ∂L/∂KL / R``,
    ``∂L/∂X = (G + G^T) X / sqrt(d_r)``, each group's rows written once into one ``(B, T, Ds)`` buffer (autograd
    through the group slices would allocate and add a full-size zero gradient per group, and take ~1.5x longer
    through ``log_softmax``). Padded keys hold the float32 minimum in both scores, so ``p_t = 0`` and
    ``softmax(z_s) = 0`` there and they add exactly 0 (no ``inf - inf``).
    """

    @staticmethod
    def forward(ctx, student, teacher, lengths, groups, num_heads):
        per_row, saved = [], []
        for rows, length in groups:
            valid = torch.arange(length, device=lengths.device)[None] < lengths[rows][:, None]  # (n_g, L)
            bias = _key_bias(valid)
            xs = _heads(_take(student, rows, length), num_heads)  # (n_g * R, L, d_s)
            log_s = _relation_scores(xs, num_heads, bias).log_softmax(-1)
            if isinstance(teacher, RelationTarget):  # KL = Σ p_t log p_t - Σ p_t log_s
                p_t, neg_entropy = _target_group(teacher, rows, length)
                kl = neg_entropy - (p_t * log_s).sum(-1)  # (n_g * R, L)
            else:
                # one log-softmax each, the probabilities as their exp, in place: 4 passes over (n_g R, L, L) fewer
                # than separate softmaxes (the relation terms are most of a cached-teacher KD step)
                log_t = _relation_scores(_heads(_take(teacher, rows, length), num_heads), num_heads, bias)
                log_t = log_t.log_softmax(-1)
                p_t = log_t.exp()
                kl = log_t.sub_(log_s).mul_(p_t).sum(-1)  # (n_g * R, L)
            per_row.append(kl.view(len(rows), num_heads, length).mean(1)[valid])
            saved.append((rows, length, valid, xs, log_s.exp_().sub_(p_t)))  # softmax(z_s) - p_t
        ctx.groups, ctx.num_heads, ctx.shape, ctx.dtype = saved, num_heads, student.shape, student.dtype
        return torch.cat(per_row) if per_row else student.new_zeros(0, dtype=torch.float32)

    @staticmethod
    def backward(ctx, grad):
        grad_x = None
        offset, heads = 0, ctx.num_heads
        for rows, length, valid, xs, diff in ctx.groups:
            g = grad.new_zeros(valid.shape, dtype=torch.float32)  # (n_g, L): ∂L/∂KL of each query row
            count = int(valid.sum())
            g[valid] = grad[offset : offset + count].float() / heads
            offset += count
            n, d_r = len(rows), xs.shape[-1]
            big_g = diff.view(n, heads, length, length).mul_(g[:, None, :, None]).view(n * heads, length, length)
            dx = torch.baddbmm(torch.bmm(big_g, xs), big_g.transpose(1, 2), xs, alpha=1.0).mul_(d_r**-0.5)
            dx = dx.view(n, heads, length, d_r).transpose(1, 2).reshape(n, length, heads * d_r)
            if _is_whole(rows, length, ctx.shape):
                grad_x = dx  # the only group: no scatter into a buffer
                continue
            if grad_x is None:
                grad_x = grad.new_zeros(ctx.shape, dtype=torch.float32)
            keep = min(length, ctx.shape[1])
            grad_x[rows, :keep] = dx[:, :keep]
        if grad_x is None:  # no valid row at all
            grad_x = grad.new_zeros(ctx.shape, dtype=torch.float32)
        return grad_x.to(ctx.dtype), None, None, None, None


def _relation_scores(x: torch.Tensor, num_heads: int, key_bias: torch.Tensor | None) -> torch.Tensor:
    """``(n * R, L, d) -> (n * R, L, L)``: ``x x^T / sqrt(d) + key_bias``.

    ``key_bias`` is ``(n, L)`` (0 for real keys, the float32 minimum for padded ones, added inside the matmul) or
    None.
    """
    scale = x.shape[-1] ** -0.5
    if key_bias is None:  # beta=0: the scale inside the matmul, no scaled copy of x
        return torch.baddbmm(x.new_zeros(1, 1, 1), x, x.transpose(1, 2), beta=0.0, alpha=scale)
    n, length = key_bias.shape
    bias = key_bias[:, None, None, :].expand(n, num_heads, 1, length).reshape(n * num_heads, 1, length)
    return torch.baddbmm(bias, x, x.transpose(1, 2), alpha=scale)


def _left_aligned(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, T, D)`` with each row's real tokens moved to its first positions, in order (left padding, gaps)."""
    order = torch.argsort((~mask.bool()).to(torch.int32), dim=1, stable=True)
    return x.gather(1, order[..., None].expand(-1, -1, x.shape[-1]))


@register_loss("attention", "relation", needs="qkv")
def relation_kl(
    student_states, teacher_states, *, mask=None, normalizer=None, num_relation_heads=1, max_groups=4, **_
):
    """MiniLM v2 self-relation KD for one of Q, K or V: per query row, mean over relation heads of
    ``KL(rel_t || rel_s)``. ``student_states`` is ``(B, T, Ds)``, ``teacher_states`` ``(B, T, Dt)``, or the teacher's
    relations computed ahead, a :class:`RelationTarget` with ``num_relation_heads`` heads (a target: no gradient flows
    into it); ``mask`` ``(B, T)``, 1 for real tokens, which may sit anywhere in a row (right-padded only with a
    :class:`RelationTarget`).

    A padded batch is computed in up to ``max_groups`` groups of rows of similar length, each cut to its longest row
    rounded up to a multiple of 16 (:func:`hf_distill.losses.lengths.length_groups`): a relation involves only a
    row's real tokens, so the value is the same without the ``(T, T)`` work on padding (82% of it on SST-2 batches).
    """
    if mask is None:
        mask = torch.ones(student_states.shape[:2], dtype=torch.bool, device=student_states.device)
    lengths = valid_lengths(mask)
    target = isinstance(teacher_states, RelationTarget)
    if target and teacher_states.probs.shape[1] != num_relation_heads:
        raise ValueError(
            f"The teacher's relations have {teacher_states.probs.shape[1]} heads but num_relation_heads is "
            f"{num_relation_heads}: build them with as many heads as the run's relation_heads."
        )
    if lengths is None:  # not right-padded: gather each row's real tokens first
        if target:
            raise ValueError("Relations computed ahead (a RelationTarget) need right-padded rows (real tokens first).")
        lengths = mask.bool().sum(1)
        student_states, teacher_states = _left_aligned(student_states, mask), _left_aligned(teacher_states, mask)
    # lengths in multiples of 16: CPU softmax kernels are ~10x slower per element on shorter rows
    groups = length_groups(lengths, max_groups=max_groups, power=2, multiple=16)
    teacher = teacher_states if target else teacher_states.detach()
    per_row = _GroupedRelationKL.apply(student_states, teacher, lengths, groups, num_relation_heads)
    return reduce_items(per_row, normalizer)
