"""The Trainer callback through which teachers that change during training hear of each optimizer step."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from transformers import TrainerCallback

from .base import Teacher


class TeacherSteps(TrainerCallback):
    """After each optimizer step, call :meth:`Teacher.on_optimizer_step` of every teacher with the student
    (``student()``: the transformers model out of any wrapper). A step the optimizer skipped (``skipped()``: a
    mixed-precision gradient overflow) left the student as it was and is no step: the Trainer's learning-rate
    schedule does not advance on it either. The gradients of trained teachers are cleared after every step, skipped
    or not (the Trainer clears the student's)."""

    def __init__(self, teachers: list[Teacher], student: Callable[[], nn.Module], skipped: Callable[[], bool]):
        self.teachers, self.student, self.skipped = teachers, student, skipped

    def on_optimizer_step(self, args, state, control, **kwargs):
        for teacher in self.teachers:  # the Trainer zeroes the student's gradients alone: a trained teacher's too
            for p in teacher.parameters_to_train():
                p.grad = None
        if self.skipped():
            return
        student = self.student()
        for teacher in self.teachers:
            teacher.on_optimizer_step(student)
