"""Soft targets read from a top-k teacher cache in the batch (:mod:`hf_distill.data.teacher_cache`), so that the teacher
need not run for them: ``teacher_topk_ids`` and ``teacher_topk_logprobs``, ``(B, T, k)`` each, aligned with the
``input_ids`` positions. Hidden states, attention maps and Q/K/V, which no cache holds, come from the model the cache
was built from, run live, when one is given.
"""

from __future__ import annotations

from dataclasses import replace

from ..constants import TEACHER_CACHE_COLUMNS
from .base import CachedTeacher, Teacher, TeacherOutputs, TeacherRequest


class TopKCacheTeacher(CachedTeacher):
    """A teacher known through the top-k cache columns of each batch.

    Args:
        model: the teacher the cache was built from, as a :class:`Teacher` (usually a
            :class:`~hf_distill.teachers.ModelTeacher`), for what the cache does not hold (hidden states, attention)
            and for batches without the columns (completions generated during training); ``None``: soft targets
            only, and a batch without the columns gets no soft targets.
        name: recorded in ``distillation_config.json``.
    """

    def __init__(self, model: Teacher | None = None, *, name: str | None = None):
        self.source = model
        self.name = name or (model.name if model is not None else "top-k teacher cache")

    @property
    def config(self):
        return self.source.config if self.source is not None else None

    def outputs(self, batch: dict, request: TeacherRequest) -> TeacherOutputs:
        cached = all(c in batch for c in TEACHER_CACHE_COLUMNS)
        rest = replace(request, logits=request.logits and not cached)  # what the cache cannot give
        out = self.source.outputs(batch, rest) if self.source is not None and rest else TeacherOutputs()
        if cached and request.logits:
            out.topk_ids, out.topk_logprobs = (batch[c] for c in TEACHER_CACHE_COLUMNS)
        return out
