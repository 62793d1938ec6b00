"""The chunked token-level KD term (fused_causal_lm_loss without its task term, as the trainer runs it) equals the
unchunked registry loss on full logits, in value and gradients, and saves far less."""

from __future__ import annotations

import weakref

import pytest
import torch
from numerics import assert_fp32_close, cross_entropy_scale, divergence_scale, head_grad_scales, logit_grad_scale
from torch import nn

from hf_distill.losses import TeacherTargets, fused_causal_lm_loss, get_loss

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

DIVERGENCES = ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]
B, T, D, DT, V = 3, 6, 8, 12, 37


def make_inputs(seed=0, teacher_dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(D, V)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=g))
        head.bias.copy_(torch.randn(V, generator=g))
    hidden = torch.randn(B, T, D, generator=g, requires_grad=True)
    teacher_head = nn.Linear(DT, V)
    teacher_hidden = torch.randn(B, T, DT, generator=g)
    teacher_logits = (3 * torch.randn(B, T, V, generator=g)).to(teacher_dtype)
    # prompt tokens (row 1 starts with 2 of them) and right padding are masked
    mask = torch.tensor([[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.bool)
    return head, hidden, teacher_head, teacher_hidden, teacher_logits, mask


def chunked_kd(hidden, head, teacher_logits=None, *, teacher_hidden=None, teacher_head=None, mask=None, **kw):
    """The KD term alone, chunked: ``fused_causal_lm_loss`` with ``alpha_task=0``, the teacher's logits given or
    computed per chunk from its hidden states and head."""
    if teacher_logits is not None:
        teacher = TeacherTargets(logits=[teacher_logits])
    else:
        teacher = TeacherTargets(hidden=[teacher_hidden], heads=[teacher_head])
    total, _ = fused_causal_lm_loss(
        hidden, head, labels=None, mask=mask, teacher=teacher, alpha_task=0.0, alpha_logits=1.0, **kw
    )
    return total


def grads(loss, head, hidden):
    return torch.autograd.grad(loss, [hidden, head.weight, head.bias])


# the chains of additions behind the loss: the heads' widths, the vocabulary, the tokens (tests/numerics.py)
N_LOSS = DT + V + B * T


def scale_of(name, student_logits, teacher_logits, **kw):
    """The size of the terms the loss sums: the divergence's terms, or the MSE's squares (its value)."""
    if name == "mse":
        return get_loss("logits", "mse")(student_logits, teacher_logits, mask=kw.get("mask")).item()
    return divergence_scale(
        student_logits, teacher_logits, temperature=kw.get("temperature", 1.0), mask=kw.get("mask")
    )


def assert_close(got, want, name, head, hidden, teacher_logits, dtype=torch.float32, **kw):
    """Gradients w.r.t. hidden, weight and bias: the loss's chains, then back through the head, each entry to the
    size of the terms it adds up."""
    logits = head(hidden)
    if name == "mse":  # d/ds mean over V and tokens of (s - t)^2: no cancellation
        mask = kw.get("mask", torch.ones(logits.shape[:-1], dtype=torch.bool))
        dy = 2 * (logits - teacher_logits).abs().detach().double() * mask[..., None] / (V * int(mask.sum()))
    else:
        dy = logit_grad_scale(logits, teacher_logits, **kw)
    scales = head_grad_scales(dy, hidden, head.weight)
    for g, w, scale, what in zip(got, want, scales, ("hidden", "weight", "bias")):
        assert_fp32_close(g, w, scale=scale, n=2 * N_LOSS, dtype=dtype, msg=what)


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("teacher", ["logits", "hidden"])
def test_value_and_gradients_match_unchunked(name, temperature, teacher):
    head, hidden, t_head, t_hidden, t_logits, mask = make_inputs()
    if teacher == "hidden":
        with torch.no_grad():
            t_logits = t_head(t_hidden)
        teacher_kw = {"teacher_hidden": t_hidden, "teacher_head": t_head}
    else:
        teacher_kw = {"teacher_logits": t_logits}
    kw = {"mask": mask, "temperature": temperature, "beta": 0.3}
    want = get_loss("logits", name)(head(hidden), t_logits, **kw)
    want_grads = grads(want, head, hidden)
    scale = scale_of(name, head(hidden), t_logits, **kw)
    for chunk_size in (1, 7, 64):  # one row, chunks not dividing N = 12, one chunk larger than N
        got = chunked_kd(hidden, head, **teacher_kw, loss=name, chunk_size=chunk_size, **kw)
        assert got.dtype == torch.float32 and got.dim() == 0
        assert_fp32_close(got, want, scale=scale, n=N_LOSS)
        assert_close(grads(got, head, hidden), want_grads, name, head, hidden, t_logits, **kw)


@pytest.mark.parametrize("name", [*DIVERGENCES, "mse"])
def test_bf16_teacher_logits_and_no_mask(name):
    head, hidden, _, _, t_logits, _ = make_inputs(seed=1, teacher_dtype=torch.bfloat16)
    want = get_loss("logits", name)(head(hidden), t_logits, temperature=2.0)
    got = chunked_kd(hidden, head, t_logits, loss=name, temperature=2.0, chunk_size=5)
    assert_fp32_close(got, want, scale=scale_of(name, head(hidden), t_logits, temperature=2.0), n=N_LOSS)
    assert_close(grads(got, head, hidden), grads(want, head, hidden), name, head, hidden, t_logits, temperature=2.0)


def test_head_as_weight_tensor_or_pair_normalizer_and_scaled_backward():
    head, hidden, _, _, t_logits, mask = make_inputs(seed=2)
    weight = head.weight
    want = 0.25 * get_loss("logits", "jsd")(hidden @ weight.T, t_logits, mask=mask, normalizer=40, beta=0.7)
    got = 0.25 * chunked_kd(hidden, weight, t_logits, mask=mask, loss="jsd", normalizer=40, beta=0.7)
    scale = 0.25 * divergence_scale(hidden @ weight.T, t_logits, mask=mask) * int(mask.sum()) / 40
    assert_fp32_close(got, want, scale=scale, n=N_LOSS)
    dy = 0.25 * logit_grad_scale(hidden @ weight.T, t_logits, mask=mask, normalizer=40)
    scales = head_grad_scales(dy, hidden, weight)[:2]
    for g, w, scale in zip(
        torch.autograd.grad(got, [hidden, weight]), torch.autograd.grad(want, [hidden, weight]), scales
    ):
        assert_fp32_close(g, w, scale=scale, n=2 * N_LOSS)
    # (weight, bias) pair and a tensor normalizer (the gradient-accumulation count)
    want = get_loss("logits", "kl")(head(hidden), t_logits, mask=mask, normalizer=torch.tensor(30))
    pair = (head.weight, head.bias)
    got = chunked_kd(hidden, pair, t_logits, mask=mask, normalizer=torch.tensor(30), chunk_size=4)
    assert_fp32_close(got, want, scale=divergence_scale(head(hidden), t_logits, mask=mask) * int(mask.sum()) / 30)
    kw = {"mask": mask, "normalizer": 30}
    assert_close(grads(got, head, hidden), grads(want, head, hidden), "kl", head, hidden, t_logits, **kw)


def test_masked_and_garbage_positions_get_no_gradient_and_teacher_none():
    head, hidden, t_head, t_hidden, _, mask = make_inputs(seed=3)
    t_hidden = t_hidden.clone().requires_grad_()
    t_head.requires_grad_(True)
    loss = chunked_kd(hidden, head, teacher_hidden=t_hidden, teacher_head=t_head, mask=mask, chunk_size=4)
    loss.backward()
    assert hidden.grad[~mask].abs().sum() == 0 and hidden.grad[mask].abs().sum() > 0
    assert t_hidden.grad is None and t_head.weight.grad is None  # no gradient reaches the teacher


def test_identical_teacher_gives_zero_and_all_masked_gives_zero():
    head, hidden, _, _, _, mask = make_inputs(seed=4)
    for name in DIVERGENCES:
        loss = chunked_kd(hidden, head, teacher_hidden=hidden.detach(), teacher_head=head, loss=name)
        assert_fp32_close(loss, 0.0, scale=divergence_scale(head(hidden), head(hidden)), n=N_LOSS, msg=name)
    empty = torch.zeros_like(mask)
    loss = chunked_kd(hidden, head, torch.randn(B, T, V), mask=empty)
    assert loss.item() == 0.0
    assert all(g.abs().sum() == 0 for g in grads(loss, head, hidden))


def test_frozen_head_no_grad_mode_and_bf16_student():
    head, hidden, _, _, t_logits, mask = make_inputs(seed=5)
    head.requires_grad_(False)
    loss = chunked_kd(hidden, head, t_logits, mask=mask, chunk_size=5)
    (g,) = torch.autograd.grad(loss, [hidden])
    want = torch.autograd.grad(get_loss("logits", "kl")(head(hidden), t_logits, mask=mask), [hidden])[0]
    assert_fp32_close(g, want, n=2 * N_LOSS)
    with torch.no_grad():
        assert not chunked_kd(hidden, head, t_logits, mask=mask).requires_grad
    # a bf16 student: same rounding as the unchunked loss up to bf16 precision (its logits and gradients are bf16)
    head16 = nn.Linear(D, V).to(torch.bfloat16)
    h16 = hidden.detach().to(torch.bfloat16).requires_grad_()
    want = get_loss("logits", "kl")(head16(h16), t_logits, mask=mask, temperature=2.0)
    got = chunked_kd(h16, head16, t_logits, mask=mask, temperature=2.0, chunk_size=5)
    scale = divergence_scale(head16(h16), t_logits, temperature=2.0, mask=mask)
    assert_fp32_close(got, want, scale=scale, n=N_LOSS, dtype=torch.bfloat16)
    got_grads = grads(got, head16, h16)
    assert all(g.dtype == torch.bfloat16 for g in got_grads)
    kw = {"mask": mask, "temperature": 2.0}
    assert_close(got_grads, grads(want, head16, h16), "kl", head16, h16, t_logits, dtype=torch.bfloat16, **kw)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"teacher_logits": torch.randn(B, T, V + 1)}, f"Student vocabulary {V} and teacher 0's vocabulary {V + 1}"),
        ({"teacher_logits": torch.randn(B, T + 1, V)}, r"\(3, 7, 37\) does not match the tokens \(3, 6\)"),
        ({"teacher_logits": torch.randn(B, T, V), "chunk_size": 0}, "chunk_size must be >= 1, got 0"),
        ({"teacher_logits": torch.randn(B, T, V), "loss": "kld"}, r"choose one of \['jsd', 'kl'"),
        ({"teacher_logits": torch.randn(B, T, V), "mask": torch.ones(B, T + 1)}, "mask"),
        ({"teacher_hidden": torch.randn(B, T, DT), "teacher_head": nn.Linear(DT + 1, V)}, "hidden size 12 does not"),
        ({"teacher_hidden": torch.randn(B, T, DT), "teacher_head": nn.Linear(DT, V - 1)}, "teacher 0's vocabulary 36"),
    ],
)
def test_bad_inputs_raise_value_error(kwargs, message):
    head, hidden, *_ = make_inputs()
    with pytest.raises(ValueError, match=message):
        chunked_kd(hidden, head, **kwargs)


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def saved_bytes(fn) -> int:
    """Bytes of the distinct storages that autograd holds for the backward pass of ``fn()``'s result.

    Tensors saved by a graph that is already freed (the per-chunk graphs inside the chunked loss) don't count.
    """
    packed = weakref.WeakSet()

    def pack(t):
        packed.add(saved := _Saved(t))
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved.tensor):
        result = fn()  # noqa: F841 (keeps the graph alive while we count)
    storages = {s.tensor.untyped_storage().data_ptr(): s.tensor.untyped_storage().nbytes() for s in packed}
    return sum(storages.values())


@pytest.mark.parametrize("name", ["kl", "jsd"])
def test_saves_o_of_hidden_plus_head_not_tokens_times_vocab(name):
    b, t, d, v, chunk = 4, 64, 16, 1024, 64
    n = b * t
    head = nn.Linear(d, v)
    hidden = torch.randn(b, t, d, requires_grad=True)
    teacher = torch.randn(b, t, v)
    mask = torch.ones(b, t, dtype=torch.bool)
    naive = saved_bytes(lambda: get_loss("logits", name)(head(hidden), teacher, mask=mask))
    chunked = saved_bytes(lambda: chunked_kd(hidden, head, teacher, mask=mask, loss=name, chunk_size=chunk))
    assert naive >= 2 * n * v * 4  # several (N, V) float32 tensors
    # gradients for hidden (N, D), weight (V, D) and bias (V,), the token indices (N,), nothing of size N x V
    assert chunked <= 4 * (n * d + v * d + v) + 8 * n + 1024
    assert chunked * 20 < naive


# ---- vocabulary entries masked with -inf by both models (padded vocabulary rows, generation constraints) ----

MASKED = [3, 10, 11, 30]  # vocabulary entries whose logits are -inf for student and teacher alike
KEEP = torch.tensor([v not in MASKED for v in range(V)])


def masked_head_inputs(seed=6):
    """The student's head ``(weight (V, D), bias (V,))`` with bias -inf on ``MASKED``: its logits there are -inf, as
    a padded vocabulary row or a constraint gives. Also a teacher head ``(V, DT)`` masked the same way."""
    head, hidden, t_head, t_hidden, t_logits, mask = make_inputs(seed)
    weight = head.weight.detach().clone().requires_grad_()
    bias = head.bias.detach().clone()
    bias[MASKED] = -float("inf")
    bias.requires_grad_()
    t_weight, t_bias = t_head.weight.detach(), t_head.bias.detach().clone()
    t_bias[MASKED] = -float("inf")
    t_logits = t_logits.clone()
    t_logits[..., MASKED] = -float("inf")
    return weight, bias, hidden, (t_weight, t_bias), t_hidden, t_logits, mask


def assert_equal_to_sliced(got, want, weight, bias, hidden, sliced, name, teacher_logits, labels=None, **kw):
    """``got`` (full vocabulary, masked entries) and ``want`` (the masked entries sliced away, head ``sliced``) agree
    in value and gradients to float32 rounding; the gradients are finite and zero on the masked rows of the head.
    ``teacher_logits`` are the teacher's on the kept entries, ``labels`` the next-token targets of a fused loss (ids
    into the kept entries), ``kw`` the loss's mask and temperature."""
    assert torch.isfinite(got)
    head = nn.Linear(hidden.shape[-1], len(sliced[1]))
    with torch.no_grad():
        head.weight.copy_(sliced[0])
        head.bias.copy_(sliced[1])
        logits = head(hidden)
    scale = divergence_scale(logits, teacher_logits, temperature=kw["temperature"], mask=kw["mask"])
    if name == "mse" or labels is not None:  # nothing cancels in an MSE; a cross-entropy adds terms of its own size
        scale = max(scale, cross_entropy_scale(logits), abs(want.item()))
    assert_fp32_close(got, want, scale=scale, n=N_LOSS, msg="value")
    g_hidden, g_weight, g_bias = torch.autograd.grad(got, [hidden, weight, bias])
    w_hidden, w_weight, w_bias = torch.autograd.grad(want, [hidden, *sliced])
    for g in (g_hidden, g_weight, g_bias):
        assert torch.isfinite(g).all()
    assert (g_weight[~KEEP] == 0).all() and (g_bias[~KEEP] == 0).all()
    if labels is None:
        assert_close((g_hidden, g_weight[KEEP], g_bias[KEEP]), (w_hidden, w_weight, w_bias), name, head, hidden,
                     teacher_logits, temperature=kw["temperature"], mask=kw["mask"])  # fmt: skip
        return
    # a fused loss adds the cross-entropy's gradient (p_s - onehot) / N: its terms are at most 1 / N per entry
    dy = logit_grad_scale(logits, teacher_logits, temperature=kw["temperature"], mask=kw["mask"])
    dy = (
        dy
        + torch.nn.functional.one_hot(labels.clamp(min=0), logits.shape[-1]) * kw["mask"][..., None] / kw["mask"].sum()
    )
    for g, w, sc, what in zip((g_hidden, g_weight[KEEP], g_bias[KEEP]), (w_hidden, w_weight, w_bias),
                              head_grad_scales(dy.double(), hidden, head.weight), ("hidden", "weight", "bias")):  # fmt: skip
        assert_fp32_close(g, w, scale=sc, n=2 * N_LOSS, msg=what)


@pytest.mark.parametrize("name", [*DIVERGENCES, "mse"])
def test_chunked_kd_with_entries_both_models_mask(name):
    """They were nan in value and gradients for every loss but the forward KL."""
    weight, bias, hidden, _, _, t_logits, mask = masked_head_inputs()
    kw = {"mask": mask, "temperature": 2.0, "beta": 0.3, "loss": name}
    got = chunked_kd(hidden, (weight, bias), t_logits, chunk_size=5, **kw)
    sliced = (weight[KEEP].detach().requires_grad_(), bias[KEEP].detach().requires_grad_())
    want = chunked_kd(hidden, sliced, t_logits[..., KEEP], chunk_size=5, **kw)
    assert_equal_to_sliced(got, want, weight, bias, hidden, sliced, name, t_logits[..., KEEP], **kw)


@pytest.mark.parametrize("name", [*DIVERGENCES, "mse"])
def test_fused_causal_lm_loss_with_entries_both_models_mask(name):
    """The fused cross-entropy + KD loss (the closed form for kl, autograd for the others), the teacher's logits
    coming chunk by chunk from its masked head, equals the same loss on the vocabulary without the masked entries."""
    weight, bias, hidden, t_head, t_hidden, _, mask = masked_head_inputs(seed=7)
    g = torch.Generator().manual_seed(7)
    kept_ids = KEEP.nonzero().squeeze(1)
    new_ids = torch.randint(0, len(kept_ids), (B, T), generator=g)  # labels among the allowed tokens
    labels = kept_ids[new_ids].masked_fill(~mask, -100)
    kw = {"mask": mask, "alpha_task": 0.4, "alpha_logits": 0.6, "loss": name, "temperature": 2.0, "chunk_size": 4}
    got, _ = fused_causal_lm_loss(
        hidden, (weight, bias), labels=labels, teacher=TeacherTargets(hidden=[t_hidden], heads=[t_head]), **kw
    )
    sliced = (weight[KEEP].detach().requires_grad_(), bias[KEEP].detach().requires_grad_())
    teacher = TeacherTargets(hidden=[t_hidden], heads=[(t_head[0][KEEP], t_head[1][KEEP])])
    want, _ = fused_causal_lm_loss(hidden, sliced, labels=new_ids.masked_fill(~mask, -100), teacher=teacher, **kw)
    with torch.no_grad():
        t_logits = t_hidden @ t_head[0][KEEP].T + t_head[1][KEEP]
    assert_equal_to_sliced(got, want, weight, bias, hidden, sliced, name, t_logits, labels=new_ids, **kw)


# ---- labels outside the vocabulary ----


@pytest.mark.parametrize("loss, alpha_task", [("kl", 1.0), ("jsd", 1.0), ("kl", 0.0)])
@pytest.mark.parametrize("bad", [-1, V])
def test_fused_causal_lm_loss_refuses_labels_outside_the_vocabulary(loss, alpha_task, bad):
    """The closed form clamped a -1 label to token 0 and trained it as such; a label >= V was an IndexError."""
    head, hidden, _, _, t_logits, mask = make_inputs(seed=8)
    labels = torch.randint(0, V, (B, T)).masked_fill(~mask, -100)
    labels[0, 1] = labels[2, 0] = bad
    with pytest.raises(ValueError) as err:
        fused_causal_lm_loss(
            hidden,
            head,
            labels=labels,
            mask=labels != -100,
            teacher=TeacherTargets(logits=[t_logits]),
            alpha_task=alpha_task,
            alpha_logits=1.0,
            loss=loss,
            chunk_size=4,
        )
    assert str(err.value) == (
        f"label {bad} at 2 position(s) is outside [0, {V}) (vocab_size = {V}); a label must lie in that range, "
        "or be -100 (ignored)."
    )
