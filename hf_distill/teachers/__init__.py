"""Teachers as sources of outputs: the :class:`Teacher` base class and its kinds (see ``docs/concepts.md``)."""

from __future__ import annotations

import os

from torch import nn

from .base import CachedTeacher, Teacher, TeacherOutputs, TeacherRequest
from .cross_tokenizer import CrossTokenizerTeacher
from .cross_tokenizer_cache import CrossTokenizerCacheTeacher
from .ema import EMATeacher
from .encoder_cache import EncoderCacheTeacher
from .model import ModelTeacher
from .topk_cache import TopKCacheTeacher
from .trained import TrainedTeacher

__all__ = [
    "CachedTeacher",
    "CrossTokenizerCacheTeacher",
    "CrossTokenizerTeacher",
    "EMATeacher",
    "EncoderCacheTeacher",
    "ModelTeacher",
    "Teacher",
    "TeacherOutputs",
    "TeacherRequest",
    "TopKCacheTeacher",
    "TrainedTeacher",
    "as_teacher",
    "as_teachers",
]


def as_teacher(teacher, *, task: str | None = None, length_groups: int | None = None, **load_kwargs) -> Teacher:
    """A :class:`Teacher` from a ``Teacher`` (itself), a model (a :class:`ModelTeacher`) or a Hub name / local folder
    (loaded for ``task`` with :func:`hf_distill.models.load_model`'s ``load_kwargs``: ``dtype``,
    ``trust_remote_code``, ``attn_implementation``)."""
    if isinstance(teacher, Teacher):
        return teacher
    if isinstance(teacher, nn.Module):
        return ModelTeacher(teacher, length_groups=length_groups)
    if isinstance(teacher, str | os.PathLike):
        if task is None:
            raise ValueError(
                f"as_teacher({os.fspath(teacher)!r}) needs task= to pick the model class to load it with."
            )
        return ModelTeacher.from_pretrained(os.fspath(teacher), task, length_groups=length_groups, **load_kwargs)
    raise ValueError(
        f"A teacher must be a model, a Hub name or local folder, or a hf_distill.teachers.Teacher; got "
        f"{type(teacher).__name__}."
    )


def as_teachers(teacher_model, **kwargs) -> list[Teacher]:
    """:func:`as_teacher` of each of ``teacher_model`` (one teacher or a list; ``None``: none)."""
    if teacher_model is None:
        return []
    items = list(teacher_model) if isinstance(teacher_model, list | tuple) else [teacher_model]
    return [as_teacher(t, **kwargs) for t in items]
