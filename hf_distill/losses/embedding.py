"""Losses between sentence embeddings (issue 20): the student learns the teacher's representation of each example
rather than its labels. Pure functions of ``(B, D)`` embeddings; each returns ``sum over the B items / normalizer``
(default ``B``), so that micro-batches add up like every other term (``reduction.reduce_items``).

- ``embedding_mse``: ``mean_d (s_d - t_d)^2`` per item (sentence-transformers' ``MSELoss``, Reimers & Gurevych 2020).
- ``embedding_cosine``: ``1 - cos(s, t)`` per item.
- ``similarity_kl``: the in-batch similarity distribution: row ``i`` of ``softmax(cos(x_i, x_j) / T)`` over the other
  items ``j != i``, teacher against student, ``KL(P_t,i || P_s,i) * T^2`` per item (needs ``B >= 2``).
- ``contrastive_kd``: CLIP-style, the student's embedding of item ``i`` scored against the teacher's embeddings of
  the batch, ``log softmax_j(cos(s_i, t_j) / T)``, with the teacher's own similarities ``softmax_j(cos(t_i, t_j) / T)``
  as targets instead of the identity: ``-sum_j P_t,ij log P_s,ij * T^2`` per item. Student and teacher widths must
  agree (project first).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .reduction import reduce_items


def _check(student: torch.Tensor, teacher: torch.Tensor, same_width: bool = True) -> None:
    if student.dim() != 2 or teacher.dim() != 2 or student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"sentence embeddings must be (B, D) with the same B: student {tuple(student.shape)}, teacher "
            f"{tuple(teacher.shape)}."
        )
    if same_width and student.shape[1] != teacher.shape[1]:
        raise ValueError(
            f"student embeddings are {student.shape[1]} wide, the teacher's {teacher.shape[1]}: project the student's "
            "to the teacher's width first (a projection adapter)."
        )


def embedding_mse(student, teacher, *, normalizer=None) -> torch.Tensor:
    """``(B, D)``, ``(B, D)`` -> scalar: ``sum_i mean_d (s_id - t_id)^2 / normalizer``."""
    _check(student, teacher)
    per_item = (student.float() - teacher.detach().float()).pow(2).mean(-1)  # (B,)
    return reduce_items(per_item, normalizer)


def embedding_cosine(student, teacher, *, normalizer=None) -> torch.Tensor:
    """``(B, D)``, ``(B, D)`` -> scalar: ``sum_i (1 - cos(s_i, t_i)) / normalizer``."""
    _check(student, teacher)
    per_item = 1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1)  # (B,)
    return reduce_items(per_item, normalizer)


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(B, D)``, ``(B, D)`` -> ``(B, B)`` cosine similarities."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def similarity_kl(student, teacher, *, temperature: float = 1.0, normalizer=None) -> torch.Tensor:
    """``(B, D_s)``, ``(B, D_t)`` -> scalar: each item's distribution over the batch's other items by cosine
    similarity at ``temperature``, ``T^2 * sum_i KL(P_t,i || P_s,i) / normalizer``. The widths may differ (each side
    compares its own embeddings)."""
    _check(student, teacher, same_width=False)
    if student.shape[0] < 2:
        raise ValueError("similarity_kl compares each item with the others of its batch: give batches of 2 or more.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    eye = torch.eye(student.shape[0], dtype=torch.bool, device=student.device)
    log_s = (_cosines(student, student) / temperature).masked_fill(eye, float("-inf")).log_softmax(-1)
    log_t = (
        (_cosines(teacher.detach(), teacher.detach()) / temperature).masked_fill(eye, float("-inf")).log_softmax(-1)
    )
    per_item = (log_t.exp() * (log_t - log_s)).masked_fill(eye, 0.0).sum(-1)  # (B,)
    return reduce_items(per_item, normalizer) * temperature**2


def contrastive_kd(student, teacher, *, temperature: float = 0.05, normalizer=None) -> torch.Tensor:
    """``(B, D)``, ``(B, D)`` -> scalar: ``T^2 * sum_i CE(softmax_j(cos(t_i, t_j) / T), log_softmax_j(cos(s_i, t_j)
    / T)) / normalizer`` (module docstring)."""
    _check(student, teacher)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    teacher = teacher.detach()
    targets = (_cosines(teacher, teacher) / temperature).softmax(-1)  # (B, B)
    log_s = (_cosines(student, teacher) / temperature).log_softmax(-1)  # (B, B)
    per_item = -(targets * log_s).sum(-1)  # (B,)
    return reduce_items(per_item, normalizer) * temperature**2
