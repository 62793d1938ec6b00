"""Cross-tokenizer losses (issue 19), pinned against references written from their definitions in plain loops
(docs/losses.md, "Cross-tokenizer losses"): the exact part on the shared vocabulary plus a rest bucket, ULD on
sorted probabilities, the chain-rule merge of a teacher's tokens, and their mix normalised by ``num_items``.

Small vocabularies (student 7, teacher 11) with random logits; the references run in float64 on Python numbers.
"""

from __future__ import annotations

import math

import pytest
import torch
from numerics import assert_fp32_close

from hf_distill.cross_tokenizer.align import aligned_positions, chain_rule_rows
from hf_distill.losses.cross_tokenizer import (
    ChainTargets,
    CrossTokenizerMix,
    chain_rule_divergence,
    cross_tokenizer_loss,
    shared_log_probs,
    shared_vocab_divergence,
    span_logprobs,
    uld_loss,
)
from hf_distill.losses.registry import get_loss

pytestmark = pytest.mark.numerics

DIVERGENCES = ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]
V_S, V_T, G = 7, 11, 5
STUDENT_IDS = torch.tensor([4, 0, 6, 2])  # shared tokens, paired by index with TEACHER_IDS
TEACHER_IDS = torch.tensor([1, 9, 3, 10])


def logits(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2


# ----------------------------------------------------------------------------------------------- references


def ref_softmax(row, temperature):
    """``softmax(row / T)`` as a list of float64 scalars (differentiable when ``row`` is)."""
    exps = [torch.exp(z / temperature) for z in row]
    total = sum(exps)
    return [e / total for e in exps]


def ref_bucket(row, ids, temperature):
    """The shared tokens' probabilities, then the sum of every other token's: ``N + 1`` outcomes."""
    probs = ref_softmax(row, temperature)
    shared = [probs[i] for i in ids]
    rest = sum(p for i, p in enumerate(probs) if i not in set(ids))
    return [*shared, rest]


def ref_kl(p, q):
    return sum(pi * torch.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def ref_divergence(name, pt, ps, beta):
    """The registry's divergences from their definitions (hf_distill/losses/logits.py), on lists of probabilities."""
    if name == "kl":
        return ref_kl(pt, ps)
    if name == "reverse_kl":
        return ref_kl(ps, pt)
    if name == "jsd":
        m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
        return beta * ref_kl(pt, m) + (1 - beta) * ref_kl(ps, m)
    if name == "skew_kl":
        return ref_kl(pt, [beta * a + (1 - beta) * b for a, b in zip(pt, ps)])
    return ref_kl(ps, [beta * b + (1 - beta) * a for a, b in zip(pt, ps)])  # skew_reverse_kl


def ref_exact(name, s, t, s_ids, t_ids, temperature, beta, normalizer):
    total = sum(
        ref_divergence(name, ref_bucket(t_row, t_ids, temperature), ref_bucket(s_row, s_ids, temperature), beta)
        for s_row, t_row in zip(s, t)
    )
    return total * temperature**2 / normalizer


def ref_uld(s, t, temperature, top_k, normalizer):
    """Sort each side's probabilities (Python's ``sorted``), pad the shorter with zeros, add the absolute differences
    of the first ``top_k``."""
    total = 0.0
    for s_row, t_row in zip(s, t):
        ps = sorted(ref_softmax(s_row, temperature), key=lambda p: float(p.detach()), reverse=True)
        pt = sorted(ref_softmax(t_row, temperature), key=lambda p: float(p.detach()), reverse=True)
        width = max(len(ps), len(pt))
        ps, pt = ps + [0.0] * (width - len(ps)), pt + [0.0] * (width - len(pt))
        total = total + sum(abs(a - b) for a, b in list(zip(ps, pt))[:top_k])
    return total / normalizer


def ref_log_prob(row, token, temperature):
    """``log softmax(row / T)[token]`` in Python floats."""
    return float(row[token]) / temperature - math.log(sum(math.exp(float(z) / temperature) for z in row))


def ref_scale(s, t, s_ids, t_ids, temperature):
    """The size of the terms the exact part sums, ``T^2 mean_g sum (P_s + P_t)(|log P_s| + |log P_t|)`` (as
    ``numerics.divergence_scale``, on the ``N + 1`` outcomes)."""
    rows = []
    for s_row, t_row in zip(s, t):
        ps, pt = ref_bucket(s_row, s_ids, temperature), ref_bucket(t_row, t_ids, temperature)
        pairs = [(float(a), float(b)) for a, b in zip(ps, pt) if float(a) + float(b) > 0]  # an empty bucket adds 0
        rows.append(sum((a + b) * (abs(math.log(a)) + abs(math.log(b))) for a, b in pairs))
    return temperature**2 * sum(rows) / len(rows)


# ----------------------------------------------------------------------------------------------- the exact part


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_bucket_distribution_sums_to_one_and_matches_the_reference(temperature):
    z = logits(0, G, V_T)
    got = shared_log_probs(z, TEACHER_IDS, temperature)
    assert got.shape == (G, len(TEACHER_IDS) + 1)
    assert_fp32_close(got.exp().sum(-1), torch.ones(G), n=V_T, msg="sum")
    want = torch.tensor(
        [[math.log(float(p)) for p in ref_bucket(row, TEACHER_IDS.tolist(), temperature)] for row in z]
    )
    assert_fp32_close(got, want, scale=z.abs().max().item() / temperature + math.log(V_T), n=V_T, msg="log P")


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_exact_part_value_and_gradient_match_the_reference(name, temperature):
    s, t = logits(1, G, V_S).requires_grad_(), logits(2, G, V_T)
    got = shared_vocab_divergence(s, t, STUDENT_IDS, TEACHER_IDS, loss=name, temperature=temperature, beta=0.3)
    (grad,) = torch.autograd.grad(got, s)
    s_ref = s.detach().clone().requires_grad_()
    args = (STUDENT_IDS.tolist(), TEACHER_IDS.tolist(), temperature, 0.3, G)
    want = ref_exact(name, s_ref, t, *args)
    (want_grad,) = torch.autograd.grad(want, s_ref)
    scale = ref_scale(s.detach(), t, STUDENT_IDS.tolist(), TEACHER_IDS.tolist(), temperature)
    n = V_T + len(STUDENT_IDS) + 1 + G
    assert_fp32_close(got, want, scale=scale, n=n, msg=f"{name} value")
    # the gradient's terms are those of the value times 1 / T, per group (the mean divides by G)
    assert_fp32_close(grad, want_grad, scale=scale / temperature / G, n=n, msg=f"{name} gradient")


@pytest.mark.parametrize("name", DIVERGENCES)
def test_exact_part_is_zero_for_identical_vocabularies_and_logits(name):
    """Every token shared (the rest bucket empty on both sides), the student's vocabulary a permutation of the
    teacher's: zero, with a zero (not NaN) gradient."""
    perm = torch.randperm(V_S, generator=torch.Generator().manual_seed(3))
    t = logits(4, G, V_S)
    s = t[:, perm].clone().requires_grad_()  # student token i is teacher token perm[i]
    value = shared_vocab_divergence(s, t, torch.arange(V_S), perm, loss=name, temperature=2.0)
    (grad,) = torch.autograd.grad(value, s)
    scale = ref_scale(t, t, list(range(V_S)), list(range(V_S)), 2.0)
    assert_fp32_close(value, 0.0, scale=scale, n=V_S + G, msg=name)
    assert_fp32_close(grad, torch.zeros_like(grad), scale=scale / 2.0 / G, n=V_S + G, msg=f"{name} gradient")


@pytest.mark.parametrize("name", DIVERGENCES)
def test_exact_part_over_a_whole_shared_vocabulary_is_the_same_vocabulary_loss(name):
    """With every token shared and the same order, the ``N + 1`` outcomes are the vocabulary and an empty bucket:
    the loss is losses/logits.py's registered divergence."""
    s, t = logits(5, G, V_S), logits(6, G, V_S)
    got = shared_vocab_divergence(s, t, torch.arange(V_S), torch.arange(V_S), loss=name, temperature=2.0, beta=0.3)
    want = get_loss("logits", name)(s.float(), t.float(), temperature=2.0, beta=0.3)
    scale = ref_scale(s, t, list(range(V_S)), list(range(V_S)), 2.0)
    assert_fp32_close(got, want, scale=scale, n=2 * V_S + G, msg=name)


def test_exact_part_is_finite_when_one_side_shares_every_token():
    """The teacher's rest bucket is empty, the student's is not: reverse KL would be infinite without the floor."""
    s, t = logits(7, G, V_T).requires_grad_(), logits(8, G, V_S)
    value = shared_vocab_divergence(s, t, torch.arange(3, 3 + V_S), torch.arange(V_S), loss="reverse_kl")
    value.backward()
    assert torch.isfinite(value) and value > 0 and torch.isfinite(s.grad).all()


def test_exact_part_with_masked_logits_has_finite_gradients():
    """A student that masks every token outside the shared ones with -inf (a constrained vocabulary): its rest bucket
    is empty, the value is the one of the unmasked tokens, the gradients finite."""
    s, t = logits(26, G, V_S), logits(27, G, V_T)
    masked = s.clone()
    masked[:, [1, 3, 5]] = -math.inf  # the tokens STUDENT_IDS leaves out
    masked.requires_grad_()
    value = shared_vocab_divergence(masked, t, STUDENT_IDS, TEACHER_IDS, loss="jsd")
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(masked.grad).all()
    assert masked.grad[:, [1, 3, 5]].eq(0).all()


# ----------------------------------------------------------------------------------------------- ULD


def probs_logits(*rows):
    return torch.tensor(rows, dtype=torch.float64).log()


def test_uld_equals_the_hand_computed_value():
    # sorted: student (.5, .3, .2), teacher (.6, .3, .1): |.5 - .6| + |.3 - .3| + |.2 - .1| = 0.2
    s, t = probs_logits([0.2, 0.5, 0.3]), probs_logits([0.1, 0.6, 0.3])
    assert_fp32_close(uld_loss(s, t), 0.2, scale=1.0, n=3, msg="same size")
    # a 4-token teacher (.4, .3, .2, .1) against the student padded with a 0: .1 + 0 + 0 + .1 = 0.2
    t4 = probs_logits([0.1, 0.3, 0.4, 0.2])
    assert_fp32_close(uld_loss(s, t4), 0.2, scale=1.0, n=4, msg="padded")
    assert_fp32_close(uld_loss(t4, s), 0.2, scale=1.0, n=4, msg="padded teacher")


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_uld_value_and_gradient_match_the_reference_and_ignore_token_order(temperature):
    s, t = logits(9, G, V_S).requires_grad_(), logits(10, G, V_T)
    got = uld_loss(s, t, temperature=temperature, top_k=None)
    (grad,) = torch.autograd.grad(got, s)
    s_ref = s.detach().clone().requires_grad_()
    want = ref_uld(s_ref, t, temperature, None, G)
    (want_grad,) = torch.autograd.grad(want, s_ref)
    assert_fp32_close(got, want, scale=2.0, n=V_T + G, msg="value")  # a sum of |differences| of probabilities
    assert_fp32_close(grad, want_grad, scale=2.0 / temperature / G, n=V_T + G, msg="gradient")
    perm_s = torch.randperm(V_S, generator=torch.Generator().manual_seed(11))
    perm_t = torch.randperm(V_T, generator=torch.Generator().manual_seed(12))
    permuted = uld_loss(s.detach()[:, perm_s], t[:, perm_t], temperature=temperature, top_k=None)
    assert_fp32_close(permuted, got, scale=2.0, n=V_T + G, msg="permuted")


def test_top_k_uld_is_the_full_uld_when_k_covers_both_vocabularies_and_else_its_first_k_entries():
    s, t = logits(13, G, V_S), logits(14, G, V_T)
    full = uld_loss(s, t, top_k=None)
    for k in (V_T, V_T + 5, 1024):
        assert_fp32_close(uld_loss(s, t, top_k=k), full, scale=2.0, n=V_T + G, msg=f"k={k}")
    for k in (1, 3, V_S, V_S + 2):  # k between the vocabularies: the student's entries after V_S are zeros
        assert_fp32_close(uld_loss(s, t, top_k=k), ref_uld(s, t, 1.0, k, G), scale=2.0, n=V_T + G, msg=f"k={k}")
    assert uld_loss(s, t, top_k=3) < full


# ----------------------------------------------------------------------------------------------- chain rule


def hand_spans():
    """``"abcdef"``: teacher ``<bos> ab c d ef``, student ``<bos> ab cd e f``. Groups: ``ab|ab`` (one-to-one),
    ``c d|cd`` (one-to-many), ``ef|e f`` (many-to-one)."""
    teacher = [(0, 0), (0, 2), (2, 3), (3, 4), (4, 6)]
    student = [(0, 0), (0, 2), (2, 4), (4, 5), (5, 6)]
    return teacher, student


def test_chain_rule_rows_follow_the_groups_of_one_student_token():
    teacher, student = hand_spans()
    aligned = aligned_positions([teacher], [student])
    assert aligned.teacher.tolist() == [0, 1, 3] and aligned.teacher_tokens.tolist() == [1, 2, 1]
    assert aligned.student.tolist() == [0, 1, 2] and aligned.student_tokens.tolist() == [1, 1, 2]
    t_ids, s_ids = torch.tensor([[2, 20, 30, 31, 40]]), torch.tensor([[1, 10, 11, 12, 13]])
    rows = chain_rule_rows(aligned, t_ids, s_ids)
    assert rows.groups.tolist() == [0, 1] and rows.counts.tolist() == [1, 2]  # the many-to-one group has none
    assert rows.batch.tolist() == [0, 0, 0] and rows.positions.tolist() == [0, 1, 2]
    assert rows.tokens.tolist() == [20, 30, 31]  # "ab", then "c" and "d"
    assert rows.student_tokens.tolist() == [10, 11]  # "ab", "cd"


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chain_rule_on_a_two_token_group_is_log_p_t1_plus_log_p_t2_given_t1(temperature):
    teacher, student = hand_spans()
    aligned = aligned_positions([teacher], [student])
    t_ids, s_ids = torch.tensor([[2, 7, 3, 8, 5]]), torch.tensor([[1, 4, 6, 2, 0]])
    rows = chain_rule_rows(aligned, t_ids, s_ids)
    t_logits = logits(15, 1, 5, V_T)  # (B, T_t, V_t)
    got = span_logprobs(t_logits[rows.batch, rows.positions], rows.tokens, rows.counts, temperature)
    pos = t_logits[0]
    p_ab = ref_log_prob(pos[0], 7, temperature)  # position 0 (<bos>) predicts "ab"
    p_c_then_d = ref_log_prob(pos[1], 3, temperature) + ref_log_prob(pos[2], 8, temperature)  # p(c) p(d | c)
    assert_fp32_close(got, torch.tensor([p_ab, p_c_then_d]), scale=2 * (pos.abs().max().item() + 3), n=V_T)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_chain_rule_divergence_is_the_divergence_of_the_token_and_the_rest(name):
    s = logits(16, 3, V_S).requires_grad_()
    tokens, target = torch.tensor([2, 5, 0]), torch.tensor([-0.3, -2.0, -7.5], dtype=torch.float64)
    got = chain_rule_divergence(s, tokens, target, loss=name, temperature=2.0, beta=0.3)
    (grad,) = torch.autograd.grad(got, s)
    s_ref = s.detach().clone().requires_grad_()
    want = 0.0
    for row, y, log_q in zip(s_ref, tokens.tolist(), target):
        p = ref_softmax(row, 2.0)[y]
        want = want + ref_divergence(name, [log_q.exp(), 1 - log_q.exp()], [p, 1 - p], 0.3)
    want = want * 4.0 / 3
    (want_grad,) = torch.autograd.grad(want, s_ref)
    assert_fp32_close(got, want, scale=4 * 2 * (7.5 + 3), n=V_S + 3, msg=f"{name} value")
    assert_fp32_close(grad, want_grad, scale=2 * 2 * (7.5 + 3) / 3, n=V_S + 3, msg=f"{name} gradient")
    # the teacher's own probability of the student's token as target: zero
    exact = torch.log_softmax(s.detach() / 2.0, -1).gather(-1, tokens[:, None]).squeeze(-1)
    zero = chain_rule_divergence(s.detach(), tokens, exact, loss=name, temperature=2.0, beta=0.3)
    assert_fp32_close(zero, 0.0, scale=4 * 2 * (exact.abs().max().item() + 3), n=V_S + 3, msg=f"{name} zero")


# ----------------------------------------------------------------------------------------------- the mix


def mixed(s, t, chain, num_items, mix):
    return cross_tokenizer_loss(
        s, t, (STUDENT_IDS, TEACHER_IDS), num_items=num_items, mix=mix, loss="jsd", temperature=2.0, chain=chain
    )


def test_the_mix_sums_over_groups_divided_by_num_items():
    s, t = logits(17, 6, V_S), logits(18, 6, V_T)
    mix = CrossTokenizerMix(exact=1.0, uld=0.5, chain=0.25)
    tokens, targets = torch.tensor([3, 1, 6]), torch.tensor([-0.5, -2.25, -4.0])
    whole, terms = mixed(s, t, ChainTargets(torch.tensor([0, 2, 5]), tokens, targets), 10, mix)
    assert sorted(terms) == ["chain", "exact", "uld"]
    assert_fp32_close(whole, terms["exact"] + 0.5 * terms["uld"] + 0.25 * terms["chain"], n=3, msg="total")
    # each part is its own function's sum over groups (normalizer 1) divided by num_items
    exact_sum = shared_vocab_divergence(s, t, STUDENT_IDS, TEACHER_IDS, loss="jsd", temperature=2.0, normalizer=1)
    assert_fp32_close(terms["exact"], exact_sum / 10, n=V_T + 6, msg="exact")
    assert_fp32_close(terms["uld"], uld_loss(s, t, temperature=2.0, normalizer=1) / 10, n=V_T + 6, msg="uld")
    chain_sum = chain_rule_divergence(s[[0, 2, 5]], tokens, targets, loss="jsd", temperature=2.0, normalizer=1)
    assert_fp32_close(terms["chain"], chain_sum / 10, n=V_S + 3, msg="chain")
    # two halves with the same num_items add up to the whole (exact gradient accumulation)
    first, first_terms = mixed(s[:3], t[:3], ChainTargets(torch.tensor([0, 2]), tokens[:2], targets[:2]), 10, mix)
    second, second_terms = mixed(s[3:], t[3:], ChainTargets(torch.tensor([2]), tokens[2:], targets[2:]), 10, mix)
    for key in terms:
        assert_fp32_close(first_terms[key] + second_terms[key], terms[key], n=V_T + 6, msg=key)
    assert_fp32_close(first + second, whole, n=V_T + 6, msg="halves")


def test_the_mix_leaves_out_parts_of_weight_zero_and_handles_no_groups():
    s, t = logits(19, 4, V_S), logits(20, 4, V_T)
    total, terms = cross_tokenizer_loss(s, t, (STUDENT_IDS, TEACHER_IDS), num_items=4)
    assert list(terms) == ["exact"] and torch.equal(total, terms["exact"])
    total, terms = cross_tokenizer_loss(
        s[:0], t[:0], (STUDENT_IDS, TEACHER_IDS), num_items=0, mix=CrossTokenizerMix(uld=1.0)
    )
    assert total.item() == 0.0 and sorted(terms) == ["exact", "uld"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "mse"}, r"loss='mse' compares raw logits, which two vocabularies do not share; use a divergence"),
        ({"loss": "nope"}, r"Unknown logits loss 'nope'"),
        ({"temperature": 0.0}, r"temperature must be > 0, got 0.0"),
        ({"num_items": -1}, r"num_items=-1: give the number of aligned groups"),
        ({"shared": (STUDENT_IDS[:3], TEACHER_IDS)}, r"3 student ids but 4 teacher ids"),
        ({"shared": (torch.tensor([4, 0, 6, 7]), TEACHER_IDS)}, r"student_ids hold ids in \[0, 7\] but the student"),
        ({"shared": (STUDENT_IDS, torch.tensor([1, 9, 1, 10]))}, r"teacher_ids repeat a token id"),
        ({"mix": CrossTokenizerMix(chain=1.0)}, r"the chain-rule weight is > 0 but no chain targets were given"),
        ({"mix": CrossTokenizerMix(uld=1.0), "uld_top_k": 0}, r"uld top_k must be >= 1 \(or None"),
        ({"mix": CrossTokenizerMix(chain=1.0), "chain": ChainTargets(*[torch.tensor([7])] * 3)}, r"chain groups"),
    ],
)
def test_bad_inputs_raise_one_line(kwargs, message):
    args = {"shared": (STUDENT_IDS, TEACHER_IDS), "num_items": G, **kwargs}
    with pytest.raises(ValueError, match=message) as info:
        cross_tokenizer_loss(logits(21, G, V_S), logits(22, G, V_T), **args)
    assert "\n" not in str(info.value)


def test_bad_mix_weights_raise_one_line():
    with pytest.raises(ValueError, match=r"cross-tokenizer weight uld=-1.0: give a finite weight >= 0"):
        CrossTokenizerMix(uld=-1.0)
    with pytest.raises(ValueError, match=r"weights exact, uld and chain are all 0"):
        CrossTokenizerMix(exact=0.0)
    with pytest.raises(ValueError, match=r"give \(G, V_s\) and \(G, V_t\), one row per aligned group"):
        uld_loss(logits(23, 3, V_S), logits(24, 4, V_T))
    with pytest.raises(ValueError, match=r"1 teacher rows, 1 tokens and counts summing to 2: give one row"):
        span_logprobs(logits(25, 1, V_T), torch.tensor([3]), torch.tensor([2]))
