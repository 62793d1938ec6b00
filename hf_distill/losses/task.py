"""The student's own (hard-label) loss and the masks that say which positions are prediction targets.

Task kinds: ``"sequence_classification"`` (logits ``(B, C)``, labels ``(B,)``; regression when ``C == 1``),
``"token_classification"`` (logits ``(B, T, C)``, labels ``(B, T)``) and ``"causal_lm"`` (logits ``(B, T, V)``,
labels ``(B, T)`` shifted here so position ``t`` predicts token ``t + 1``). Label ``-100`` is ignored everywhere;
any other label outside ``[0, C)`` (or ``[0, V)``) is an error (:func:`check_labels`), never a silent class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from .reduction import reduce_items


def check_labels(labels: torch.Tensor, num_classes: int, what: str = "num_labels") -> None:
    """Refuse integer labels that are neither ``IGNORE_INDEX`` nor a class id in ``[0, num_classes)``.

    ``labels`` ``(*batch)``, any integer dtype (float labels, of regression and multi-label heads, are not ids and
    pass). ``what`` names ``num_classes`` in the message (``num_labels``, ``vocab_size``). Costs one min/max
    pair and one host sync per call; the error path counts the bad positions.
    """
    if labels.is_floating_point() or labels.numel() == 0:
        return
    ids = labels.masked_fill(labels == IGNORE_INDEX, 0)
    low, high = torch.stack([ids.min(), ids.max()]).tolist()
    if low >= 0 and high < num_classes:
        return
    bad = low if low < 0 else high
    count = int((labels == bad).sum())
    raise ValueError(
        f"label {bad} at {count} position(s) is outside [0, {num_classes}) ({what} = {num_classes}); a label must "
        f"lie in that range, or be {IGNORE_INDEX} (ignored)."
    )


def align_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits at prediction positions: causal LMs drop the last position, ``(B, T, V) -> (B, T-1, V)``."""
    return logits[:, :-1] if task == "causal_lm" else logits


def target_mask(task: str, labels: torch.Tensor | None, attention_mask: torch.Tensor | None, batch_shape):
    """Boolean mask over the (aligned) logits' batch dimensions of positions that count as items.

    Sequence classification: every example, labelled or not. The teacher's soft targets need no label, so an
    unlabelled example (label -100, e.g. a teacher-labelled augmentation) still counts for KD; :func:`task_loss`
    skips it, and both terms are means over all examples, so each example weighs the same in both.
    Token-level tasks: labels != -100 (shifted for causal LMs), else the attention mask, else everything.
    Returns ``None`` when every position counts.
    """
    if task == "sequence_classification":
        return None
    if labels is not None:
        return (labels[:, 1:] if task == "causal_lm" else labels) != IGNORE_INDEX
    if attention_mask is not None:
        return (attention_mask[:, 1:] if task == "causal_lm" else attention_mask).bool()
    return None


def task_loss(logits, labels, *, task, problem_type=None, normalizer=None, label_smoothing=0.0):
    """Hard-label loss of the student, summed over target items and divided by ``normalizer``.

    Cross-entropy for classification and causal LM, MSE for regression (``C == 1`` or
    ``problem_type == "regression"``), binary cross-entropy per label for ``multi_label_classification``.
    ``logits`` must already be aligned (see :func:`align_logits`); ``labels`` are the raw, unshifted labels.
    ``label_smoothing`` applies to the cross-entropy cases (as ``TrainingArguments.label_smoothing_factor``).
    """
    if task == "causal_lm":
        labels = labels[:, 1:]
    if problem_type == "regression" or (task == "sequence_classification" and logits.shape[-1] == 1):
        valid = labels != IGNORE_INDEX
        per_item = (logits.float().squeeze(-1)[valid] - labels[valid].float()).pow(2)
        return reduce_items(per_item, normalizer)
    if problem_type == "multi_label_classification":
        per_item = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="none").mean(-1)
        return reduce_items(per_item, normalizer)
    check_labels(labels, logits.shape[-1], "vocab_size" if task == "causal_lm" else "num_labels")
    per_item = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    return reduce_items(per_item[labels.reshape(-1) != IGNORE_INDEX], normalizer)
