"""A causal-LM teacher whose tokenizer differs from the student's (issue 19).

Each batch of student rows is re-encoded for the teacher from its bytes (:mod:`hf_distill.cross_tokenizer.retokenize`:
fixed data and the student's own samples alike), the teacher runs on its own rows with its own special tokens, and
its outputs are its last hidden states and head plus the alignment of its positions with the student's
(:class:`hf_distill.losses.cross_tokenizer_chunked.CrossTokenizerTargets`), from which the objective computes the
cross-tokenizer logit term chunk by chunk (docs/losses.md, "Cross-tokenizer distillation").
"""

from __future__ import annotations

import torch
from torch import nn

from ..cross_tokenizer.align import chain_rule_rows
from ..cross_tokenizer.retokenize import byte_table, retokenize
from ..cross_tokenizer.spans import check_normalisation, check_offsets, tokenizer_name
from ..cross_tokenizer.vocab import describe_shared_vocabulary, shared_vocabulary
from ..losses.cross_tokenizer_chunked import CrossTokenizerTargets
from ..models import NONLINEAR_HEAD_ATTRS
from .base import TeacherOutputs, TeacherRequest
from .model import ModelTeacher, forward_kwargs


def check_request(name: str, request: TeacherRequest) -> None:
    """A teacher with another tokenizer serves the logit term only."""
    if request.hidden_layers or request.attention_layers or request.qkv_layers:
        raise ValueError(
            f"{name} has another tokenizer than the student: its positions are not the student's, so "
            "hidden-state and attention KD cannot pair them; set alpha_hidden=alpha_attention=0."
        )


def describe_pair(what: str, tokenizer, student_tokenizer, teacher_ids: torch.Tensor) -> str:
    """``what`` (the kind of teacher), its tokenizer and the student's, and how much of the vocabularies they share."""
    return (
        f"{what} {tokenizer_name(tokenizer)} -> student {tokenizer_name(student_tokenizer)}: "
        + describe_shared_vocabulary(teacher_ids, tokenizer, student_tokenizer)
    )


def check_student_rows(student_ids: torch.Tensor, student_tokenizer, student: nn.Module) -> None:
    """The student's tokenizer is the student's: its shared ids are rows of the student's output head."""
    rows = student.get_output_embeddings().weight.shape[0] if student.get_output_embeddings() is not None else None
    if rows is not None and len(student_ids) and int(student_ids.max()) >= rows:
        raise ValueError(
            f"The student tokenizer {tokenizer_name(student_tokenizer)!r} has ids up to {int(student_ids.max())} but "
            f"the student has {rows} output rows: pass the student's own tokenizer."
        )


class CrossTokenizerTeacher(ModelTeacher):
    """A frozen causal LM with its own tokenizer as the teacher of a student with another one.

    Args:
        model: the teacher (a causal LM).
        tokenizer: the teacher's tokenizer (fast: it must give character offsets).
        student_tokenizer: the student's (fast as well); the shared vocabulary is computed from both once.
        name: recorded in ``distillation_config.json``.
        max_length: the teacher's rows are cut to this many tokens (default: its ``max_position_embeddings``).

    Only the logit term reads it (hidden-state and attention terms pair positions, which differ between the two
    tokenizations: refused). The job prints :meth:`describe`.
    """

    own_tokenizer = True

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        student_tokenizer,
        *,
        name: str | None = None,
        max_length: int | None = None,
    ):
        super().__init__(model, name=name, length_groups=1)
        if self.task != "causal_lm":
            raise ValueError(
                f"A teacher with another tokenizer must be a causal LM; {type(self.inner).__name__} solves {self.task}."
            )
        # the term computes its logits as head(last hidden state), soft-capped: a scale after the head is not known
        scaled = [
            a
            for a in NONLINEAR_HEAD_ATTRS
            if a != "final_logit_softcapping" and getattr(self.config, a, None) not in (None, 1, 1.0)
        ]
        if scaled:
            raise ValueError(
                f"{self.name} scales its logits after the head ({scaled[0]}={getattr(self.config, scaled[0])}), and "
                "cross-tokenizer KD computes the teacher's logits from its head: its targets would be wrong; pick a "
                "teacher whose logits are its head's output."
            )
        check_offsets(tokenizer, "teacher")
        check_offsets(student_tokenizer, "student")
        check_normalisation(tokenizer, student_tokenizer)
        self.tokenizer, self.student_tokenizer = tokenizer, student_tokenizer
        self.table = byte_table(student_tokenizer)
        teacher_ids, student_ids = shared_vocabulary(tokenizer, student_tokenizer)
        self.shared = (student_ids, teacher_ids)
        self.max_length = max_length or getattr(self.config, "max_position_embeddings", None)
        self.softcap = getattr(self.config, "final_logit_softcapping", None)

    def describe(self) -> str:
        """One line: the two tokenizers and how much of the vocabularies they share."""
        return describe_pair("cross-tokenizer teacher", self.tokenizer, self.student_tokenizer, self.shared[1])

    def check_student(self, student: nn.Module) -> None:
        check_student_rows(self.shared[0], self.student_tokenizer, student)

    @torch.no_grad()
    def outputs(self, batch: dict, request: TeacherRequest) -> TeacherOutputs:
        check_request(self.name, request)
        if self.model.training:
            self.model.eval()
        inputs = self.inputs(batch)
        ids, mask = inputs["input_ids"], inputs.get("attention_mask")
        retok = retokenize(ids, mask, self.table, self.tokenizer, max_length=self.max_length)
        kwargs = forward_kwargs(TeacherRequest(logits=True, chunked=True), self.config, self.task)
        out = self.model(input_ids=retok.input_ids, attention_mask=retok.attention_mask, **kwargs)
        alignment = CrossTokenizerTargets(
            retok.aligned, chain_rule_rows(retok.aligned, retok.input_ids.cpu(), ids.cpu()), self.shared, self.softcap
        )
        return TeacherOutputs(
            last_hidden=out.hidden_states[self.config.num_hidden_layers],
            head=self.inner.get_output_embeddings(),
            alignment=alignment,
        )
