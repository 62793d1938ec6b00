"""Every loss pinned against a naive reference written from its definition."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import assert_fp32_close, cross_entropy_scale, divergence_scale

from hf_distill.losses import available_losses, get_loss, mix_teacher_logits, register_loss, task_loss
from hf_distill.losses.registry import _LOSSES

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

torch.manual_seed(0)


def probs(z, t):
    return [math.exp(v / t) / sum(math.exp(u / t) for u in z) for v in z]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ref_divergence(name, s_rows, t_rows, temperature, beta=0.5):
    """Mean over rows of the divergence, from scalar Python maths."""
    out = []
    for s, t in zip(s_rows, t_rows):
        ps, pt = probs(s, temperature), probs(t, temperature)
        if name == "kl":
            d = kl(pt, ps)
        elif name == "reverse_kl":
            d = kl(ps, pt)
        elif name == "jsd":
            m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
            d = beta * kl(pt, m) + (1 - beta) * kl(ps, m)
        elif name == "skew_kl":  # KL(p_t || beta p_t + (1 - beta) p_s)
            d = kl(pt, [beta * a + (1 - beta) * b for a, b in zip(pt, ps)])
        elif name == "skew_reverse_kl":  # KL(p_s || beta p_s + (1 - beta) p_t)
            d = kl(ps, [beta * b + (1 - beta) * a for a, b in zip(pt, ps)])
        out.append(d * temperature**2)
    return sum(out) / len(out)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"])
@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_divergences_match_reference(name, temperature):
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    got = get_loss("logits", name)(s, t, mask=mask, temperature=temperature, beta=0.3)
    rows = [(b, i) for b in range(2) for i in range(3) if mask[b, i]]
    want = ref_divergence(
        name, [s[b, i].tolist() for b, i in rows], [t[b, i].tolist() for b, i in rows], temperature, 0.3
    )
    # float32 against float64: the error of the float32 log-softmaxes and sums, sized by the terms they add up
    scale = divergence_scale(s[mask], t[mask], temperature=temperature)
    assert_fp32_close(got, want, scale=scale, n=7 + len(rows), msg=name)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "mse"])
def test_logit_losses_zero_for_identical_and_ignore_padding(name):
    z = torch.randn(2, 5, 11)
    # the divergence of identical distributions is a sum of terms that cancel (exactly, for the MSE)
    scale = 0.0 if name == "mse" else divergence_scale(z, z, temperature=2.0)
    assert_fp32_close(get_loss("logits", name)(z, z.clone(), temperature=2.0), 0.0, scale=scale, n=11 + 10, msg=name)
    s, t = torch.randn(2, 5, 11), torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 3:] = False
    s2, t2 = s.clone(), t.clone()
    s2[:, 3:] += 100.0  # garbage at padded positions changes nothing
    t2[:, 3:] -= 50.0
    fn = get_loss("logits", name)
    scale = fn(s, t, mask=mask).item() if name == "mse" else divergence_scale(s, t, mask=mask)
    assert_fp32_close(fn(s2, t2, mask=mask), fn(s, t, mask=mask), scale=scale, n=11 + 6, msg=name)


@pytest.mark.parametrize("name, plain", [("skew_kl", "kl"), ("skew_reverse_kl", "reverse_kl")])
def test_skew_kl_limits_and_beta_range(name, plain):
    s, t = torch.randn(3, 4, 9), torch.randn(3, 4, 9)
    fn = get_loss("logits", name)
    # beta = 0 is the plain KL; the skewed target only ever lowers the divergence (KL is convex in its 2nd argument)
    assert_fp32_close(
        fn(s, t, beta=0.0, temperature=2.0),
        get_loss("logits", plain)(s, t, temperature=2.0),
        scale=divergence_scale(s, t, temperature=2.0),
        n=9 + 12,
    )
    assert 0 < fn(s, t, beta=0.9).item() < fn(s, t, beta=0.1).item() < get_loss("logits", plain)(s, t).item()
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=rf"{name} skew beta must lie in \[0, 1\)"):
            fn(s, t, beta=bad)


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"])
def test_temperature_squared_scaling(name):
    """Softening at T is dividing the logits by T; the loss then carries the factor T^2 on top."""
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    fn = get_loss("logits", name)
    for temp in (2.0, 3.0):
        softened_at_one = fn(s / temp, t / temp, temperature=1.0)
        scale = divergence_scale(s, t, temperature=temp)
        assert_fp32_close(fn(s, t, temperature=temp), temp**2 * softened_at_one, scale=scale, n=9 + 4, msg=name)


def test_logits_mse_and_normalizer():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    want = sum(((s[i] - t[i]) ** 2).mean().item() for i in range(3)) / 3
    assert_fp32_close(get_loss("logits", "mse")(s, t), want, n=4 + 3)  # squares: the value is the scale
    # an explicit normalizer divides the sum instead of taking the mean
    assert_fp32_close(get_loss("logits", "mse")(s, t, normalizer=6), want * 3 / 6, n=4 + 3)


def test_gradient_reaches_student_only():
    s = torch.randn(2, 4, 6, requires_grad=True)
    t = torch.randn(2, 4, 6, requires_grad=True)
    for name in ("kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "mse"):
        s.grad = None
        get_loss("logits", name)(s, t.detach(), temperature=2.0).backward()
        assert s.grad is not None and s.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="logit KD needs the same"):
        get_loss("logits", "kl")(torch.randn(2, 5), torch.randn(2, 6))


def test_hidden_losses_match_reference():
    s, t = torch.randn(2, 4, 8), torch.randn(2, 4, 8)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    tokens = [(b, i) for b in range(2) for i in range(4) if mask[b, i]]
    mse = sum(((s[b, i] - t[b, i]) ** 2).mean().item() for b, i in tokens) / len(tokens)
    cos = sum(1 - (s[b, i] @ t[b, i] / (s[b, i].norm() * t[b, i].norm())).item() for b, i in tokens) / len(tokens)
    n = 8 + len(tokens)  # dot products over D, then the mean over tokens
    assert_fp32_close(get_loss("hidden", "mse")(s, t, mask=mask), mse, n=n)
    assert_fp32_close(get_loss("hidden", "cosine")(s, t, mask=mask), cos, scale=2.0, n=n)  # 1 - cos, |cos| <= 1
    for name, scale in (("mse", 0.0), ("cosine", 2.0)):
        assert_fp32_close(get_loss("hidden", name)(s, s.clone(), mask=mask), 0.0, scale=scale, n=n, msg=name)


def _attn(b, h, t):
    return torch.randn(b, h, t, t).softmax(-1)


def test_attention_map_losses_match_reference():
    s, t = _attn(2, 3, 5), _attn(2, 3, 5)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    rows = [(b, q) for b in range(2) for q in range(5) if mask[b, q]]
    mse = sum(((s[b, :, q] - t[b, :, q]) ** 2).sum(-1).mean().item() for b, q in rows) / len(rows)
    kls = []
    for b, q in rows:
        kls.append(sum(kl(t[b, h, q].tolist(), s[b, h, q].tolist()) for h in range(3)) / 3)
    n = 5 + 3 + len(rows)  # keys, heads, rows
    row_mask = mask[:, None, :].expand(2, 3, 5)
    assert_fp32_close(get_loss("attention", "mse")(s, t, mask=mask), mse, n=n)
    scale = divergence_scale(s.log(), t.log(), mask=row_mask)
    assert_fp32_close(get_loss("attention", "kl")(s, t, mask=mask), sum(kls) / len(kls), scale=scale, n=n)
    scale = divergence_scale(s.log(), s.log(), mask=row_mask)
    assert_fp32_close(get_loss("attention", "kl")(s, s.clone(), mask=mask), 0.0, scale=scale, n=n)


def test_relation_kd_matches_reference_and_needs_no_equal_widths():
    s, t = torch.randn(2, 5, 12), torch.randn(2, 5, 24)  # different widths, 3 relation heads
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]])
    heads = 3

    def rel(x, b, r):
        n = int(mask[b].sum())
        d = x.shape[-1] // heads
        xr = x[b, :n, r * d : (r + 1) * d]
        return ((xr @ xr.T) / math.sqrt(d)).softmax(-1)

    vals, rows_s, rows_t = [], [], []
    for b in range(2):
        for q in range(int(mask[b].sum())):
            vals.append(sum(kl(rel(t, b, r)[q].tolist(), rel(s, b, r)[q].tolist()) for r in range(heads)) / heads)
            rows_s += [rel(s, b, r)[q] for r in range(heads)]
            rows_t += [rel(t, b, r)[q] for r in range(heads)]
    got = get_loss("attention", "relation")(s, t, mask=mask, num_relation_heads=heads)
    # the relations' widths (8), keys (<= 5), heads and rows: the chains of additions behind the value
    n = 8 + 5 + heads + len(vals)
    scale = sum(divergence_scale(a.log(), b.log()) for a, b in zip(rows_s, rows_t)) / len(rows_s)
    assert_fp32_close(got, sum(vals) / len(vals), scale=scale, n=n)
    x = torch.randn(2, 5, 12)
    same = get_loss("attention", "relation")(x, x.clone(), mask=mask, num_relation_heads=heads)
    assert_fp32_close(same, 0.0, scale=4 * math.log(5), n=n)  # divergence_scale of p and p over 5 keys: 4 H(p)


@pytest.mark.parametrize("padded, length", [(True, 5), (False, 5), (False, 16)])
def test_relation_kd_gradient_matches_autograd_reference(padded, length):
    """The fused backward (softmax(z_s) - p_t) against autograd through the definition, padded keys excluded. Full
    rows of 16 tokens are one group that is the whole batch (computed without copies into group buffers)."""
    heads, d = 3, 4
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]]) if padded else torch.ones(2, length, dtype=torch.long)
    s = torch.randn(2, length, heads * d, requires_grad=True)
    t = torch.randn(2, length, 2 * heads * d)
    n = int(mask.sum())
    get_loss("attention", "relation")(s, t, mask=mask, normalizer=n, num_relation_heads=heads).backward()

    ref_s = s.detach().clone().requires_grad_(True)
    total = 0.0
    for b in range(2):
        k = int(mask[b].sum())
        for r in range(heads):
            xs = ref_s[b, :k, r * d : (r + 1) * d]
            xt = t[b, :k, r * 2 * d : (r + 1) * 2 * d]
            log_s = (xs @ xs.T / math.sqrt(d)).log_softmax(-1)
            p_t = (xt @ xt.T / math.sqrt(2 * d)).softmax(-1)
            total = total + (p_t * (p_t.log() - log_s)).sum() / heads
    (total / n).backward()
    assert_fp32_close(s.grad, ref_s.grad, n=2 * (2 * d + length) + heads + n)  # forward and backward chains
    if padded:  # padded positions get no gradient
        assert s.grad[1, 3:].abs().max() == 0


def test_task_losses():
    logits = torch.randn(4, 3)
    labels = torch.tensor([0, 2, -100, 1])
    want = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100)
    scale = cross_entropy_scale(logits)
    assert_fp32_close(task_loss(logits, labels, task="sequence_classification"), want, scale=scale, n=3 + 4)
    reg = torch.randn(4, 1)
    target = torch.randn(4)
    want = ((reg.squeeze(-1) - target) ** 2).mean()
    assert_fp32_close(task_loss(reg, target, task="sequence_classification"), want, n=4)
    lm_logits = torch.randn(2, 5, 7)  # already aligned: positions 0..4 of a 6-token sequence
    lm_labels = torch.tensor([[-100, 1, 2, 3, -100, -100], [-100, -100, 4, 5, 6, 0]])
    want = torch.nn.functional.cross_entropy(lm_logits.reshape(-1, 7), lm_labels[:, 1:].reshape(-1), ignore_index=-100)
    scale = cross_entropy_scale(lm_logits)
    assert_fp32_close(task_loss(lm_logits, lm_labels, task="causal_lm"), want, scale=scale, n=7 + 10)


def test_mixing_teachers_averages_distributions():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    mixed = mix_teacher_logits([a, b], [3.0, 1.0], temperature=2.0, loss="kl")
    want = 0.75 * (a / 2).softmax(-1) + 0.25 * (b / 2).softmax(-1)
    assert_fp32_close((mixed / 2).softmax(-1), want, n=5 + 2)  # softmaxes over 5, a mixture of 2
    assert_fp32_close(mix_teacher_logits([a, b], [1.0, 1.0], 2.0, "mse"), (a + b) / 2, n=2)
    assert mix_teacher_logits([a], [1.0], 2.0, "kl") is a


def test_registry_rejects_duplicates_and_lists_names():
    with pytest.raises(ValueError, match="already registered"):
        register_loss("logits", "kl")(lambda *a, **k: 0)
    with pytest.raises(
        ValueError, match=r"choose one of \['jsd', 'kl', 'mse', 'reverse_kl', 'skew_kl', 'skew_reverse_kl'\]"
    ):
        get_loss("logits", "nope")
    with pytest.raises(ValueError, match="Unknown loss kind"):
        register_loss("nope", "x")

    @register_loss("hidden", "l1_for_test")
    def l1(s, t, **_):
        return (s - t).abs().mean()

    try:
        assert "l1_for_test" in available_losses("hidden")
    finally:
        del _LOSSES[("hidden", "l1_for_test")]


def test_registry_entries_declare_what_they_read_and_callers_follow_it():
    from hf_distill.losses import loss_needs, teacher_topk, topk_token_kd

    assert loss_needs("logits", "kl") == ("logits", "topk") and loss_needs("logits", "mse") == ("logits",)
    assert loss_needs("hidden", "cosine") == ("hidden",)
    assert loss_needs("attention", "kl") == ("attention",) and loss_needs("attention", "relation") == ("qkv",)
    with pytest.raises(ValueError, match=r"needs=\('probs',\) for loss 'x': give one or more of \['logits', 'topk'"):
        register_loss("logits", "x", needs="probs")
    with pytest.raises(ValueError, match="Unknown logits loss 'nope'"):
        loss_needs("logits", "nope")

    # a loss of one's own on raw logits: refused on a top-k cache, fed averaged logits by several teachers (as mse)
    @register_loss("logits", "abs_for_test", needs="logits")
    def abs_logits(s, t, *, normalizer=None, **_):
        return (s.float() - t.float()).abs().sum() / (normalizer or 1)

    g = torch.Generator().manual_seed(0)
    s, t1, t2 = (torch.randn(3, 5, generator=g) for _ in range(3))
    try:
        with pytest.raises(ValueError, match=r"loss='abs_for_test' compares raw logits.*\(jsd, kl, reverse_kl"):
            topk_token_kd(s, *teacher_topk(t1, 2), loss="abs_for_test")
        assert torch.equal(mix_teacher_logits([t1, t2], [3.0, 1.0], 2.0, "abs_for_test"), 0.75 * t1 + 0.25 * t2)
        assert not torch.allclose(mix_teacher_logits([t1, t2], [3.0, 1.0], 2.0, "kl"), 0.75 * t1 + 0.25 * t2)
    finally:
        del _LOSSES[("logits", "abs_for_test")]


def test_attention_mse_does_not_depend_on_padding_length():
    a, b = _attn(1, 2, 4), _attn(1, 2, 4)
    pad = torch.zeros(1, 2, 8, 8)
    pa, pb = pad.clone(), pad.clone()
    pa[..., :4, :4], pb[..., :4, :4] = a, b
    short = get_loss("attention", "mse")(a, b, mask=torch.ones(1, 4))
    long = get_loss("attention", "mse")(pa, pb, mask=torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0]]))
    assert_fp32_close(short, long, n=8 + 2 + 4)  # squares summed over keys, heads, rows


def test_fused_qkv_widths_follow_grouped_query_attention():
    from transformers import Phi3Config

    from hf_distill.models import qkv_widths

    assert qkv_widths(Phi3Config(hidden_size=32, num_attention_heads=4, num_key_value_heads=2)) == [32, 16, 16]


def test_matched_terms_weight_each_pair_and_pick_their_layers():
    from transformers import LlamaConfig

    from hf_distill.losses import attention_term, default_relation_heads, hidden_term
    from hf_distill.mapping import LayerMatch

    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    teacher = [torch.randn(2, 4, 6, generator=g) for _ in range(5)]  # embeddings + 4 blocks
    student = [torch.randn(2, 4, 6, generator=g) for _ in range(2)]  # projected, one per hidden match
    matches = [
        LayerMatch(1, 2, "hidden", "mse", 0.25),
        LayerMatch(1, 2, "attention", "relation", 0.5),
        LayerMatch(2, 4, "hidden", "cosine", 0.75),
    ]
    mse, cos = get_loss("hidden", "mse"), get_loss("hidden", "cosine")
    want = 0.25 * mse(student[0], teacher[2], mask=mask) + 0.75 * cos(student[1], teacher[4], mask=mask)
    assert_fp32_close(hidden_term(matches, student, teacher, mask=mask), want, n=2)  # the same two terms, summed
    qkv_s = {1: [torch.randn(2, 4, 6, generator=g) for _ in range(3)]}
    qkv_t = {2: [torch.randn(2, 4, 12, generator=g) for _ in range(3)]}
    rel = get_loss("attention", "relation")
    want = 0.5 * sum(rel(s, t, mask=mask, num_relation_heads=3) for s, t in zip(qkv_s[1], qkv_t[2])) / 3
    got = attention_term(matches, student_qkv=qkv_s, teacher_qkv=qkv_t, mask=mask, relation_heads=3)
    assert_fp32_close(got, want, n=3)  # the same three relation terms, summed
    # 6 heads of 64 (K/V: 2 heads, 128 wide) and 4 heads of 48 (K/V 1 head, 48): gcd of 384, 128, 192, 48
    small = LlamaConfig(hidden_size=384, num_attention_heads=6, num_key_value_heads=2)
    tiny = LlamaConfig(hidden_size=192, num_attention_heads=4, num_key_value_heads=1)
    assert default_relation_heads(small, tiny) == 16
    assert default_relation_heads(tiny, tiny) == 4  # the student's head count divides every width


# ---- vocabulary entries that both models mask with -inf ----

LOGIT_LOSSES = ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl", "mse"]


def masked_logits(rows=6, vocab=13, seed=0):
    """Student and teacher logits ``(rows, V)`` with the same entries set to -inf on both sides (a different set in
    each row, as generation constraints give), and the boolean ``(rows, V)`` of those entries."""
    g = torch.Generator().manual_seed(seed)
    s, t = torch.randn(rows, vocab, generator=g), 2 * torch.randn(rows, vocab, generator=g)
    masked = torch.rand(rows, vocab, generator=g) < 0.4
    masked[:, :2] = False  # every row keeps some entries
    masked[0, 2:] = True  # ... and one keeps only two
    s[masked] = -math.inf
    t[masked] = -math.inf
    return s, t, masked


def without_masked_entries(fn, s, t, masked, **kw):
    """Reference: ``fn`` on each row with its masked entries sliced away, averaged over rows; and its gradient,
    scattered back (0 at the masked entries)."""
    values, grad = [], torch.zeros_like(s)
    for i in range(s.shape[0]):
        keep = ~masked[i]
        row = s[i, keep][None].clone().requires_grad_()
        value = fn(row, t[i, keep][None], **kw)
        value.backward()
        values.append(value.detach())
        grad[i, keep] = row.grad[0] / s.shape[0]
    return torch.stack(values).mean(), grad


@pytest.mark.parametrize("name", LOGIT_LOSSES)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_entries_masked_by_both_models_count_as_absent(name, temperature):
    """0 * log(0 / 0) = 0: the loss equals the loss on the vocabulary without those entries, gradients included
    (they were nan for every divergence and mse)."""
    s, t, masked = masked_logits()
    fn, kw = get_loss("logits", name), {"temperature": temperature, "beta": 0.3}
    want, want_grad = without_masked_entries(fn, s, t, masked, **kw)
    student = s.clone().requires_grad_()
    got = fn(student, t, **kw)
    got.backward()
    assert torch.isfinite(got) and torch.isfinite(student.grad).all()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(student.grad, want_grad)
    assert (student.grad[masked] == 0).all()


def test_an_entry_only_the_student_masks_stays_infinite_in_forward_kl():
    """The convention covers entries both sides mask; a token the teacher allows and the student forbids is a true
    infinity of KL(p_t || p_s), not hidden."""
    s, t = torch.randn(1, 5), torch.randn(1, 5)
    s[0, 2] = -math.inf
    assert get_loss("logits", "kl")(s, t).item() == math.inf


@pytest.mark.parametrize("name", ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"])
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_topk_with_masked_entries_among_the_k(name, tail):
    """k larger than the allowed tokens: the teacher's top-k holds masked ids (log-prob -inf) where the student's
    logits are -inf too; the loss equals the top-k loss on the vocabulary without them, with finite gradients."""
    from hf_distill.losses import teacher_topk, topk_token_kd

    s, t, masked = masked_logits(rows=1, vocab=13, seed=1)
    keep = ~masked[0]
    kw = {"loss": name, "temperature": 2.0, "beta": 0.3, "tail": tail}
    student = s.clone().requires_grad_()
    got = topk_token_kd(student, *teacher_topk(t, k=12, temperature=2.0), **kw)  # k = 12 > the allowed entries
    got.backward()
    sliced = s[:, keep].clone().requires_grad_()
    want = topk_token_kd(sliced, *teacher_topk(t[:, keep], k=int(keep.sum()), temperature=2.0), **kw)
    want.backward()
    assert torch.isfinite(got) and torch.isfinite(student.grad).all()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(student.grad[:, keep], sliced.grad)
    assert (student.grad[masked] == 0).all()


def test_mixing_teachers_keeps_masked_entries_masked_and_skips_zero_weights():
    a, b = torch.randn(2, 6), torch.randn(2, 6)
    a[:, 4] = b[:, 4] = -math.inf
    for loss in ("kl", "mse"):
        mixed = mix_teacher_logits([a, b], [1.0, 0.0], temperature=2.0, loss=loss)
        assert torch.isneginf(mixed[:, 4]).all() and torch.isfinite(mixed[:, :4]).all()
    torch.testing.assert_close(mix_teacher_logits([a, b], [1.0, 0.0], 2.0, "mse"), a)


# ---- labels outside the label set ----


@pytest.mark.parametrize(
    "task, logits, labels, message",
    [
        (
            "sequence_classification",
            torch.randn(4, 3),
            torch.tensor([0, -1, -100, -1]),
            "label -1 at 2 position(s) is outside [0, 3) (num_labels = 3)",
        ),
        (
            "sequence_classification",
            torch.randn(4, 3),
            torch.tensor([0, 3, 1, 2]),
            "label 3 at 1 position(s) is outside [0, 3) (num_labels = 3)",
        ),
        (
            "token_classification",
            torch.randn(2, 3, 5),
            torch.tensor([[0, -100, 7], [1, 2, -100]]),
            "label 7 at 1 position(s) is outside [0, 5) (num_labels = 5)",
        ),
        (
            "causal_lm",
            torch.randn(2, 3, 7),  # aligned: positions 0..2 of 4-token rows
            torch.tensor([[5, 1, -1, 2], [-100, 3, 4, -100]]),
            "label -1 at 1 position(s) is outside [0, 7) (vocab_size = 7)",
        ),
    ],
)
def test_task_loss_refuses_labels_outside_the_label_set(task, logits, labels, message):
    """A label other than -100 below 0 or at/past the class count is one clear line, not an IndexError of
    cross_entropy (or a device-side assert on a GPU)."""
    with pytest.raises(ValueError) as err:
        task_loss(logits, labels, task=task)
    assert str(err.value) == message + "; a label must lie in that range, or be -100 (ignored)."


@pytest.mark.parametrize("one_example_chunks", [False, True])
@pytest.mark.parametrize("length, rows", [(5, [4, 3]), (16, [16, 16]), (20, [20, 3])])
def test_relation_kd_from_relations_computed_ahead_equals_it_from_the_teachers_states(
    length, rows, one_example_chunks, monkeypatch
):
    """A RelationTarget (the teacher's relations computed once, as an encoder cache stores them) gives the loss and
    the student's gradient of the teacher's Q/K/V: groups padded past the batch (5 -> 16), one whole group (16), two
    groups (20 and 3); each group at once or one example at a time."""
    import hf_distill.losses.attention as attention
    from hf_distill.losses.attention import relation_target

    if one_example_chunks:
        monkeypatch.setattr(attention, "_CHUNK_ELEMENTS", 1)

    heads, d = 3, 4
    mask = (torch.arange(length)[None] < torch.tensor(rows)[:, None]).long()
    s = torch.randn(2, length, heads * d, requires_grad=True)
    t = torch.randn(2, length, 2 * heads * d)
    n = int(mask.sum())
    relation = get_loss("attention", "relation")
    want = relation(s, t, mask=mask, normalizer=n, num_relation_heads=heads)
    (want_grad,) = torch.autograd.grad(want, s)
    target = relation_target(t, mask, heads)
    got = relation(s, target, mask=mask, normalizer=n, num_relation_heads=heads)
    (got_grad,) = torch.autograd.grad(got, s)
    assert_fp32_close(got, want, scale=4 * math.log(length), n=2 * d + length)
    assert_fp32_close(got_grad, want_grad, n=2 * (2 * d + length) + heads + n)
    # the stored distributions: rows sum to 1 over real keys, zero at padded keys and queries
    probs = target.probs
    assert probs.shape == (2, heads, length, length)
    assert_fp32_close(probs[1, :, : rows[1]].sum(-1), torch.ones(heads, rows[1]), n=length)
    assert probs[1, :, :, rows[1] :].abs().sum() == 0 and probs[1, :, rows[1] :].abs().sum() == 0
    with pytest.raises(ValueError, match="3 heads but num_relation_heads is 1"):
        relation(s, target, mask=mask, num_relation_heads=1)
    if rows[1] < length:
        with pytest.raises(ValueError, match="right-padded"):
            relation(s, target, mask=mask.flip(1), num_relation_heads=heads)
