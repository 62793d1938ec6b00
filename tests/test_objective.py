"""The pure objective (hf_distill.losses.objective) against references written from the definitions: the weighted
sum of task, logit, hidden-state and attention terms, several teachers weighted alike in every term, top-k and
chunked soft targets, and its errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import assert_fp32_close
from torch import nn

from hf_distill.losses.objective import (
    ObjectiveSettings,
    StudentOutputs,
    count_batch_items,
    distillation_objective,
)
from hf_distill.mapping import LayerMatch
from hf_distill.teachers import TeacherOutputs

B, T, C, V = 4, 5, 3, 11
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
TOKENS = int(MASK.sum())


def randn(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def naive_kl(student_logits, target_probs, temperature):
    """Per row ``T^2 Σ_v p_t (log p_t - log p_s)``, ``p_s = softmax(z_s / T)``: ``(N, V), (N, V) -> (N,)``."""
    log_ps = torch.log_softmax(student_logits / temperature, dim=-1)
    return temperature**2 * (target_probs * (target_probs.log() - log_ps)).sum(-1)


def kl_scale(student_logits, target_probs, temperature):
    """The size of the terms a KL sums (a cross-entropy and an entropy, tests/numerics.py), averaged over rows."""
    log_ps = torch.log_softmax(student_logits.detach() / temperature, dim=-1)
    return float(temperature**2 * (target_probs * (target_probs.log().abs() + log_ps.abs())).sum(-1).mean())


def naive_hidden_mse(student, teacher, mask):
    """Σ over real tokens of the mean over D of the squared difference, divided by the real tokens."""
    per_token = (student - teacher).pow(2).mean(-1)  # (B, T)
    return (per_token * mask).sum() / mask.sum()


def naive_attention_mse(student, teacher, mask):
    """Σ over real query rows of the mean over heads of Σ over keys of the squared difference, / real tokens."""
    per_row = (student - teacher).pow(2).sum(-1).mean(1)  # (B, T)
    return (per_row * mask).sum() / mask.sum()


def attention_maps(seed):
    return torch.softmax(randn(B, 2, T, T, seed=seed), dim=-1)


def two_teachers():
    """Teacher 0 (width 6, 4 layers) and teacher 1 (width 8, 2 layers), each with its own matches."""
    matches = [
        LayerMatch(1, 2, "hidden", "mse", 0.5, "linear", teacher=0),
        LayerMatch(2, 4, "hidden", "mse", 0.5, "linear", teacher=0),
        LayerMatch(2, 4, "attention", "mse", 1.0, teacher=0),
        LayerMatch(2, 2, "hidden", "mse", 1.0, "linear", teacher=1),
        LayerMatch(1, 1, "attention", "mse", 1.0, teacher=1),
    ]
    teachers = [
        TeacherOutputs(
            logits=randn(B, C, seed=1),
            hidden_states=tuple(randn(B, T, 6, seed=10 + i) for i in range(5)),
            attentions=tuple(attention_maps(20 + i) for i in range(4)),
        ),
        TeacherOutputs(
            logits=randn(B, C, seed=2),
            hidden_states=tuple(randn(B, T, 8, seed=30 + i) for i in range(3)),
            attentions=tuple(attention_maps(40 + i) for i in range(2)),
        ),
    ]
    student = StudentOutputs(
        logits=randn(B, C, seed=3),
        projected={m.key: randn(B, T, 6 if m.teacher == 0 else 8, seed=50 + k) for k, m in enumerate(matches)},
        attentions=tuple(attention_maps(60 + i) for i in range(2)),
    )
    return student, teachers, matches


def test_two_teachers_weigh_every_term_alike():
    student, teachers, matches = two_teachers()
    labels = torch.tensor([0, 2, 1, 1])
    settings = ObjectiveSettings(
        task="sequence_classification",
        alpha_task=0.5,
        alpha_logits=0.7,
        alpha_hidden=2.0,
        alpha_attention=3.0,
        temperature=2.0,
        teacher_weights=(3.0, 1.0),
    )
    total, terms = distillation_objective(
        settings, student, teachers, matches, labels=labels, attention_mask=MASK, targets=B, tokens=TOKENS,
        intermediate_scale=0.5,
    )  # fmt: skip
    # references from the definitions
    task = F.cross_entropy(student.logits, labels)
    mixture = 0.75 * torch.softmax(teachers[0].logits / 2, -1) + 0.25 * torch.softmax(teachers[1].logits / 2, -1)
    logits = naive_kl(student.logits, mixture, 2.0).mean()
    key = {(m.teacher, m.feature, m.student_layer): m.key for m in matches}
    hidden_0 = 0.5 * naive_hidden_mse(student.projected[key[0, "hidden", 1]], teachers[0].hidden_states[2], MASK)
    hidden_0 += 0.5 * naive_hidden_mse(student.projected[key[0, "hidden", 2]], teachers[0].hidden_states[4], MASK)
    hidden_1 = naive_hidden_mse(student.projected[key[1, "hidden", 2]], teachers[1].hidden_states[2], MASK)
    attention_0 = naive_attention_mse(student.attentions[1], teachers[0].attentions[3], MASK)
    attention_1 = naive_attention_mse(student.attentions[0], teachers[1].attentions[0], MASK)
    want = {
        "task": task,
        "logits": logits,
        "hidden": 0.75 * hidden_0 + 0.25 * hidden_1,
        "hidden/teacher_0": hidden_0,
        "hidden/teacher_1": hidden_1,
        "attention": 0.75 * attention_0 + 0.25 * attention_1,
        "attention/teacher_0": attention_0,
        "attention/teacher_1": attention_1,
    }
    assert terms.keys() == want.keys()
    scales = {"logits": kl_scale(student.logits, mixture, 2.0)}
    for name, value in want.items():
        assert_fp32_close(terms[name], value, scale=scales.get(name), n=T * 8, msg=name)
    expected = 0.5 * task + 0.7 * logits + 0.5 * (2.0 * want["hidden"] + 3.0 * want["attention"])
    assert_fp32_close(total, expected, n=T * 8, msg="total")


def test_one_teacher_logs_no_per_teacher_terms_and_a_zero_weight_teacher_counts_for_nothing():
    student, teachers, matches = two_teachers()
    settings = ObjectiveSettings(task="sequence_classification", alpha_task=0.0, alpha_logits=1.0, alpha_hidden=1.0)
    kw = {"labels": None, "attention_mask": MASK, "targets": B, "tokens": TOKENS}
    own = [m for m in matches if m.teacher == 0]
    _, alone = distillation_objective(settings, student, teachers[:1], own, **kw)
    assert set(alone) == {"logits", "hidden"}
    weighted = ObjectiveSettings(**{**settings.__dict__, "teacher_weights": (1.0, 0.0)})
    total, terms = distillation_objective(weighted, student, teachers, matches, **kw)
    assert set(terms) == {"logits", "hidden", "hidden/teacher_0"}  # teacher 1 is not even computed
    assert_fp32_close(terms["hidden"], alone["hidden"], n=T)
    assert_fp32_close(terms["logits"], alone["logits"], scale=1.0, n=C)
    assert_fp32_close(total, alone["logits"] + alone["hidden"], n=T)


def causal_lm_case():
    """A student and a teacher given as last hidden states and linear heads, labels with ignored positions."""
    head_s, head_t = nn.Linear(6, V), nn.Linear(8, V)
    torch.manual_seed(0)
    s_hidden = randn(B, T, 6, seed=1).requires_grad_()
    t_hidden = randn(B, T, 8, seed=2)
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(3))
    labels[MASK == 0] = -100
    return head_s, head_t, s_hidden, t_hidden, labels


def test_chunked_and_full_logits_paths_agree_and_match_the_definitions():
    head_s, head_t, s_hidden, t_hidden, labels = causal_lm_case()
    settings = ObjectiveSettings(task="causal_lm", alpha_task=0.5, alpha_logits=1.0, temperature=2.0, chunk_size=3)
    targets = int((labels[:, 1:] != -100).sum())
    kw = {"labels": labels, "attention_mask": MASK, "targets": targets, "tokens": TOKENS}
    chunked, chunked_terms = distillation_objective(
        settings,
        StudentOutputs(last_hidden=s_hidden, head=head_s),
        [TeacherOutputs(last_hidden=t_hidden, head=head_t)],
        [],
        **kw,
    )
    s_logits, t_logits = head_s(s_hidden), head_t(t_hidden).detach()
    full, full_terms = distillation_objective(
        settings, StudentOutputs(logits=s_logits), [TeacherOutputs(logits=t_logits)], [], **kw
    )
    valid = labels[:, 1:] != -100  # position t predicts token t + 1
    task = F.cross_entropy(s_logits[:, :-1][valid], labels[:, 1:][valid])
    probs = torch.softmax(t_logits[:, :-1][valid] / 2, -1)
    kd = naive_kl(s_logits[:, :-1][valid], probs, 2.0).mean()
    scale = kl_scale(s_logits[:, :-1][valid], probs, 2.0)
    for terms in (chunked_terms, full_terms):
        assert_fp32_close(terms["task"], task, n=V + 8, msg="task")
        assert_fp32_close(terms["logits"], kd, scale=scale, n=V + 8, msg="logits")
    assert_fp32_close(chunked, 0.5 * task + kd, scale=float(task) + scale, n=V + 8)
    assert_fp32_close(full, 0.5 * task + kd, scale=float(task) + scale, n=V + 8)


def test_a_top_k_teacher_with_every_token_equals_the_full_divergence():
    head_s, head_t, s_hidden, t_hidden, labels = causal_lm_case()
    s_logits, t_logits = head_s(s_hidden), head_t(t_hidden).detach()
    logprobs, ids = torch.log_softmax(t_logits / 2, -1).sort(dim=-1, descending=True)  # k = V: no tail
    settings = ObjectiveSettings(task="causal_lm", alpha_task=0.0, alpha_logits=1.0, temperature=2.0)
    targets = int((labels[:, 1:] != -100).sum())
    kw = {"labels": labels, "attention_mask": MASK, "targets": targets, "tokens": TOKENS}
    topk = TeacherOutputs(topk_ids=ids, topk_logprobs=logprobs)
    total, terms = distillation_objective(settings, StudentOutputs(logits=s_logits), [topk], [], **kw)
    valid = labels[:, 1:] != -100
    probs = torch.softmax(t_logits[:, :-1][valid] / 2, -1)
    want = naive_kl(s_logits[:, :-1][valid], probs, 2.0).mean()
    scale = kl_scale(s_logits[:, :-1][valid], probs, 2.0)
    assert_fp32_close(terms["logits"], want, scale=scale, n=V + 8)
    assert_fp32_close(total, want, scale=scale, n=V + 8)
    chunked = ObjectiveSettings(**{**settings.__dict__, "chunk_size": 4})
    _, terms = distillation_objective(chunked, StudentOutputs(last_hidden=s_hidden, head=head_s), [topk], [], **kw)
    assert_fp32_close(terms["logits"], want, scale=scale, n=V + 8)
    with pytest.raises(ValueError, match="2 teachers give soft targets and one of them a top-k cache"):
        distillation_objective(settings, StudentOutputs(logits=s_logits), [topk, TeacherOutputs(logits=t_logits)],
                               [], **kw)  # fmt: skip


def test_a_teacher_without_what_its_matches_need_is_named():
    student, teachers, matches = two_teachers()
    teachers[1].hidden_states = None
    settings = ObjectiveSettings(task="sequence_classification", alpha_logits=0.0, alpha_hidden=1.0)
    with pytest.raises(ValueError, match="^teacher 1 returned no hidden_states, which hidden-state KD needs"):
        distillation_objective(
            settings, student, teachers, matches, labels=None, attention_mask=MASK, targets=B, tokens=TOKENS
        )


def test_item_counts_of_a_batch():
    labels = torch.full((B, T), 7)
    labels[MASK == 0] = -100
    labels[0, 0] = -100  # a prompt token: no target
    ids = torch.ones(B, T, dtype=torch.long)
    # causal LM: the targets of the shifted labels; the tokens of the attention mask
    assert count_batch_items("causal_lm", labels, MASK, ids) == (int((labels[:, 1:] != -100).sum()), TOKENS)
    assert count_batch_items("sequence_classification", torch.tensor([0, -100, 1, 1]), MASK, ids) == (B, TOKENS)
    assert count_batch_items("token_classification", None, MASK, ids) == (TOKENS, TOKENS)
