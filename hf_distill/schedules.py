"""Schedules of loss weights over training: pure functions of the step."""

from __future__ import annotations

import dataclasses
import math

INTERMEDIATE_SCHEDULES = ("constant", "linear", "cosine")


def intermediate_scale(schedule: str, step: int, max_steps: int) -> float:
    """Factor on ``alpha_hidden`` and ``alpha_attention`` at optimizer step ``step`` of ``max_steps``.

    Steps count from 0 (``state.global_step`` while the step's loss is computed) to ``max_steps - 1``, and
    ``p = step / (max_steps - 1)``. ``constant``: 1 throughout. ``linear``: ``1 - p``. ``cosine``:
    ``(1 + cos(pi * p)) / 2``. Both decays are 1 on the first step and 0 on the last, so that the student matches
    the teacher's internals early and its own output (soft and hard targets) late, the way TinyBERT's two stages
    do, in one run. ``max_steps <= 1`` (unknown, e.g. an evaluation before training, or a single step) gives 1.
    """
    if schedule not in INTERMEDIATE_SCHEDULES:
        raise ValueError(
            f"intermediate_schedule={schedule!r} is unknown; choose one of {list(INTERMEDIATE_SCHEDULES)}."
        )
    if schedule == "constant" or max_steps <= 1:
        return 1.0
    progress = min(max(step / (max_steps - 1), 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def delayed_kd(settings, delay: int, step: int, training: bool):
    """The objective's ``settings`` at optimizer step ``step``: in training, the KD weights (``alpha_logits``,
    ``alpha_hidden``, ``alpha_attention``) are 0 for the first ``delay`` steps, so that the student learns from its
    labels alone while, e.g., a co-trained teacher learns the task; unchanged from then on and in evaluation. A
    trained teacher's own objective is not delayed."""
    if not training or step >= delay:
        return settings
    return dataclasses.replace(settings, alpha_logits=0.0, alpha_hidden=0.0, alpha_attention=0.0)
