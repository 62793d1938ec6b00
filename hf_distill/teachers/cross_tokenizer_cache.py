"""Soft targets of a teacher with another tokenizer read from a cross-tokenizer teacher cache in the batch
(:func:`hf_distill.data.build_teacher_cache` with a :class:`~hf_distill.teachers.CrossTokenizerTeacher`), so that the
teacher need not run: at each student position where a group is compared, the teacher's top-k ids and
log-probabilities (its own token space) and the chain rule's span log-probability (columns
:data:`hf_distill.constants.CROSS_TOKENIZER_CACHE_COLUMNS`). The objective computes the cross-tokenizer logit term
from them chunk by chunk, as from the live teacher (:mod:`hf_distill.losses.cross_tokenizer_chunked`).
"""

from __future__ import annotations

import torch
from torch import nn

from ..constants import CROSS_TOKENIZER_CACHE_COLUMNS
from ..cross_tokenizer.spans import check_normalisation, tokenizer_name
from ..cross_tokenizer.vocab import check_tokenizer_pair, shared_vocabulary
from ..losses.cross_tokenizer_chunked import CachedCrossTokenizerTargets
from .base import CachedTeacher, TeacherOutputs, TeacherRequest
from .cross_tokenizer import CrossTokenizerTeacher, check_request, check_student_rows, describe_pair


def cached_targets(batch: dict, shared: tuple[torch.Tensor, torch.Tensor]) -> CachedCrossTokenizerTargets:
    """The collated cache columns of ``batch`` (``(B, T_s)`` and ``(B, T_s, k)``, zero-padded) as the targets of the
    cross-tokenizer term: a group where the stored teacher position is ``>= 0`` at a real token, the chain part's
    student token (the next one) where its span log-probability is stored (not NaN)."""
    positions, ids, logprobs, chain = (batch[c] for c in CROSS_TOKENIZER_CACHE_COLUMNS)
    input_ids = batch["input_ids"]  # (B, T_s)
    groups = positions >= 0
    if batch.get("attention_mask") is not None:  # the collator's padding (zeros) is no group
        groups &= batch["attention_mask"].bool()
    following = torch.cat([input_ids[:, 1:], torch.full_like(input_ids[:, :1], -1)], dim=1)  # (B, T_s) token s + 1
    chain_tokens = torch.where(groups & ~torch.isnan(chain), following, -1)
    return CachedCrossTokenizerTargets(groups, ids, logprobs, chain_tokens, chain, shared)


class CrossTokenizerCacheTeacher(CachedTeacher):
    """A teacher with another tokenizer than the student's, known through the cross-tokenizer cache columns of each
    batch.

    Args:
        tokenizer: the teacher's tokenizer; student_tokenizer: the student's. The shared vocabulary is computed from
            both, as for the live teacher.
        meta: the cache's meta record (``load_teacher_cache`` returns it): the tokenizers it records must be these
            two, else a ``ValueError`` naming both pairs. ``None``: not checked (an in-memory cache).
        model: the teacher itself (a causal LM, or a :class:`CrossTokenizerTeacher`), run for batches without the
            columns (completions generated during training, evaluation data without a cache); ``None``: such batches
            get no soft targets.
        name: recorded in ``distillation_config.json``.
    """

    own_tokenizer = True
    task = "causal_lm"

    def __init__(
        self,
        tokenizer,
        student_tokenizer,
        *,
        meta: dict | None = None,
        model: nn.Module | CrossTokenizerTeacher | None = None,
        name: str | None = None,
    ):
        check_normalisation(tokenizer, student_tokenizer)
        if meta is not None:
            if "tokenizers" not in meta:
                raise ValueError(
                    f"The teacher cache of {meta.get('teacher')!r} holds one vocabulary's top-k, not a cross-tokenizer "
                    "cache: train from it with the teacher's own tokenizer (TopKCacheTeacher), or build a cache with "
                    "a CrossTokenizerTeacher."
                )
            where = f"The teacher cache of {meta.get('teacher')!r}"
            fix = "build a cache for this pair (build_teacher_cache with a CrossTokenizerTeacher of these tokenizers)"
            check_tokenizer_pair(meta["tokenizers"], tokenizer, student_tokenizer, where, fix)
        if isinstance(model, nn.Module):
            model = CrossTokenizerTeacher(model, tokenizer, student_tokenizer)
        self.source = model
        self.tokenizer, self.student_tokenizer = tokenizer, student_tokenizer
        teacher_ids, student_ids = shared_vocabulary(tokenizer, student_tokenizer)
        self.shared = (student_ids, teacher_ids)
        default = meta.get("teacher") if meta is not None else f"cross-tokenizer cache of {tokenizer_name(tokenizer)}"
        self.name = name or (model.name if model is not None else default)

    @property
    def config(self):
        return self.source.config if self.source is not None else None

    def describe(self) -> str:
        """One line: the two tokenizers and how much of the vocabularies they share."""
        return describe_pair(
            "cross-tokenizer teacher cache of", self.tokenizer, self.student_tokenizer, self.shared[1]
        )

    def check_student(self, student: nn.Module) -> None:
        check_student_rows(self.shared[0], self.student_tokenizer, student)

    def outputs(self, batch: dict, request: TeacherRequest) -> TeacherOutputs:
        check_request(self.name, request)
        if request.logits and all(c in batch for c in CROSS_TOKENIZER_CACHE_COLUMNS):
            return TeacherOutputs(alignment=cached_targets(batch, self.shared))
        if self.source is not None and request:
            return self.source.outputs(batch, request)
        return TeacherOutputs()
