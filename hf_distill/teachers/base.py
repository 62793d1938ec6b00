"""What a teacher is to the trainer: a source that, given a batch and what the active losses need, returns its
outputs for that batch in one structure.

A kind of teacher subclasses :class:`Teacher` and implements :meth:`Teacher.outputs`; the trainer never asks which
kind it holds. The kinds here: :class:`~hf_distill.teachers.ModelTeacher` (a frozen model run live),
:class:`~hf_distill.teachers.TopKCacheTeacher` (soft targets stored beside the data) and
:class:`~hf_distill.teachers.EncoderCacheTeacher` (an encoder's logits and internals, stored once) and
:class:`~hf_distill.teachers.EMATeacher` (the moving average of the student's own weights, which changes as it trains:
hence the hooks :meth:`Teacher.on_optimizer_step`, :meth:`Teacher.on_train_end` and the checkpoint state).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from torch import nn

from ..constants import TEACHER_CACHE_COLUMNS
from ..losses.cross_tokenizer_chunked import CachedCrossTokenizerTargets, CrossTokenizerTargets
from .columns import model_inputs, read_columns


@dataclass(frozen=True)
class TeacherRequest:
    """What the active losses need from a model for one batch (the student is asked the same way).

    Layers are numbered as in ``outputs.hidden_states`` (0: the embedding output, ``i``: transformer block ``i``),
    as in :class:`hf_distill.mapping.LayerMatch`.

    Attributes:
        logits: soft targets: full logits, or the top-k log-probabilities of a teacher that keeps only those.
        chunked: the causal-LM loss computes logits chunk by chunk: give the last hidden state and the linear output
            head instead of ``(B, T, V)`` logits (a teacher that cannot may give logits or top-k instead).
        hidden_layers: hidden states to compare (hidden-state KD).
        attention_layers: blocks (``>= 1``) whose attention maps are compared (needs eager attention).
        qkv_layers: blocks whose query/key/value projections are compared (self-relation KD).
    """

    logits: bool = False
    chunked: bool = False
    hidden_layers: tuple[int, ...] = ()
    attention_layers: tuple[int, ...] = ()
    qkv_layers: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        """Whether anything is asked at all (a teacher asked nothing is not run)."""
        return self.logits or bool(self.hidden_layers or self.attention_layers or self.qkv_layers)


@dataclass
class TeacherOutputs:
    """One teacher's outputs for one batch of ``B`` rows and ``T`` positions (those of ``input_ids``, unshifted:
    the losses shift causal-LM outputs themselves). Only what was asked is filled; the rest is ``None`` / empty.

    Attributes:
        logits: ``(B, C)`` sequence classification, ``(B, T, C)`` token classification, ``(B, T, V)`` causal LM.
        topk_ids, topk_logprobs: ``(B, T, k)`` integer ids and their log-probabilities at the training temperature,
            normalised over the whole vocabulary; row ``t`` is the distribution of token ``t + 1`` (causal LMs).
        last_hidden: ``(B, T, D)`` the last hidden state, with ``head`` the linear output head (weight ``(V, D)``):
            the logits the chunked causal-LM loss computes chunk by chunk.
        hidden_states: indexed by layer (``hidden_states[i]`` is ``(B, T, D)``); layers not asked for may be ``None``.
        attentions: ``attentions[i - 1]`` is block ``i``'s map ``(B, H, T, T)`` (as transformers returns them).
        qkv: ``{block: [q (B, T, Dq), k (B, T, Dk), v (B, T, Dv)]}``, or for each of them its self-relations
            computed ahead, a :class:`hf_distill.losses.attention.RelationTarget` (an encoder cache of relations).
        alignment: a teacher with another tokenizer (:class:`hf_distill.teachers.CrossTokenizerTeacher`): its
            ``last_hidden`` ``(B, T_t, D)`` and ``head`` are on its own rows, and this
            :class:`hf_distill.losses.cross_tokenizer_chunked.CrossTokenizerTargets` pairs its positions with the student's;
            from a cross-tokenizer teacher cache (:class:`hf_distill.teachers.CrossTokenizerCacheTeacher`), a
            :class:`~hf_distill.losses.cross_tokenizer_chunked.CachedCrossTokenizerTargets` holds its top-k at the
            student's positions instead, without ``last_hidden``.
    """

    logits: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    last_hidden: torch.Tensor | None = None
    head: nn.Module | None = None
    hidden_states: tuple | None = None
    attentions: tuple | None = None
    qkv: dict[int, list[torch.Tensor]] = field(default_factory=dict)
    alignment: CrossTokenizerTargets | CachedCrossTokenizerTargets | None = None

    @property
    def has_soft_targets(self) -> bool:
        """Whether these outputs carry something a logit loss can read (logits, top-k, hidden state and head, or a
        cross-tokenizer cache's targets)."""
        return (
            self.logits is not None
            or self.topk_ids is not None
            or self.last_hidden is not None
            or isinstance(self.alignment, CachedCrossTokenizerTargets)
        )


def check_soft_targets(outputs: list[TeacherOutputs]) -> None:
    """Refuse to train a logit term on outputs of which none carries soft targets."""
    if not any(o.has_soft_targets for o in outputs):
        raise ValueError(
            "alpha_logits > 0 but there is no teacher and this batch has no teacher cache columns "
            f"{list(TEACHER_CACHE_COLUMNS)}."
        )


class Teacher(ABC):
    """A source of teacher outputs. Subclass it and implement :meth:`outputs`.

    Attributes:
        name: what ``distillation_config.json`` records for this teacher.
        config: the teacher's model config (a ``PretrainedConfig``, or any object with ``num_hidden_layers``,
            ``hidden_size``, ``num_attention_heads``, ``num_labels``...): what layer maps, projection widths and the
            label-space check read. ``None`` when the teacher gives soft targets only.
        model: the live ``nn.Module``, or ``None``. Generation (``seq_kd``) and the vocabulary checks need one.
    """

    name: str = "teacher"
    config = None
    model: nn.Module | None = None
    trainable: bool = False  # trained by the optimizer beside the student (see hf_distill.teachers.TrainedTeacher)
    # {forward argument: batch column} the model reads (hf_distill.teachers.columns); None: the batch's model inputs
    columns: dict[str, str] | None = None

    def inputs(self, batch: dict) -> dict:
        """The forward arguments of this teacher's model for ``batch``: its column map's, or the batch's model inputs
        (the trainer has removed the columns other teachers' maps claim)."""
        if self.columns:
            return read_columns(batch, self.columns, f"{self.name}'s column map")
        return model_inputs(batch)

    @abstractmethod
    def outputs(self, batch: dict, request: TeacherRequest) -> TeacherOutputs:
        """The teacher's outputs for ``batch`` (the collated batch: ``input_ids``, ``attention_mask``, ``labels``
        and any extra columns such as a teacher cache), with at least what ``request`` asks. Called under
        ``torch.no_grad()``; nothing returned may need a gradient."""

    def prepare(self, accelerator, dtype: torch.dtype | str | None = None) -> None:
        """Called once by the trainer after ``Trainer.__init__``, to place the teacher for the run's strategy (on
        ``accelerator.device``, in ``dtype``). By default a ``model`` is only frozen (``eval()``, no gradients)."""
        if self.model is not None:
            self.model.eval().requires_grad_(False)

    # ---- teachers that change during training (an EMA of the student...); a frozen teacher keeps these defaults ----

    def on_optimizer_step(self, student: nn.Module) -> None:
        """Called after each optimizer step with the student (unwrapped by the caller as far as it can)."""
        return None

    def on_train_end(self, student: nn.Module) -> None:
        """Called once when training ends, before the trainer returns."""
        return None

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors a checkpoint must hold to resume this teacher: ``{}`` for one that does not change."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        return None

    def parameters_to_train(self) -> list[nn.Parameter]:
        """The parameters the optimizer trains (a ``trainable`` teacher's; none for a frozen one)."""
        return []

    def save(self, output_dir: str, processing_class=None) -> None:
        """Called when the student is saved to ``output_dir``: a trained teacher saves itself beside it."""
        return None

    def check_student(self, student: nn.Module) -> None:
        """Refuse, in one ``ValueError`` line, a student this teacher cannot serve (called before training)."""
        return None

    def record(self) -> dict:
        """Settings this teacher ran with that ``distillation_config.json`` must show over the config's (a teacher
        built by the user carries its own): ``{}`` for none."""
        return {}

    @property
    def num_hidden_layers(self) -> int:
        return self.config.num_hidden_layers

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size


class CachedTeacher(Teacher):
    """A teacher whose outputs were stored once, with an optional live ``source`` :class:`Teacher` for what the store
    does not hold: its ``model`` and its placement are the source's."""

    source: Teacher | None = None

    @property
    def model(self):
        return self.source.model if self.source is not None else None

    def prepare(self, accelerator, dtype=None) -> None:
        if self.source is not None:
            self.source.prepare(accelerator, dtype)
