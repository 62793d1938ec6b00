"""Losses between matched hidden states (DistilBERT cosine, TinyBERT MSE).

Shapes: ``student_hidden`` and ``teacher_hidden`` are ``(B, T, D)`` (the student already projected to the teacher's
width ``D``); ``mask`` is ``(B, T)`` with 1 for real tokens. One item is one token.
"""

from __future__ import annotations

import torch.nn.functional as F

from .reduction import flatten_valid, reduce_items
from .registry import register_loss


def _valid_tokens(student_hidden, teacher_hidden, mask):
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"Hidden states differ in shape: student {tuple(student_hidden.shape)} vs teacher "
            f"{tuple(teacher_hidden.shape)}; project the student to the teacher's width first."
        )
    return flatten_valid(student_hidden.float(), mask, 1), flatten_valid(teacher_hidden.float(), mask, 1)


@register_loss("hidden", "mse")
def hidden_mse(student_hidden, teacher_hidden, *, mask=None, normalizer=None, **_):
    """Per token, the mean over ``D`` of ``(h_s - h_t)^2``; summed over valid tokens / ``normalizer``."""
    s, t = _valid_tokens(student_hidden, teacher_hidden, mask)
    return reduce_items((s - t).pow(2).mean(-1), normalizer)


@register_loss("hidden", "cosine")
def hidden_cosine(student_hidden, teacher_hidden, *, mask=None, normalizer=None, **_):
    """Per token, ``1 - cos(h_s, h_t)``; summed over valid tokens / ``normalizer``."""
    s, t = _valid_tokens(student_hidden, teacher_hidden, mask)
    return reduce_items(1.0 - F.cosine_similarity(s, t, dim=-1, eps=1e-8), normalizer)
