"""Tolerances for float32 results, derived from float32 rounding instead of from one run.

Two algorithms that compute the same value in float32 (chunked and full logits, a fused and an autograd gradient,
grouped and whole batches, float32 against a float64 reference) differ by rounding only, and how much they may differ
depends on the order of their reductions: the number of threads, the chunking, the kernels a BLAS picks. A tolerance
read off one run is right on one machine at one thread count; this module derives it from the error analysis.

The rounding error of a sum of ``n`` terms ``x_i`` in float32 is at most ``lambda * sqrt(n) * u * sum |x_i|`` with a
probability that grows quickly with ``lambda`` (``u = 2**-24``, the unit roundoff; Higham and Mary, "A new approach
to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019): the roundings are independent enough
that they grow like ``sqrt(n)``, not ``n``. Two computations of one value each carry such an error, so

    rtol = 2 * LAMBDA * sqrt(n) * u,        atol = rtol * scale,

and a comparison passes when ``|got - want| <= atol + rtol * |want|`` elementwise. Choosing the arguments:

- ``scale`` is the size of the terms that were summed into the value, ``sum |x_i|`` divided by the normaliser of a
  mean, NOT the size of the value. A KL of 1e-3 between two close distributions is a cross-entropy minus an entropy
  of a few nats each, ``sum p_t log p_t - sum p_t log p_s``, and each term is rounded at its own size, so the error
  scales with the terms (:func:`divergence_scale`). When nothing cancels, the value itself is the scale (the
  default: the largest ``|want|`` of a tensor, so an entry much smaller than its neighbours, e.g. a gradient that
  is a sum of cancelling contributions, gets the absolute tolerance of the large ones). A tensor ``scale`` gives each
  entry its own: the gradients of a linear head, :func:`head_grad_scales`, add products whose sum cancels (a
  softmax's gradient sums to 0 over the vocabulary), so their terms are far larger than their largest entry.
- ``n`` is the length of the longest chain of additions behind one value: ``V`` for a log-softmax or a sum over the
  vocabulary, ``D`` for a product with a ``(D, ...)`` weight. A reduction in stages adds the stages' lengths
  (``V + N`` for a mean over ``N`` tokens of per-token sums over ``V``): each stage rounds at the size of its own
  partial sums, which the outer stage then adds once. A deep computation (a model's forward and backward) adds the
  widths its values pass through (:func:`forward_chain`). Only the stages where the two computations can differ
  count: two runs of one model on the same batch share its forward, and then only the head and the loss differ.
- ``dtype``: values rounded in bfloat16 or float16 (a half-precision model's outputs) take that format's unit
  roundoff instead (``2**-9``, ``2**-11``): the same analysis, a coarser grid.
- ``LAMBDA = 4`` bounds each computation's error with overwhelming probability for the sizes used here; the factor 2
  is the two computations. The resulting tolerance is about ``5e-7 * sqrt(n)`` relative to the scale: far below
  what a modelling error produces (a wrong sign, a missing term or token, a missing ``T**2`` change a result by a
  fraction of the scale), far above the reordering of a parallel reduction.

Every comparison records the fraction of its tolerance it used; ``pytest --fp32-report=N`` prints the N closest.
"""

from __future__ import annotations

import math
import os

import torch

LAMBDA = 4.0

# (test id, label, fraction of the tolerance used) for every comparison of the session, for --fp32-report
USAGE: list[tuple[str, str, float]] = []


def fp32_tolerance(scale: float, n: int = 1, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """``(rtol, atol)`` for two float32 computations of a value built from terms of size ``scale``.

    ``n`` is the length of the longest chain of additions behind it; ``dtype`` the coarsest format the computations
    rounded in. See the module docstring.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    rtol = 2 * LAMBDA * math.sqrt(n) * torch.finfo(dtype).eps / 2
    return rtol, rtol * float(scale)


def _as_float64(x) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.as_tensor(x, dtype=torch.float64)


def assert_fp32_close(
    got,
    want,
    *,
    scale: float | torch.Tensor | None = None,
    n: int = 1,
    dtype: torch.dtype = torch.float32,
    msg: str = "",
) -> float:
    """Assert that ``got`` and ``want`` (tensors of one shape, or numbers) agree to float32 rounding.

    Args:
        got, want: the two computations; ``want`` is the reference (its ``|want|`` enters the relative part).
        scale: the size of the terms summed into the values (default: ``max |want|``), a number or a tensor of
            ``want``'s shape (one per entry); see the module docstring.
        n: the length of the longest chain of additions behind one value.
        dtype: the coarsest format the two computations rounded in (float32, or bfloat16/float16 for half precision).
        msg: a label for the failure message and the report.

    Returns:
        The fraction of the tolerance used (``max |got - want| / (atol + rtol |want|)``).
    """
    g, w = _as_float64(got), _as_float64(want)
    if g.shape != w.shape:
        raise AssertionError(f"{msg}: shapes differ, {tuple(g.shape)} against {tuple(w.shape)}")
    finite = torch.isfinite(w)
    if not torch.equal(torch.isfinite(g), finite) or not torch.equal(g[~finite], w[~finite]):
        raise AssertionError(f"{msg}: the non-finite entries differ")
    if scale is None:
        scale = w[finite].abs().max().item() if finite.any() else 0.0
    rtol, _ = fp32_tolerance(1.0, n, dtype)
    scales = _as_float64(scale).expand(w.shape)[finite]
    atol = rtol * scales
    diff, bound = (g - w)[finite].abs(), atol + rtol * w[finite].abs()
    used = 0.0
    if diff.numel():
        ratio = torch.where(diff == 0, 0.0, diff / bound)  # bound is 0 only for exact zeros of scale 0
        used = ratio.max().item()
    USAGE.append((os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0], msg, used))
    if used > 1.0:
        worst = int(ratio.argmax())
        raise AssertionError(
            f"{msg}: |got - want| = {diff[worst].item():.3g} at entry {worst} exceeds the float32 tolerance "
            f"{bound[worst].item():.3g} (rtol {rtol:.3g} * (scale {scales[worst].item():.3g} + |want| "
            f"{w[finite][worst].abs().item():.3g}); n {n}, {dtype}): {used:.1f} times the rounding error allows"
        )
    return used


def divergence_scale(student_logits, teacher_logits, *, temperature: float = 1.0, mask=None) -> float:
    """The size of the terms a logit divergence sums: ``T**2 * mean over tokens of sum_v (p_s + p_t)(|log p_s| +
    |log p_t|)``.

    Every divergence of the registry (forward and reverse KL, JSD, the skew KLs) is a weighted sum over the
    vocabulary of ``p * log p`` and ``p * log q`` terms for ``p, q`` among the student's, the teacher's and their
    mixture's distributions (a mixture's ``|log m|`` lies below the larger of its parts'), so this bounds the size of
    what is summed, whatever the divergence's own value.

    Args:
        student_logits, teacher_logits: ``(*batch, V)`` logits (a leading teacher vocabulary slice is the caller's).
        temperature: the softening temperature ``T``.
        mask: ``(*batch)`` valid tokens, or ``None`` for all.
    """
    log_s = torch.log_softmax(student_logits.detach().double() / temperature, -1)
    log_t = torch.log_softmax(teacher_logits.detach().double() / temperature, -1)
    per_token = ((log_s.exp() + log_t.exp()) * (log_s.abs() + log_t.abs())).sum(-1)  # (*batch)
    if mask is not None:
        per_token = per_token[mask.bool()]
    return temperature**2 * per_token.mean().item() if per_token.numel() else 0.0


def cross_entropy_scale(logits) -> float:
    """The size of the terms of a cross-entropy over ``(*batch, V)`` logits: ``logsumexp(z) - z_label`` adds terms
    as large as the largest logit and ``log V``."""
    return logits.detach().abs().max().item() + math.log(logits.shape[-1])


def forward_chain(config, seq_len: int) -> int:
    """The chains of additions in a transformer's forward, for ``n``: per layer the attention's products (hidden
    size) and its keys (``seq_len``) and the MLP's two products (hidden and intermediate sizes), then the output head
    (hidden size) and the vocabulary of a softmax over it. A backward pass walks the same chains again."""
    hidden = config.hidden_size
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    return config.num_hidden_layers * (2 * hidden + intermediate + seq_len) + hidden + config.vocab_size


def logit_grad_scale(student_logits, teacher_logits, *, temperature: float = 1.0, mask=None, normalizer=None, **_):
    """The size of the terms of a divergence's gradient w.r.t. the student's logits, per entry ``(*batch, V)``.

    The gradients of the registry's divergences combine ``p``, ``p * log p`` and ``p * log q`` terms times ``T`` (the
    ``T**2`` of the loss over the ``1 / T`` of the softening): ``T (p_s + p_t)(1 + |log p_s| + |log p_t|)``, divided
    by ``normalizer`` (default: the number of valid tokens), and 0 on masked tokens. Other keywords of the loss (``beta``)
    are accepted and change nothing.
    """
    log_s = torch.log_softmax(student_logits.detach().double() / temperature, -1)
    log_t = torch.log_softmax(teacher_logits.detach().double() / temperature, -1)
    terms = temperature * (log_s.exp() + log_t.exp()) * (1 + log_s.abs() + log_t.abs())
    valid = torch.ones(terms.shape[:-1], dtype=torch.bool) if mask is None else mask.bool()
    normalizer = int(valid.sum()) if normalizer is None else float(normalizer)
    return terms * valid[..., None] / normalizer


def head_grad_scales(logit_scale: torch.Tensor, hidden, weight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The size of the terms of the gradients of a linear head ``logits = hidden @ weight.T + bias``, per entry.

    From the size of the gradient's terms at the logits ``(*batch, V)``: ``d hidden = d logits @ weight`` adds
    ``|d logits| |weight|`` over the vocabulary, ``d weight = d logits^T @ hidden`` adds ``|d logits| |hidden|`` over
    the tokens and ``d bias`` adds ``|d logits|`` over the tokens. Returns the scales of ``(hidden, weight, bias)``.
    """
    dy = logit_scale.reshape(-1, logit_scale.shape[-1])  # (N, V)
    h = hidden.detach().double().reshape(-1, hidden.shape[-1]).abs()  # (N, D)
    w = weight.detach().double().abs()  # (V, D)
    return (dy @ w).reshape(*hidden.shape), dy.T @ h, dy.sum(0)


def grad_scales(grads: dict[str, torch.Tensor]) -> dict[str, float]:
    """The scale of each parameter's gradient for :func:`assert_fp32_close`: its largest entry, except for attention
    key biases, whose gradient is 0 in exact arithmetic (a key bias moves all the scores of a query by the same amount,
    which the softmax ignores), so what a computation returns there is rounding of terms as large as the key weight's
    gradient."""
    scales = {}
    for name, grad in grads.items():
        source = grads.get(name[: -len("bias")] + "weight") if name.endswith(("key.bias", "k_proj.bias")) else None
        scales[name] = (grad if source is None else source).detach().abs().max().item()
    return scales
