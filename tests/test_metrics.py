"""GLUE metrics pinned against values worked out by hand from the definitions (not by the same sklearn/scipy calls)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_distill.tasks import compute_metrics_for, glue_metrics

# A binary example: TP=3, TN=2, FP=2, FN=1.
LABELS = [1, 0, 1, 1, 0, 1, 0, 0]
PREDS = [1, 0, 0, 1, 1, 1, 1, 0]
TP, TN, FP, FN = 3, 2, 2, 1
ACCURACY = (TP + TN) / 8  # 5/8
F1 = 2 * TP / (2 * TP + FP + FN)  # 6/9
MCC = (TP * TN - FP * FN) / math.sqrt((TP + FP) * (TP + FN) * (TN + FP) * (TN + FN))  # 4/sqrt(240)


def logits_for(class_ids, num_classes=2, seed=0):
    """Random logits whose argmax is ``class_ids``."""
    logits = np.random.default_rng(seed).normal(size=(len(class_ids), num_classes)).astype(np.float32)
    logits[np.arange(len(class_ids)), class_ids] = 10.0
    return logits


def pearson_by_definition(x, y):
    dx, dy = np.asarray(x, float) - np.mean(x), np.asarray(y, float) - np.mean(y)
    return float((dx * dy).sum() / math.sqrt((dx**2).sum() * (dy**2).sum()))


def test_hand_counts_agree():
    pairs = list(zip(LABELS, PREDS))
    assert (pairs.count((1, 1)), pairs.count((0, 0)), pairs.count((0, 1)), pairs.count((1, 0))) == (TP, TN, FP, FN)
    assert MCC == pytest.approx(4 / math.sqrt(240)) and F1 == pytest.approx(2 / 3)


@pytest.mark.parametrize("task", ["mrpc", "QQP"])
def test_accuracy_and_f1_from_logits(task):
    metrics = glue_metrics(task, logits_for(PREDS), np.array(LABELS))
    assert set(metrics) == {"accuracy", "f1"}
    assert metrics["accuracy"] == pytest.approx(ACCURACY)
    assert metrics["f1"] == pytest.approx(F1)
    assert all(type(v) is float for v in metrics.values())


def test_matthews_correlation_for_cola():
    metrics = glue_metrics("CoLA", logits_for(PREDS), LABELS)
    assert list(metrics) == ["matthews_correlation"]
    assert metrics["matthews_correlation"] == pytest.approx(MCC)
    assert type(metrics["matthews_correlation"]) is float


@pytest.mark.parametrize("task", ["sst2", "qnli", "rte", "wnli"])
def test_accuracy_only_tasks(task):
    assert glue_metrics(task, logits_for(PREDS), LABELS) == pytest.approx({"accuracy": ACCURACY})


def test_mnli_three_classes_and_class_id_predictions():
    labels = [0, 1, 2, 2, 1, 0]
    preds = [0, 1, 1, 2, 0, 0]  # 4 of 6 right
    assert glue_metrics("mnli", logits_for(preds, num_classes=3), labels) == pytest.approx({"accuracy": 4 / 6})
    assert glue_metrics("mnli", np.array(preds), labels) == pytest.approx({"accuracy": 4 / 6})


def test_stsb_pearson_and_spearman():
    scores = [0.1, 0.4, 0.35, 0.8, 3.0]
    labels = [0.0, 1.0, 2.0, 3.0, 4.0]
    # Spearman: ranks of scores are 1,3,2,4,5 against 1..5, so d^2 sums to 2 and rho = 1 - 6*2 / (5*(25-1)) = 0.9.
    expected = {"pearson": pearson_by_definition(scores, labels), "spearmanr": 0.9}
    for predictions in (np.array(scores), np.array(scores)[:, None]):  # (N,) and (N, 1)
        metrics = glue_metrics("STS-B", predictions, np.array(labels, dtype=np.float32))
        assert metrics == pytest.approx(expected)
        assert all(type(v) is float for v in metrics.values())


def test_stsb_spearman_with_ties_uses_average_ranks():
    # Scores 1,2,2,3 rank as 1, 2.5, 2.5, 4; labels rank 1..4; Pearson of the ranks is 4.5 / sqrt(4.5 * 5).
    metrics = glue_metrics("stsb", [1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0])
    assert metrics["spearmanr"] == pytest.approx(4.5 / math.sqrt(4.5 * 5))


def test_stsb_constant_predictions_give_nan():
    metrics = glue_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert math.isnan(metrics["pearson"]) and math.isnan(metrics["spearmanr"])


def test_compute_metrics_for_trainer_takes_first_of_tuple_predictions():
    compute_metrics = compute_metrics_for("mrpc")
    hidden = np.zeros((len(LABELS), 3, 4))
    out = compute_metrics(EvalPrediction(predictions=(logits_for(PREDS), hidden), label_ids=np.array(LABELS)))
    assert out == pytest.approx({"accuracy": ACCURACY, "f1": F1})
    stsb = compute_metrics_for("stsb")(
        EvalPrediction(predictions=np.array([[1.0], [2.0], [4.0]]), label_ids=[1, 2, 3])
    )
    assert stsb["spearmanr"] == pytest.approx(1.0)
    assert stsb["pearson"] == pytest.approx(pearson_by_definition([1, 2, 4], [1, 2, 3]))


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="Unknown GLUE task 'sts'"):
        compute_metrics_for("sts")
    with pytest.raises(ValueError, match="got 8 predictions for 7 labels"):
        glue_metrics("sst2", logits_for(PREDS), LABELS[:7])
    with pytest.raises(ValueError, match=r"shape \(N, 2\).*got shape \(8, 3\)"):
        glue_metrics("sst2", logits_for(PREDS, num_classes=3), LABELS)
    with pytest.raises(ValueError, match="regression task.*num_labels=1"):
        glue_metrics("stsb", logits_for(PREDS), LABELS)
    with pytest.raises(ValueError, match="at least one example"):
        glue_metrics("rte", np.zeros((0, 2)), [])
