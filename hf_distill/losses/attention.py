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
from .reduction import reduce_items, reduce_sum
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
    """The sum over valid query rows (a row's first ``lengths[b]`` positions) of the mean over ``R`` relation heads of
    ``KL(rel_t || rel_s)``, computed group by group (``groups`` from :func:`length_groups`).

    Forward: ``student (B, T, Ds)``, ``teacher (B, T, Dt)`` or a :class:`RelationTarget`, ``lengths (B,)`` -> ``()``
    float32. With ``with_grad``, the gradient is computed in the forward: with ``z_s = X X^T / sqrt(d_r)`` and
    ``G = (softmax(z_s) - p_t) · [valid query] / R``, ``∂/∂X = (G + G^T) X / sqrt(d_r)`` (one bmm). The backward
    only scales it by the upstream gradient. Each group runs in chunks of whole examples whose ``(c R, L, L)``
    scores fit a core's L2 cache (:data:`_CHUNK_ELEMENTS`), so the softmax, the KL and ``G`` are computed there and
    nothing ``(L, L)``-sized is kept for the backward: a quarter less step overhead than keeping them (9 relations of
    6 MB each for the MiniLM recipe on 32 x 64 batches). Padded keys hold the float32 minimum in both scores, so
    ``p_t = 0`` and ``softmax(z_s) = 0`` there and they add exactly 0 (no ``inf - inf``).
    """

    @staticmethod
    def forward(ctx, student, teacher, lengths, groups, num_heads, with_grad):
        total = torch.zeros((), dtype=torch.float32, device=student.device)
        grad_x = None
        target = isinstance(teacher, RelationTarget)
        for rows, length in groups:
            valid = torch.arange(length, device=lengths.device)[None] < lengths[rows][:, None]  # (n_g, L)
            n, bias = len(rows), _key_bias(valid)
            xg = _take(student, rows, length)  # (n_g, L, Ds)
            if target:
                p_all, neg_entropy = _target_group(teacher, rows, length)
            else:
                xtg = _take(teacher, rows, length)
            d_r = student.shape[-1] // num_heads
            dx = torch.empty(xg.shape, dtype=torch.float32, device=xg.device) if with_grad else None
            step = max(1, _CHUNK_ELEMENTS // (num_heads * length * length))
            for a in range(0, n, step):
                e = min(a + step, n)
                h = slice(a * num_heads, e * num_heads)
                b = None if bias is None else bias[a:e]
                xs = _heads(xg[a:e], num_heads)  # (c R, L, d_r): split into heads chunk by chunk, while in cache
                log_s = _relation_scores(xs, num_heads, b).log_softmax(-1)
                if target:  # KL = Σ p_t log p_t - Σ p_t log_s
                    p_t = p_all[h].float()  # converted once, not by each of the two ops that read it
                    kl = neg_entropy[h] - (p_t * log_s).sum(-1)  # (c R, L)
                else:
                    # one log-softmax each, the probabilities as their exp, in place: 4 passes over (c R, L, L)
                    # fewer than separate softmaxes
                    log_t = _relation_scores(_heads(xtg[a:e], num_heads), num_heads, b).log_softmax(-1)
                    p_t = log_t.exp()
                    kl = log_t.sub_(log_s).mul_(p_t).sum(-1)  # (c R, L)
                total += kl.view(e - a, num_heads, length).mean(1)[valid[a:e]].sum()
                if with_grad:  # G = (softmax(z_s) - p_t) · [valid] / R, with 1 / sqrt(d_r) folded in
                    big_g = log_s.exp_().sub_(p_t).view(e - a, num_heads, length, length)
                    big_g = big_g.mul_((valid[a:e] * (d_r**-0.5 / num_heads))[:, None, :, None])
                    big_g = big_g.view(-1, length, length)
                    part = torch.bmm(torch.add(big_g, big_g.transpose(1, 2)), xs)  # (c R, L, d_r)
                    part = part.view(e - a, num_heads, length, d_r).transpose(1, 2)
                    dx[a:e].view(e - a, length, num_heads, d_r).copy_(part)
            if not with_grad:
                continue
            if _is_whole(rows, length, student.shape):
                grad_x = dx  # the only group: no scatter into a buffer
                continue
            if grad_x is None:
                grad_x = torch.zeros(student.shape, dtype=torch.float32, device=student.device)
            keep = min(length, student.shape[1])
            grad_x[rows, :keep] = dx[:, :keep]
        if with_grad:
            if grad_x is None:  # no valid row at all
                grad_x = torch.zeros(student.shape, dtype=torch.float32, device=student.device)
            ctx.save_for_backward(grad_x)
        ctx.dtype = student.dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        (grad_x,) = ctx.saved_tensors
        return (grad_x * grad).to(ctx.dtype), None, None, None, None, None


# float32 relation scores computed at once: 1 MB, a core's L2 cache on current x86 server CPUs. On 32 x 64 batches of
# the MiniLM recipe (12 heads) that is 5 examples a chunk; the step overhead was about the same from 2 to 10.
_CHUNK_ELEMENTS = 2**18


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
    with_grad = torch.is_grad_enabled() and student_states.requires_grad
    total = _GroupedRelationKL.apply(student_states, teacher, lengths, groups, num_relation_heads, with_grad)
    return reduce_sum(total, int(lengths.sum()), normalizer)
