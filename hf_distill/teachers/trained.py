"""Teachers the optimizer trains beside the student: mutual-learning peers and a co-trained teacher.

A :class:`TrainedTeacher` runs with gradients during training. The student learns from its outputs, detached (as
from any teacher); it learns on its own objective, :func:`trained_teacher_losses`, built by the same pure
:func:`~hf_distill.losses.objective.distillation_objective` as the student's:

- a **mutual-learning peer** (Zhang et al., 2018, deep mutual learning): its task loss plus the logit KD term
  towards the other models' current predictions (the student and the other peers, detached, their distributions
  averaged: the same gradient as DML's mean of the KL terms);
- a **co-trained teacher**: its task loss only (fine-tuned on the task while the student distils from it).

Its parameters are an optimizer group of their own (its own learning rate), its weights go into every checkpoint
(:meth:`state_dict`) and into ``output_dir/<save_dir>`` when the student is saved.
"""

from __future__ import annotations

import dataclasses
import os

import torch
from accelerate.utils import DistributedType
from torch import nn

from ..distributed import teacher_placement
from ..losses.objective import StudentOutputs, distillation_objective
from ..models import unwrap
from .base import TeacherOutputs, TeacherRequest
from .model import ModelTeacher, run_model


class TrainedTeacher(ModelTeacher):
    """A model trained in the same loop as the student, which teaches it with its current outputs.

    Args:
        model: the model (the student's task; any architecture).
        learning_rate: its own learning rate (default: the run's ``learning_rate``).
        learns_from_peers: ``True``: a mutual-learning peer (task loss + KD to the other models); ``False``: a
            co-trained teacher (task loss only).
        save_dir: the folder under the run's ``output_dir`` its weights (and tokenizer) are saved in.
        name: recorded in ``distillation_config.json``.
        columns: ``{forward argument: batch column}`` the model reads (:class:`ModelTeacher`).
    """

    trainable = True

    def __init__(
        self,
        model: nn.Module,
        *,
        learning_rate: float | None = None,
        learns_from_peers: bool = True,
        save_dir: str = "peer",
        name: str | None = None,
        columns: dict[str, str] | None = None,
    ):
        if learning_rate is not None and not learning_rate > 0:
            raise ValueError(f"A trained teacher's learning_rate must be > 0, got {learning_rate}.")
        super().__init__(model, name=name, length_groups=1, columns=columns)
        self.learning_rate, self.learns_from_peers, self.save_dir = learning_rate, learns_from_peers, save_dir

    def prepare(self, accelerator, dtype=None) -> None:
        """Placed like the student (DDP syncs its gradients), in its own dtype: it is trained, not frozen."""
        if accelerator.distributed_type == DistributedType.FSDP or teacher_placement(accelerator) != "replicate":
            raise ValueError(
                f"{self.name} is trained beside the student, which hf_distill supports under DDP or on one process, "
                "not under FSDP or DeepSpeed: train with DDP, or one process."
            )
        self.inner.requires_grad_(True)
        self.model = accelerator.prepare_model(self.inner)

    def parameters_to_train(self) -> list[nn.Parameter]:
        return [p for p in self.inner.parameters() if p.requires_grad]

    def outputs(self, batch: dict, request: TeacherRequest) -> TeacherOutputs:
        """Its outputs, with gradients when they are enabled (training: in ``train()`` mode, dropout on), full
        logits always (its own task loss reads them)."""
        self.model.train(torch.is_grad_enabled())
        request = dataclasses.replace(request, logits=True, chunked=False)
        out, qkv = run_model(self.model, self.inputs(batch), request, inner=self.inner, task=self.task)
        return TeacherOutputs(
            logits=out.logits,
            hidden_states=out.hidden_states if request.hidden_layers else None,
            attentions=out.attentions if request.attention_layers else None,
            qkv=qkv,
        )

    def record(self) -> dict:
        """A co-trained teacher's learning rate (None: the run's ``learning_rate``), for ``distillation_config.json``
        and the model card; a peer records nothing (several peers would share one key)."""
        return {} if self.learns_from_peers else {"teacher_learning_rate": self.learning_rate}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.inner.state_dict())

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.inner.load_state_dict(state, strict=True)

    def save(self, output_dir: str, processing_class=None) -> None:
        folder = os.path.join(output_dir, self.save_dir)
        unwrap(self.inner).save_pretrained(folder)
        if processing_class is not None:
            processing_class.save_pretrained(folder)


def detached(outputs: TeacherOutputs) -> TeacherOutputs:
    """``outputs`` with every tensor cut from the graph (what the student learns from)."""

    def cut(x):
        if isinstance(x, torch.Tensor):
            return x.detach()
        if isinstance(x, list | tuple):
            return type(x)(cut(v) for v in x)
        if isinstance(x, dict):
            return {k: cut(v) for k, v in x.items()}
        return x

    return TeacherOutputs(**{f.name: cut(getattr(outputs, f.name)) for f in dataclasses.fields(outputs)})


def run_teachers(teachers: list, batches: list[dict], requests: list[TeacherRequest]) -> list[TeacherOutputs]:
    """Every teacher's outputs for its batch (``batches``, one per teacher: the columns it may read): frozen ones under ``no_grad``, trained ones with their graph (when
    gradients are enabled). A teacher asked nothing (a no-KD baseline) is not run at all, unless it is trained and
    gradients are enabled (a training step, where its own loss needs its outputs)."""
    outs = []
    for teacher, batch, request in zip(teachers, batches, requests, strict=True):
        if teacher.trainable and (request or torch.is_grad_enabled()):
            outs.append(teacher.outputs(batch, request))
        elif request:
            with torch.no_grad():
                outs.append(teacher.outputs(batch, request))
        else:
            outs.append(TeacherOutputs())
    return outs


def trained_teacher_losses(
    settings, teachers: list, outputs: list[TeacherOutputs], student_logits, *, labels, attention_mask, targets, tokens
) -> tuple[torch.Tensor | float, dict[str, torch.Tensor]]:
    """The summed objectives of the trained teachers, and their terms as ``<save_dir>/<term>``.

    A peer: the student's ``alpha_task`` and ``alpha_logits``, its soft targets the other models' current logits
    (``student_logits`` ``(B, C)`` / ``(B, T, V)`` and the other peers', detached). A co-trained teacher: its task
    loss alone. No hidden-state or attention term (the layer maps are the student's).
    """
    total, terms = 0.0, {}
    live = [(t, o) for t, o in zip(teachers, outputs, strict=True) if t.trainable]
    for teacher, out in live:
        if teacher.learns_from_peers:
            others = [o.logits.detach() for t, o in live if t is not teacher]
            sources = [TeacherOutputs(logits=z) for z in [student_logits.detach(), *others]]
            own = dataclasses.replace(settings, alpha_hidden=0.0, alpha_attention=0.0, teacher_weights=None)
        else:
            sources = []
            own = dataclasses.replace(
                settings, alpha_task=1.0, alpha_logits=0.0, alpha_hidden=0.0, alpha_attention=0.0, teacher_weights=None
            )
        loss, own_terms = distillation_objective(
            own,
            StudentOutputs(logits=out.logits),
            sources,
            [],
            labels=labels,
            attention_mask=attention_mask,
            targets=targets,
            tokens=tokens,
        )
        total = total + loss
        terms.update({f"{teacher.save_dir}/{k}": v for k, v in own_terms.items()})
    return total, terms
