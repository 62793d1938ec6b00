"""The distillation objective: the weighted sum of the active terms, from the student's and the teachers' outputs.

Pure: tensors, layer matches and one frozen :class:`ObjectiveSettings` in; ``(total, {term: value})`` out. No
trainer, no config object, no model is run here. The terms, each normalised by its item count (see
:mod:`hf_distill.losses.reduction`):

- ``task``: the student's own loss on the labels, over ``targets`` items;
- ``logits``: the divergence to the teachers' soft targets, mixed with the teacher weights
  (:func:`~hf_distill.losses.logits.mix_teacher_logits`), or to one teacher's top-k cache, over ``targets`` items;
- ``hidden``, ``attention``: for each teacher, the sum over its layer matches (:mod:`hf_distill.losses.matched`),
  then the teachers' values weighted like the logits, over ``tokens`` items. With two teachers or more each
  teacher's value is a term too, ``hidden/teacher_0``, ``attention/teacher_1``... (``i`` indexes the teachers).

``total = alpha_task * task + alpha_logits * logits + scale * (alpha_hidden * hidden + alpha_attention * attention)``
with ``scale`` the intermediate schedule's factor. On the chunked path (the student gives its last hidden state and
head instead of logits) ``task`` and ``logits`` come from :func:`~hf_distill.losses.token.fused_causal_lm_loss`.

Teacher outputs are read by attribute (``logits``, ``topk_ids``, ``topk_logprobs``, ``last_hidden``, ``head``,
``hidden_states``, ``attentions``, ``qkv``), as :class:`hf_distill.teachers.TeacherOutputs` holds them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .cross_tokenizer import ULD_TOP_K, CrossTokenizerMix
from .cross_tokenizer_chunked import cross_tokenizer_term
from .logits import mix_teacher_logits
from .matched import attention_term, hidden_term
from .reduction import count_items
from .registry import get_loss
from .task import align_logits, check_labels, target_mask, task_loss
from .token import TeacherTargets, fused_causal_lm_loss
from .topk import topk_token_kd

_INTERMEDIATE = ("hidden", "attention")
_NO_CLASSES = ("regression", "multi_label_classification")  # float labels: no class ids to check


@dataclass(frozen=True)
class ObjectiveSettings:
    """The weights and options of the objective, built once from the config (``hf_distill.distillation_plan``).

    ``logit_loss`` is already the one the problem type allows (``mse`` for regression heads); ``teacher_weights``
    one non-negative weight per teacher (``None``: equal); ``relation_heads`` one per teacher (self-relation KD);
    ``vocab_rows`` the shared output rows logit KD compares (``None``: all); ``chunk_size`` the tokens per chunk of
    the chunked causal-LM loss; ``cross_tokenizer`` and ``uld_top_k`` the parts of the logit term of a teacher with
    another tokenizer.
    """

    task: str
    alpha_task: float = 0.5
    alpha_logits: float = 0.5
    alpha_hidden: float = 0.0
    alpha_attention: float = 0.0
    temperature: float = 1.0
    logit_loss: str = "kl"
    beta: float = 0.5
    label_smoothing: float = 0.0
    head_reduction: str = "none"
    problem_type: str | None = None
    vocab_rows: int | None = None
    teacher_weights: tuple[float, ...] | None = None
    relation_heads: tuple[int, ...] = ()
    chunk_size: int = 256
    cross_tokenizer: CrossTokenizerMix = field(default_factory=CrossTokenizerMix)
    uld_top_k: int | None = ULD_TOP_K

    def weights(self, num_teachers: int) -> list[float]:
        """The raw teacher weights (equal when none are set)."""
        return list(self.teacher_weights) if self.teacher_weights is not None else [1.0] * num_teachers

    def shares(self, num_teachers: int) -> list[float]:
        """The teacher weights normalised to sum 1: how much each teacher's hidden and attention terms count."""
        weights = self.weights(num_teachers)
        return [w / sum(weights) for w in weights]


@dataclass
class StudentOutputs:
    """The student's outputs for one batch (unshifted, as its forward returns them).

    ``logits`` ``(B, C)`` / ``(B, T, V)``, or on the chunked causal-LM path ``last_hidden`` ``(B, T, D)`` and its
    linear ``head`` instead. ``projected``: ``{match.key: (B, T, Dt)}``, the student's state of each hidden match
    already projected to that teacher's width. ``attentions[i - 1]`` ``(B, H, T, T)`` for block ``i``; ``qkv``
    ``{block: [q, k, v]}`` ``(B, T, D_x)`` each.
    """

    logits: torch.Tensor | None = None
    last_hidden: torch.Tensor | None = None
    head: nn.Module | None = None
    projected: dict[str, torch.Tensor] = field(default_factory=dict)
    attentions: tuple | None = None
    qkv: dict = field(default_factory=dict)


@dataclass
class ItemCounts:
    """Loss normalisers: prediction targets (examples or tokens) and real tokens, with the DDP rescale factor."""

    targets: float
    tokens: float
    scale: float = 1.0


def count_batch_items(task: str, labels, attention_mask, input_ids) -> tuple[int, int]:
    """``(targets, tokens)`` of one batch: the items of the task and logit terms (examples, or target positions of
    the aligned logits) and of the hidden and attention terms (real tokens)."""
    shape = input_ids.shape if input_ids is not None else attention_mask.shape
    aligned = shape[:1] if task == "sequence_classification" else (shape[0], shape[1] - (task == "causal_lm"))
    targets = count_items(target_mask(task, labels, attention_mask, aligned), aligned)
    return targets, count_items(attention_mask, shape)


def distillation_objective(
    settings: ObjectiveSettings,
    student: StudentOutputs,
    teachers: list,
    matches: list,
    *,
    labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    targets: float,
    tokens: float,
    intermediate_scale: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, terms)`` for one batch (see the module docstring).

    Args:
        settings: weights and options.
        student: the student's outputs.
        teachers: one outputs record per teacher (:class:`hf_distill.teachers.TeacherOutputs`); empty without KD.
        matches: the layer matches of every teacher (``LayerMatch``; ``match.teacher`` indexes ``teachers``).
        labels: ``(B,)`` / ``(B, T)`` raw, unshifted labels, or ``None``.
        attention_mask: ``(B, T)``, 1 for real tokens.
        targets, tokens: the normalisers of the task/logit terms and of the hidden/attention terms.
        intermediate_scale: the factor on ``alpha_hidden`` and ``alpha_attention`` at this step.
    """
    s = settings
    if student.logits is None:
        total, terms = _chunked_terms(s, student, teachers, labels, attention_mask, targets)
    else:
        terms = _output_terms(s, student, teachers, labels, attention_mask, targets)
        total = sum(getattr(s, f"alpha_{k}") * v for k, v in terms.items())
    crossed = [t for t in teachers if t.alignment is not None] if s.alpha_logits > 0 else []
    if crossed:  # a teacher with another tokenizer: its logit term over the aligned positions
        terms["logits"], parts = _cross_tokenizer_term(s, student, crossed, labels, attention_mask, targets)
        terms.update({f"logits/{name}": value for name, value in parts.items()})
        total = total + s.alpha_logits * terms["logits"]
    shares = s.shares(len(teachers))
    for feature in _INTERMEDIATE:
        if getattr(s, f"alpha_{feature}") == 0:
            continue
        per_teacher = {}
        for i, teacher in enumerate(teachers):
            own = [m for m in matches if m.teacher == i and m.feature == feature]
            if own and shares[i] > 0:
                term = _hidden_term if feature == "hidden" else _attention_term
                per_teacher[i] = term(s, i, own, student, teacher, attention_mask, tokens)
        if per_teacher:
            terms[feature] = sum(shares[i] * value for i, value in per_teacher.items())
            if len(teachers) > 1:
                terms.update({f"{feature}/teacher_{i}": value for i, value in per_teacher.items()})
    active = [k for k in _INTERMEDIATE if k in terms]
    if active:
        total = total + sum(intermediate_scale * getattr(s, f"alpha_{k}") * terms[k] for k in active)
    return total, terms


def _soft_sources(settings: ObjectiveSettings, teachers: list) -> list[tuple[float, object]]:
    """``(weight, outputs)`` of the teachers that give soft targets for this batch (none when ``alpha_logits`` is 0)."""
    if settings.alpha_logits == 0:
        return []
    weights = settings.weights(len(teachers))
    if any(t.alignment is not None for t in teachers) and len(teachers) > 1:
        raise ValueError(
            f"{len(teachers)} teachers, one with another tokenizer than the student: its predictions cannot be "
            "mixed with another teacher's; distil from it alone."
        )
    sources = [(w, t) for w, t in zip(weights, teachers, strict=True) if t.has_soft_targets and t.alignment is None]
    if len(sources) > 1 and any(t.topk_ids is not None for _, t in sources):
        raise ValueError(
            f"{len(sources)} teachers give soft targets and one of them a top-k cache, which cannot be mixed with "
            "another teacher's distribution: distil from one cached teacher, or from live teachers only."
        )
    return sources


def _output_terms(s: ObjectiveSettings, student, teachers, labels, attention_mask, targets) -> dict:
    """The task and logit terms from full logits."""
    terms = {}
    s_logits = align_logits(student.logits, s.task)
    mask = target_mask(s.task, labels, attention_mask, s_logits.shape[:-1])
    if s.alpha_task > 0 and labels is not None:
        terms["task"] = task_loss(
            s_logits,
            labels,
            task=s.task,
            problem_type=s.problem_type,
            normalizer=targets,
            label_smoothing=s.label_smoothing,
        )
    elif labels is not None and s.problem_type not in _NO_CLASSES:
        check_labels(labels, s_logits.shape[-1], "vocab_size" if s.task == "causal_lm" else "num_labels")
    sources = _soft_sources(s, teachers)
    if not sources:
        return terms
    rows = s.vocab_rows
    kw = {"mask": mask, "temperature": s.temperature, "normalizer": targets, "beta": s.beta}
    s_kd = s_logits[..., :rows] if rows else s_logits
    (_, first), *_ = sources
    if first.topk_ids is not None:
        ids, logprobs = (align_logits(x, s.task) for x in (first.topk_ids, first.topk_logprobs))
        terms["logits"] = topk_token_kd(s_kd, ids, logprobs, loss=s.logit_loss, **kw)
        return terms
    t_logits = [align_logits(_full_logits(t), s.task) for _, t in sources]
    t_logits = [t[..., :rows] if rows else t for t in t_logits]
    target = mix_teacher_logits(t_logits, [w for w, _ in sources], s.temperature, s.logit_loss)
    terms["logits"] = get_loss("logits", s.logit_loss)(s_kd, target, **kw)
    return terms


def _full_logits(teacher) -> torch.Tensor:
    """A teacher's logits, computed from its last hidden state and head when it gave those instead."""
    if teacher.logits is not None:
        return teacher.logits
    head = teacher.head
    return head(teacher.last_hidden.to(head.weight.dtype))


def _chunked_terms(s: ObjectiveSettings, student, teachers, labels, attention_mask, targets):
    """The causal LM's task and logit terms, chunked from the student's last hidden states (no full logits)."""
    s_hidden = align_logits(student.last_hidden, s.task)  # (B, T-1, D)
    mask = target_mask(s.task, labels, attention_mask, s_hidden.shape[:-1])
    sources = _soft_sources(s, teachers)
    soft = None
    if sources:
        weights = [w for w, _ in sources]
        outs = [t for _, t in sources]
        if outs[0].topk_ids is not None:
            ids, logprobs = (align_logits(x, s.task) for x in (outs[0].topk_ids, outs[0].topk_logprobs))
            soft = TeacherTargets(topk_ids=ids, topk_logprobs=logprobs)
        elif all(t.last_hidden is not None for t in outs):
            hidden = [align_logits(t.last_hidden, s.task) for t in outs]
            soft = TeacherTargets(hidden=hidden, heads=[t.head for t in outs], weights=weights)
        else:
            soft = TeacherTargets(logits=[align_logits(_full_logits(t), s.task) for t in outs], weights=weights)
    return fused_causal_lm_loss(
        s_hidden,
        student.head,
        labels=labels[:, 1:] if labels is not None else None,
        mask=mask,
        teacher=soft,
        alpha_task=s.alpha_task,
        alpha_logits=s.alpha_logits,
        loss=s.logit_loss,
        temperature=s.temperature,
        beta=s.beta,
        vocab_rows=s.vocab_rows,
        label_smoothing=s.label_smoothing,
        normalizer=targets,
        chunk_size=s.chunk_size,
    )


def _cross_tokenizer_term(s: ObjectiveSettings, student, teachers, labels, attention_mask, targets):
    """The logit term of the one teacher with another tokenizer (``losses.cross_tokenizer_chunked``), at the
    student positions whose next token is a target (as the same-tokenizer term: ``target_mask``)."""
    (teacher,) = teachers
    hidden, head = (student.last_hidden, student.head) if student.logits is None else (student.logits, None)
    batch, length = hidden.shape[:2]
    keep = target_mask(s.task, labels, attention_mask, (batch, length - 1))  # (B, T - 1): position p predicts p + 1
    keep = None if keep is None else F.pad(keep, (0, 1), value=False)  # (B, T): the last position predicts nothing
    return cross_tokenizer_term(
        hidden, head, teacher.last_hidden, teacher.head, teacher.alignment, normalizer=targets,
        mix=s.cross_tokenizer, loss=s.logit_loss, temperature=s.temperature, beta=s.beta, uld_top_k=s.uld_top_k,
        chunk_size=s.chunk_size or 256, positions=keep,
    )  # fmt: skip


def _missing(index: int, what: str, feature: str) -> ValueError:
    return ValueError(
        f"teacher {index} returned no {what}, which {feature} KD needs: its outputs() must fill what the request asks."
    )


def _hidden_term(s, index, matches, student, teacher, attention_mask, tokens) -> torch.Tensor:
    if teacher.hidden_states is None:
        raise _missing(index, "hidden_states", "hidden-state")
    projected = [student.projected[m.key] for m in matches]
    return hidden_term(matches, projected, teacher.hidden_states, mask=attention_mask, normalizer=tokens)


def _attention_term(s, index, matches, student, teacher, attention_mask, tokens) -> torch.Tensor:
    return attention_term(
        matches,
        student_attentions=student.attentions,
        teacher_attentions=teacher.attentions,
        student_qkv=student.qkv,
        teacher_qkv=teacher.qkv,
        relation_heads=s.relation_heads[index] if s.relation_heads else 1,
        head_reduction=s.head_reduction,
        mask=attention_mask,
        normalizer=tokens,
    )
