"""Layer-map resolution for any depth ratio, explicit pairs, and the matches built from them."""

from __future__ import annotations

import pytest

from hf_distill.mapping import build_layer_matches, resolve_layer_pairs


@pytest.mark.parametrize(
    "ls, lt, want",
    [
        (3, 6, [(0, 0), (1, 2), (2, 4), (3, 6)]),
        (4, 12, [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]),
        (6, 24, [(0, 0), (1, 4), (2, 8), (3, 12), (4, 16), (5, 20), (6, 24)]),
        (2, 5, [(0, 0), (1, 3), (2, 5)]),  # 2.5 rounds half up
        (4, 4, [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]),
    ],
)
def test_uniform(ls, lt, want):
    assert resolve_layer_pairs("uniform", ls, lt) == want


def test_uniform_any_ratio_is_monotone_and_ends_at_the_top():
    for ls in range(1, 13):
        for lt in range(ls, 31):
            pairs = resolve_layer_pairs("uniform", ls, lt)
            teachers = [t for _, t in pairs]
            assert pairs[0] == (0, 0) and pairs[-1] == (ls, lt)
            assert teachers == sorted(teachers) and len(set(teachers)) == len(teachers)


def test_last_and_explicit():
    assert resolve_layer_pairs("last", 3, 12) == [(3, 12)]
    assert resolve_layer_pairs("1:4,3:12", 3, 12) == [(1, 4), (3, 12)]
    assert resolve_layer_pairs([[0, 0], [2, 7]], 3, 12) == [(0, 0), (2, 7)]


@pytest.mark.parametrize(
    "spec, message",
    [("4:1", "out of range"), ("1:13", "out of range"), ("a:b", "Bad layer_map"), ("", "Bad layer_map")],
)
def test_explicit_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_layer_pairs(spec, 3, 12)


def test_matches_weights_and_projection():
    pairs = resolve_layer_pairs("uniform", 2, 4)
    matches = build_layer_matches(
        pairs, student_hidden_size=16, teacher_hidden_size=32, hidden_loss="mse", attention_loss="kl"
    )
    hidden = [m for m in matches if m.feature == "hidden"]
    attn = [m for m in matches if m.feature == "attention"]
    assert [(m.student_layer, m.teacher_layer) for m in hidden] == [(0, 0), (1, 2), (2, 4)]
    assert [(m.student_layer, m.teacher_layer) for m in attn] == [(1, 2), (2, 4)]  # no embeddings for attention
    assert all(m.projection == "linear" for m in hidden)
    assert sum(m.weight for m in hidden) == pytest.approx(1) and sum(m.weight for m in attn) == pytest.approx(1)
    with pytest.raises(ValueError, match="needs a projection"):
        build_layer_matches(
            pairs,
            student_hidden_size=16,
            teacher_hidden_size=32,
            hidden_loss="mse",
            attention_loss=None,
            projection="none",
        )
    same = build_layer_matches(
        pairs, student_hidden_size=32, teacher_hidden_size=32, hidden_loss="cosine", attention_loss=None
    )
    assert all(m.projection is None and m.loss == "cosine" for m in same)


def test_init_follows_the_layers_build_student_copied():
    assert resolve_layer_pairs("init", 3, 12, [0, 5, 11]) == [(0, 0), (1, 1), (2, 6), (3, 12)]
    with pytest.raises(ValueError, match="needs a student made by build_student"):
        resolve_layer_pairs("init", 3, 12, None)
