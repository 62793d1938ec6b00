"""Sentence-embedding losses (issue 20, hf_distill.losses.embedding), pinned against references written element by
element from their definitions."""

import math

import pytest
import torch

from hf_distill.losses.embedding import contrastive_kd, embedding_cosine, embedding_mse, similarity_kl

pytestmark = pytest.mark.numerics

torch.manual_seed(0)
S, T = torch.randn(4, 3), torch.randn(4, 3)


def cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_mse_and_cosine_are_means_over_items():
    s, t = S.tolist(), T.tolist()
    mse = sum(sum((x - y) ** 2 for x, y in zip(a, b)) / 3 for a, b in zip(s, t)) / 4
    one_minus = sum(1 - cos(a, b) for a, b in zip(s, t)) / 4
    torch.testing.assert_close(embedding_mse(S, T), torch.tensor(mse), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedding_cosine(S, T), torch.tensor(one_minus), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedding_mse(S, T, normalizer=8), torch.tensor(mse / 2), rtol=1e-5, atol=1e-6)
    assert float(embedding_cosine(T, T)) < 1e-6


def softmax(xs):
    m = max(xs)
    e = [math.exp(x - m) for x in xs]
    return [v / sum(e) for v in e]


def test_similarity_kl_compares_each_items_distribution_over_the_others():
    s, t, tau, total = S.tolist(), (T * 2).tolist(), 0.5, 0.0
    for i in range(4):
        others = [j for j in range(4) if j != i]
        p_t = softmax([cos(t[i], t[j]) / tau for j in others])
        p_s = softmax([cos(s[i], s[j]) / tau for j in others])
        total += sum(a * math.log(a / b) for a, b in zip(p_t, p_s))
    want = total / 4 * tau**2
    torch.testing.assert_close(similarity_kl(S, T * 2, temperature=tau), torch.tensor(want), rtol=1e-5, atol=1e-6)
    wide = torch.cat([T, T], dim=1)  # other widths: each side compares its own embeddings (cosines unchanged)
    torch.testing.assert_close(similarity_kl(S, wide, temperature=tau), torch.tensor(want), rtol=1e-5, atol=1e-6)
    assert float(similarity_kl(T, T)) < 1e-6
    with pytest.raises(ValueError, match="batches of 2 or more"):
        similarity_kl(S[:1], T[:1])


def test_contrastive_kd_targets_are_the_teachers_similarities():
    s, t, tau, total = S.tolist(), T.tolist(), 0.1, 0.0
    for i in range(4):
        targets = softmax([cos(t[i], t[j]) / tau for j in range(4)])
        log_p = [math.log(p) for p in softmax([cos(s[i], t[j]) / tau for j in range(4)])]
        total -= sum(a * b for a, b in zip(targets, log_p))
    want = total / 4 * tau**2
    torch.testing.assert_close(contrastive_kd(S, T, temperature=tau), torch.tensor(want), rtol=1e-5, atol=1e-6)


def test_gradients_reach_the_student_only_and_widths_are_checked():
    s, t = S.clone().requires_grad_(), T.clone().requires_grad_()
    for loss in (embedding_mse, embedding_cosine, similarity_kl, contrastive_kd):
        s.grad = t.grad = None
        loss(s, t).backward()
        assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None, loss.__name__
    with pytest.raises(ValueError, match="project the student's to the teacher's width first"):
        embedding_mse(S, torch.randn(4, 5))
