"""The Trainer callback through which teachers that change during training hear of each optimizer step."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from transformers import TrainerCallback

from .base import Teacher


class TeacherSteps(TrainerCallback):
    """After each optimizer step, call :meth:`Teacher.on_optimizer_step` of every teacher with the student
    (``student()``: the transformers model out of any wrapper)."""

    def __init__(self, teachers: list[Teacher], student: Callable[[], nn.Module]):
        self.teachers, self.student = teachers, student

    def on_optimizer_step(self, args, state, control, **kwargs):
        student = self.student()
        for teacher in self.teachers:
            teacher.on_optimizer_step(student)
