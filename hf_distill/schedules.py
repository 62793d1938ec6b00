"""Schedules of loss weights over training: pure functions of the step."""

from __future__ import annotations

import math

INTERMEDIATE_SCHEDULES = ("constant", "linear", "cosine")


def intermediate_scale(schedule: str, step: int, max_steps: int) -> float:
    """Factor on ``alpha_hidden`` and ``alpha_attention`` at optimizer step ``step`` of ``max_steps``.

    ``constant``: 1 throughout. ``linear``: ``1 - step / max_steps``. ``cosine``: ``(1 + cos(pi * step /
    max_steps)) / 2``. Both decays start at 1 on the first step and reach 0 on the last, so that the student
    matches the teacher's internals early and its own output (soft and hard targets) late, the way TinyBERT's two
    stages do, in one run. ``max_steps <= 0`` (not known yet, e.g. an evaluation before training) gives 1.
    """
    if schedule not in INTERMEDIATE_SCHEDULES:
        raise ValueError(
            f"intermediate_schedule={schedule!r} is unknown; choose one of {list(INTERMEDIATE_SCHEDULES)}."
        )
    if schedule == "constant" or max_steps <= 0:
        return 1.0
    progress = min(max(step / max_steps, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))
