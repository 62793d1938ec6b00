"""Token-level logit KD from a teacher's top-k log-probabilities, so that a teacher's outputs can be cached on disk.

A full-vocabulary teacher distribution costs ``V`` floats per token (``V = 49,152``: 196 KB in float32); its top-k
ids and log-probabilities cost ``k * (4 + 2)`` bytes in int32 + float16 (``k = 32``: 192 bytes). :func:`teacher_topk`
extracts them; :func:`topk_token_kd` distils from them with any registered divergence
(see :mod:`hf_distill.data.teacher_cache` for the cache on disk).

The choice: the tail bucket (``tail="bucket"``, the default)
    The teacher's top-k entries are the log-probabilities of the *full* softmax, so ``1 - sum_i p_i`` is the mass of
    every other token, the tail. Both distributions are coarsened to ``k + 1`` outcomes: the ``k`` teacher ids, and one
    bucket holding all other tokens (teacher: ``1 - sum_i p_t,i``; student: ``1 - sum_i p_s,i`` of its own softmax at
    the same ids). For these coarsened distributions the loss is exact, not an approximation: the coarsened teacher is
    exactly what the stored top-k determines (nothing is guessed about the tail), the coarsened student is the
    student's own distribution mapped through the same partition, and the value is the divergence of two genuine
    distributions over ``k + 1`` outcomes. What it loses is the *shape* of the tail: by the data-processing inequality,
    the coarsened divergence is at most the full one, and the student is only asked to put the right total mass on
    "other tokens", not to spread it like the teacher does. With ``k = V`` the tail bucket is empty on both sides and
    the loss equals the full-vocabulary loss (to ~1e-6 relative, from the floor below). Tails smaller than
    ``TAIL_FLOOR`` are raised to it on both sides: ``1 - sum`` cannot be told apart from zero below float rounding, and
    an exactly empty bucket would give ``0 * log 0`` gradients.

The alternative (``tail="renormalize"``)
    Both distributions are restricted to the ``k`` ids and renormalised. It ignores how much mass the student puts
    outside the teacher's top-k (it can grow without penalty), which the bucket prevents; it is offered to reproduce
    papers that use it.

In both cases the registered divergence (``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_reverse_kl`` or one of
your own) is applied at temperature 1 to the ``(N, k + 1)`` or ``(N, k)`` log-probabilities, which are already
softened at ``T`` (``log_softmax`` of normalised log-probabilities is the identity), and multiplied by ``T^2``.
A loss on raw logits (``mse``, whose registry entry ``needs`` only ``"logits"``) cannot read a top-k cache, so it
is refused.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reduction import flatten_valid
from .registry import available_losses, get_loss, loss_needs

TAIL_CHOICES = ("bucket", "renormalize")

# Tail masses below this count as this much, for teacher and student alike. float32 rounding of 1 - sum(p) over
# k <= V terms is ~1e-7, so a smaller tail is noise; equal floors on both sides add nothing to any divergence.
TAIL_FLOOR = 1e-6

# Stored log-probabilities of -inf (a vocabulary entry masked by the teacher, with k larger than the number of
# allowed tokens) would give 0 * inf = nan in the divergences; exp(-1e4) is exactly 0 in float32.
_LOGPROB_MIN = -1e4

# A log-probability is at most 0; float32 rounding leaves a log_softmax at most ~1e-6 above it, float16 storage ~1e-3
LOGPROB_TOLERANCE = 1e-3


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def teacher_topk(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` most likely tokens of ``softmax(teacher_logits / T)`` and their log-probabilities.

    Args:
        teacher_logits: ``(*batch, V)`` logits, any float dtype (the maths runs in float32).
        k: how many tokens to keep, ``1 <= k <= V``.
        temperature: softmax temperature ``T`` (the one the student will be distilled at).

    Returns:
        ``ids`` ``(*batch, k)`` int64 and ``logprobs`` ``(*batch, k)`` float32, in decreasing probability. The
        log-probabilities are normalised over the full vocabulary, so ``exp(logprobs).sum(-1) <= 1`` and the rest is
        the tail mass.
    """
    _check_temperature(temperature)
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"k must lie between 1 and the vocabulary size {vocab}, got {k}.")
    logprobs = F.log_softmax(teacher_logits.detach().float() / temperature, dim=-1)  # (*batch, V)
    values, ids = logprobs.topk(k, dim=-1)  # (*batch, k) each
    return ids, values


def _check_shapes(student_logits, teacher_ids, teacher_logprobs, mask) -> None:
    if teacher_ids.shape != teacher_logprobs.shape:
        raise ValueError(
            f"teacher_ids {tuple(teacher_ids.shape)} and teacher_logprobs {tuple(teacher_logprobs.shape)} differ; "
            "both must be (*batch, k), as returned by teacher_topk."
        )
    batch_shape, vocab, k = student_logits.shape[:-1], student_logits.shape[-1], teacher_ids.shape[-1]
    if teacher_ids.shape[:-1] != batch_shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher top-k {tuple(teacher_ids.shape)} cover "
            f"different tokens; both need the same leading (*batch) dimensions {tuple(batch_shape)}."
        )
    if not 1 <= k <= vocab:
        raise ValueError(
            f"The teacher keeps k = {k} tokens but the student's vocabulary has V = {vocab}; need 1 <= k <= V."
        )
    if teacher_ids.is_floating_point() or teacher_ids.is_complex():
        raise ValueError(f"teacher_ids must be an integer tensor, got {teacher_ids.dtype}.")
    if mask is not None and mask.shape != batch_shape:
        raise ValueError(f"mask {tuple(mask.shape)} does not match the tokens {tuple(batch_shape)}.")


def _check_logprobs(logprobs: torch.Tensor) -> None:
    """Refuse teacher log-probabilities that are none (``(N, k)``): NaN, or above 0 (``-inf`` is a masked token)."""
    if not logprobs.numel():
        return
    nan, positive = torch.stack([torch.isnan(logprobs).any(), (logprobs > LOGPROB_TOLERANCE).any()]).tolist()
    if nan or positive:
        what = "NaN" if nan else f"a positive log-probability ({float(logprobs.max()):.4g})"
        raise ValueError(
            f"teacher_logprobs hold {what}, which no log-probability is: the teacher cache is damaged or its teacher "
            "overflowed; build the cache again (with a float32 teacher)."
        )


def _log_tail(log_probs: torch.Tensor) -> torch.Tensor:
    """``log(max(1 - sum exp(log_probs), TAIL_FLOOR))``: ``(N, k) -> (N, 1)``, stable when the tail is small."""
    log_head = torch.logsumexp(log_probs, dim=-1, keepdim=True)  # log of the top-k mass, <= 0 up to rounding
    return torch.log((-torch.expm1(log_head)).clamp(min=TAIL_FLOOR))


def topk_token_kd(
    student_logits: torch.Tensor,
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    loss: str = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    normalizer: float | torch.Tensor | None = None,
    tail: str = "bucket",
) -> torch.Tensor:
    """Logit KD against a teacher known only through its top-k log-probabilities (see the module docstring).

    Args:
        student_logits: ``(*batch, V)`` student logits (``(B, T, V)`` already shifted for causal LMs).
        teacher_ids: ``(*batch, k)`` integer token ids in ``[0, V)``, e.g. from :func:`teacher_topk` or a cache.
        teacher_logprobs: ``(*batch, k)`` the teacher's log-probabilities of those ids at temperature ``T``,
            normalised over the full vocabulary (float16 from a cache is fine; the maths runs in float32).
        mask: ``(*batch)`` boolean/0-1, true for the tokens to distil. Masked rows are never read, so their ids
            may be padding values.
        loss: a registered logits divergence: ``kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_reverse_kl``.
        temperature: the ``T`` the student is softened at; it must be the one the teacher's top-k was taken at.
            The loss is multiplied by ``T^2``.
        beta: the ``beta`` of ``jsd`` and the skew weight of ``skew_kl`` / ``skew_reverse_kl``.
        normalizer: the sum over valid tokens is divided by it; default the number of valid tokens, ``1`` the sum.
        tail: ``"bucket"`` (default: the other tokens form a ``(k + 1)``-th outcome) or ``"renormalize"``
            (both distributions restricted to the ``k`` ids).

    Returns:
        A float32 scalar; gradients flow to ``student_logits`` only.
    """
    if "topk" not in loss_needs("logits", loss):
        usable = [name for name in available_losses("logits") if "topk" in loss_needs("logits", name)]
        raise ValueError(
            f"loss={loss!r} compares raw logits, which a top-k teacher does not keep; use a divergence "
            f"({', '.join(usable)}) or distil from the full teacher logits."
        )
    if tail not in TAIL_CHOICES:
        raise ValueError(f"Unknown tail {tail!r}; choose one of {list(TAIL_CHOICES)}.")
    _check_temperature(temperature)
    loss_fn = get_loss("logits", loss)
    _check_shapes(student_logits, teacher_ids, teacher_logprobs, mask)

    # Select the valid tokens first: padding rows are never softmaxed, and their ids need not be valid.
    s = flatten_valid(student_logits, mask, 1)  # (N, V)
    ids = flatten_valid(teacher_ids, mask, 1).to(s.device, torch.int64)  # (N, k)
    t = flatten_valid(teacher_logprobs.detach(), mask, 1).to(s.device, torch.float32)  # (N, k)
    _check_logprobs(t)
    t = t.clamp(min=_LOGPROB_MIN)
    vocab = s.shape[-1]
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(
            f"teacher_ids hold ids in [{int(ids.min())}, {int(ids.max())}] but the student's vocabulary has "
            f"V = {vocab} entries; the teacher cache was built for another vocabulary (or padding ids are not masked)."
        )

    scaled = s.float() / temperature  # (N, V)
    picked = scaled.gather(-1, ids)  # (N, k) student logits / T at the teacher's ids
    if tail == "bucket":
        log_s = picked - torch.logsumexp(scaled, dim=-1, keepdim=True)  # (N, k) of the full student softmax
        log_s = torch.cat([log_s, _log_tail(log_s)], dim=-1)  # (N, k + 1)
        log_t = torch.cat([t, _log_tail(t)], dim=-1)  # (N, k + 1)
    else:
        log_s, log_t = F.log_softmax(picked, dim=-1), F.log_softmax(t, dim=-1)  # (N, k) each
    value = loss_fn(log_s, log_t, mask=None, temperature=1.0, normalizer=normalizer, beta=beta)
    return value * temperature**2
