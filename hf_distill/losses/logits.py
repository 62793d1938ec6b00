"""Soft-target losses on output logits.

All divergence losses soften both distributions at temperature ``T`` and multiply by ``T**2`` (Hinton et al., 2015)
so that their gradients keep the same scale as the hard-label loss when ``T`` changes. Maths runs in float32: the
log-softmax of bf16/fp16 logits loses exactly the small tail probabilities that distillation transfers.

Shapes: ``student_logits`` and ``teacher_logits`` are ``(*batch, V)`` (``(B, V)`` for sequence classification,
``(B, T, V)`` for token-level KD, already shifted for causal LMs); ``mask`` is ``(*batch)``.

Vocabulary entries masked with ``-inf`` (generation constraints, padded vocabulary rows) have probability 0. Where
both distributions give an entry probability 0 it contributes nothing, ``0 * log(0 / 0) = 0``, and no gradient: every
divergence equals the same divergence on the vocabulary without those entries, with finite gradients. ``mse`` leaves
out the entries where both logits are ``-inf`` and averages over the others. An entry that only one side masks is a
true infinity (``KL(p_t || p_s)`` where the teacher allows a token the student forbids) and stays one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .reduction import flatten_valid, reduce_items
from .registry import loss_needs, register_loss


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per row: ``(N, V), (N, V) -> (N,)``; entries with ``p = 0`` count as 0, ``q = 0`` included.

    The difference is zeroed *before* the product, so that ``-inf - -inf = nan`` reaches neither the value nor the
    gradient (``torch.where`` after the product would still back-propagate ``0 * nan``).
    """
    p = log_p.exp()
    return (p * torch.where(p > 0, log_p - log_q, 0.0)).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, weight: float) -> torch.Tensor:
    """``log(weight * p + (1 - weight) * q)`` elementwise from log-probabilities, for ``0 <= weight < 1``.

    ``-inf`` (a masked entry) is raised to the lowest finite float first: ``logaddexp(-inf, -inf)`` back-propagates
    ``exp(-inf - -inf) = nan``. Where both are masked, the mixture is then that lowest float; both distributions are 0
    there, so no KL reads it. Where one is masked, the mixture is the other's term, as before.
    """
    if weight == 0.0:
        return log_q
    floor = torch.finfo(log_p.dtype).min
    return torch.logaddexp(log_p.clamp(min=floor) + math.log(weight), log_q.clamp(min=floor) + math.log1p(-weight))


def _valid_rows(student_logits, teacher_logits, mask):
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ; "
            "logit KD needs the same label set or vocabulary."
        )
    return flatten_valid(student_logits, mask, 1), flatten_valid(teacher_logits, mask, 1)


@register_loss("logits", "kl")
def forward_kl(student_logits, teacher_logits, *, mask=None, temperature=1.0, normalizer=None, **_):
    """Forward KL, ``T^2 * KL(p_t || p_s)`` with ``p = softmax(z / T)``: mean-seeking, the classic KD loss."""
    s, t = _valid_rows(student_logits, teacher_logits, mask)
    per_item = _kl_rows(_log_probs(t, temperature), _log_probs(s, temperature))
    return reduce_items(per_item, normalizer) * temperature**2


@register_loss("logits", "reverse_kl")
def reverse_kl(student_logits, teacher_logits, *, mask=None, temperature=1.0, normalizer=None, **_):
    """Reverse KL, ``T^2 * KL(p_s || p_t)``: mode-seeking (MiniLLM)."""
    s, t = _valid_rows(student_logits, teacher_logits, mask)
    per_item = _kl_rows(_log_probs(s, temperature), _log_probs(t, temperature))
    return reduce_items(per_item, normalizer) * temperature**2


@register_loss("logits", "jsd")
def generalized_jsd(student_logits, teacher_logits, *, mask=None, temperature=1.0, normalizer=None, beta=0.5, **_):
    """Generalised Jensen-Shannon divergence (GKD, Agarwal et al. 2024), times ``T^2``.

    ``m = beta * p_t + (1 - beta) * p_s``;  ``JSD_beta = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)``.
    ``beta = 0.5`` is the symmetric JSD; ``beta`` must lie strictly between 0 and 1.
    """
    if not 0.0 < beta < 1.0:
        raise ValueError(f"jsd beta must lie strictly between 0 and 1, got {beta}.")
    s, t = _valid_rows(student_logits, teacher_logits, mask)
    log_ps, log_pt = _log_probs(s, temperature), _log_probs(t, temperature)
    log_m = _log_mixture(log_pt, log_ps, beta)
    per_item = beta * _kl_rows(log_pt, log_m) + (1 - beta) * _kl_rows(log_ps, log_m)
    return reduce_items(per_item, normalizer) * temperature**2


def _check_skew(name: str, beta: float) -> None:
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"{name} skew beta must lie in [0, 1) (beta = 0 is the plain KL), got {beta}.")


@register_loss("logits", "skew_kl")
def skew_forward_kl(student_logits, teacher_logits, *, mask=None, temperature=1.0, normalizer=None, beta=0.5, **_):
    """Skew forward KL (DistiLLM, Ko et al. 2024), times ``T^2``.

    ``SKL_beta = KL(p_t || beta * p_t + (1 - beta) * p_s)``. The mixture keeps the target finite where the student
    puts almost no mass; ``beta = 0`` is the forward KL, and the loss shrinks towards 0 as ``beta`` approaches 1.
    DistiLLM uses ``beta = 0.1``. ``beta`` must lie in ``[0, 1)``.
    """
    _check_skew("skew_kl", beta)
    s, t = _valid_rows(student_logits, teacher_logits, mask)
    log_ps, log_pt = _log_probs(s, temperature), _log_probs(t, temperature)
    per_item = _kl_rows(log_pt, _log_mixture(log_pt, log_ps, beta))
    return reduce_items(per_item, normalizer) * temperature**2


@register_loss("logits", "skew_reverse_kl")
def skew_reverse_kl(student_logits, teacher_logits, *, mask=None, temperature=1.0, normalizer=None, beta=0.5, **_):
    """Skew reverse KL (DistiLLM, Ko et al. 2024), times ``T^2``.

    ``SRKL_beta = KL(p_s || beta * p_s + (1 - beta) * p_t)``; ``beta = 0`` is the reverse KL. ``beta`` must lie in
    ``[0, 1)``.
    """
    _check_skew("skew_reverse_kl", beta)
    s, t = _valid_rows(student_logits, teacher_logits, mask)
    log_ps, log_pt = _log_probs(s, temperature), _log_probs(t, temperature)
    per_item = _kl_rows(log_ps, _log_mixture(log_ps, log_pt, beta))
    return reduce_items(per_item, normalizer) * temperature**2


@register_loss("logits", "mse", needs="logits")
def logits_mse(student_logits, teacher_logits, *, mask=None, normalizer=None, **_):
    """Mean squared error between raw logits, averaged over the ``V`` outputs of an item (no temperature).

    This is the soft-target loss for regression heads (``num_labels == 1``, e.g. STS-B). Outputs that both models
    mask with ``-inf`` are left out, of the sum and of the count: ``(N, V) -> (N,)`` means over the others.
    """
    s, t = _valid_rows(student_logits, teacher_logits, mask)
    s, t = s.float(), t.float()
    both = torch.isneginf(s) & torch.isneginf(t)  # (N, V)
    squared = torch.where(both, 0.0, s - t).pow(2)
    per_item = squared.sum(-1) / (s.shape[-1] - both.sum(-1)).clamp(min=1)
    return reduce_items(per_item, normalizer)


def mix_teacher_logits(teacher_logits: list[torch.Tensor], weights: list[float], temperature: float, loss: str):
    """Combine several teachers' logits ``[(*batch, V)]`` into one soft target.

    For divergences the teachers' distributions at temperature ``T`` are averaged with ``weights`` and returned as
    pseudo-logits ``T * log(sum_i w_i p_i)``, whose softmax at ``T`` is exactly the mixture. For a loss on raw logits
    (``mse``: its registry entry needs ``"logits"`` only) the logits themselves are averaged. One teacher is returned
    unchanged.
    """
    if len(teacher_logits) == 1:
        return teacher_logits[0]
    w = torch.tensor(weights, dtype=torch.float32, device=teacher_logits[0].device)
    w = w / w.sum()
    if "topk" not in loss_needs("logits", loss):  # a teacher of weight 0 is left out: 0 * -inf would be nan
        return sum(wi * z.float() for wi, weight, z in zip(w, weights, teacher_logits) if weight > 0)
    stacked = torch.stack([_log_probs(z, temperature) for z in teacher_logits])  # (n_teachers, *batch, V)
    log_mix = torch.logsumexp(stacked + w.log().view(-1, *[1] * (stacked.dim() - 1)), dim=0)
    return log_mix * temperature
