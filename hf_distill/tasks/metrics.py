"""GLUE metrics computed locally with numpy/scikit-learn/scipy (``evaluate.load`` would fetch code from the Hub)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .glue import GlueTask, get_task


def glue_metrics(task: str | GlueTask, predictions, labels) -> dict[str, float]:
    """The task's usual metrics as plain floats.

    ``predictions`` are logits ``(N, C)`` (argmax is taken) or class ids ``(N,)`` for classification, and scores
    ``(N,)`` or ``(N, 1)`` for STS-B; ``labels`` are ``(N,)``. Keys: cola ``matthews_correlation``; sst2, mnli,
    qnli, rte, wnli ``accuracy``; mrpc, qqp ``accuracy`` and ``f1`` (of the positive class 1); stsb ``pearson`` and
    ``spearmanr`` (NaN when either side is constant, where correlation is undefined).
    """
    task = get_task(task)
    predictions, labels = np.asarray(predictions), np.asarray(labels).reshape(-1)
    if task.is_regression:
        return _regression_metrics(_scores(task, predictions, len(labels)), labels)
    predicted = _class_ids(task, predictions, len(labels))
    labels = labels.astype(np.int64)
    if task.name == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(labels, predicted))}
    metrics = {"accuracy": float(accuracy_score(labels, predicted))}
    if task.name in ("mrpc", "qqp"):
        metrics["f1"] = float(f1_score(labels, predicted, zero_division=0.0))
    return metrics


def compute_metrics_for(task: str | GlueTask) -> Callable[[object], dict[str, float]]:
    """A ``compute_metrics`` for ``Trainer``: takes an ``EvalPrediction`` and returns :func:`glue_metrics`.

    When the model returns several outputs, ``predictions`` is a tuple whose first item is the logits.
    """
    task = get_task(task)  # fail now on a bad name, not at the first evaluation

    def compute_metrics(eval_pred) -> dict[str, float]:
        predictions = eval_pred.predictions
        if isinstance(predictions, (tuple, list)):
            predictions = predictions[0]
        return glue_metrics(task, predictions, eval_pred.label_ids)

    return compute_metrics


def _class_ids(task: GlueTask, predictions: np.ndarray, n: int) -> np.ndarray:
    """``(N, C)`` logits -> argmax ids ``(N,)``; ``(N,)`` ids pass through. Shapes are checked against ``n``."""
    if predictions.ndim == 2 and predictions.shape[1] == task.num_labels:
        predicted = predictions.argmax(axis=-1)
    elif predictions.ndim == 1:
        predicted = predictions.astype(np.int64)
    else:
        raise ValueError(
            f"{task.name} predictions must be logits of shape (N, {task.num_labels}) or class ids (N,), "
            f"got shape {predictions.shape}; check the model's num_labels and the task name."
        )
    _check_length(task, len(predicted), n)
    return predicted


def _scores(task: GlueTask, predictions: np.ndarray, n: int) -> np.ndarray:
    """``(N,)`` or ``(N, 1)`` regression outputs -> ``(N,)`` floats."""
    if predictions.ndim == 2 and predictions.shape[1] == 1:
        predictions = predictions[:, 0]
    if predictions.ndim != 1:
        raise ValueError(
            f"{task.name} is a regression task: predictions must have shape (N,) or (N, 1), got {predictions.shape}; "
            "build the model with num_labels=1."
        )
    _check_length(task, len(predictions), n)
    return predictions.astype(np.float64)


def _check_length(task: GlueTask, num_predictions: int, num_labels: int) -> None:
    if num_predictions != num_labels or num_labels == 0:
        raise ValueError(
            f"{task.name}: got {num_predictions} predictions for {num_labels} labels; pass one prediction per "
            "example (and at least one example)."
        )


def _regression_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    labels = labels.astype(np.float64)
    with warnings.catch_warnings():
        # Constant inputs (an untrained model) make the correlation undefined: scipy warns and returns NaN.
        warnings.simplefilter("ignore")
        pearson = pearsonr(scores, labels)[0] if len(labels) > 1 else np.nan
        spearman = spearmanr(scores, labels)[0] if len(labels) > 1 else np.nan
    return {"pearson": float(pearson), "spearmanr": float(spearman)}
