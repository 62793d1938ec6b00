"""A frozen model run live as the teacher: in ``eval()`` under ``no_grad``, placed per strategy (DDP replica, FSDP2
shards, ZeRO-3 engine: :func:`hf_distill.distributed.place_teacher`), asked for exactly what the losses need, and run
on groups of rows of similar length when that skips padding (:mod:`hf_distill.teachers.length_buckets`).

:func:`run_model` is the one forward both the student and a live teacher go through.
"""

from __future__ import annotations

import torch
from torch import nn

from ..distributed import place_teacher, teacher_placement
from ..losses.lengths import length_groups, valid_lengths
from ..models import capture_qkv, infer_task, load_model, unwrap
from .base import Teacher, TeacherOutputs, TeacherRequest
from .columns import parse_column_map
from .length_buckets import merge_outputs, merge_records, split_batch


def forward_kwargs(request: TeacherRequest, config, task: str) -> dict:
    """The forward arguments that make a transformers model return what ``request`` asks (and no more)."""
    kwargs = {}
    hidden = set(request.hidden_layers)
    if request.chunked:  # the loss computes the logits from the last hidden state: keep one position of logits
        hidden.add(config.num_hidden_layers)
        kwargs["logits_to_keep"] = 1
    if hidden:
        kwargs["output_hidden_states"] = sorted(hidden)  # transformers keeps those entries only
    if request.attention_layers:
        kwargs["output_attentions"] = True
    if task == "causal_lm":
        kwargs["use_cache"] = False  # a training step needs no key/value cache (180 MB for SmolLM2 at 8 x 512)
    return kwargs


def run_model(model: nn.Module, inputs: dict, request: TeacherRequest, *, inner: nn.Module, task: str):
    """``(outputs, qkv)`` of ``model(**inputs)`` asked for what ``request`` needs; ``inner`` is the transformers
    model inside any wrapper (its config and blocks), ``qkv`` the captured ``{block: [q, k, v]}``."""
    with capture_qkv(inner, list(request.qkv_layers)) as qkv:
        outputs = model(**inputs, **forward_kwargs(request, inner.config, task))
    return outputs, qkv


class ModelTeacher(Teacher):
    """A frozen transformers model as the teacher.

    Args:
        model: the teacher model (any task the student solves).
        name: recorded in ``distillation_config.json``; default the model's ``name_or_path``.
        length_groups: run the forward on up to this many groups of rows of similar length, each without its
            padding (same outputs); ``None``: 4 on a CPU, 1 (off) on an accelerator. Encoders only.
        columns: ``{forward argument: batch column}`` the model reads (:mod:`hf_distill.teachers.columns`), e.g. the
            clean text in ``teacher_input_ids`` while the student reads the noised ``input_ids``; ``None``: the
            batch's model inputs.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        name: str | None = None,
        length_groups: int | None = None,
        columns: dict[str, str] | None = None,
    ):
        self.model = model
        # the transformers model itself: placement may wrap `model` (a ZeRO-3 engine), never this one
        self.inner = unwrap(model)
        self.config = self.inner.config
        self.task = infer_task(model)
        self.name = name or self.config.name_or_path or f"{type(model).__name__} (built in memory)"
        self.length_groups = length_groups
        self.placement = "replicate"
        self.columns = parse_column_map(columns, f"{self.name}'s columns")

    @classmethod
    def from_pretrained(cls, name_or_path: str, task: str, *, length_groups: int | None = None, **load_kwargs):
        """Load the teacher by Hub name or local folder (:func:`hf_distill.models.load_model` keywords)."""
        return cls(load_model(name_or_path, task, **load_kwargs), length_groups=length_groups)

    def prepare(self, accelerator, dtype=None) -> None:
        """Freeze the model and replicate, shard or wrap it as the run's strategy wants."""
        self.placement = teacher_placement(accelerator)
        self.model = place_teacher(self.model, accelerator, dtype)

    @torch.no_grad()
    def outputs(self, batch: dict, request: TeacherRequest) -> TeacherOutputs:
        if self.model.training:  # not prepared yet (used on its own): a teacher never runs with dropout
            self.model.eval()
        inputs = self.inputs(batch)
        groups = self._groups(inputs)
        if groups is None:
            out, qkv = self._forward(inputs, request)
        else:  # rows are independent and padded positions masked: the same outputs on fewer tokens
            seq_len = inputs["attention_mask"].shape[1]
            parts = [self._forward(split_batch(inputs, rows, n, seq_len), request) for rows, n in groups]
            batch_size, token_logits = inputs["attention_mask"].shape[0], self.task == "token_classification"
            out = merge_outputs([p[0] for p in parts], groups, batch_size, seq_len, token_logits)
            qkv = merge_records([p[1] for p in parts], groups, batch_size, seq_len)
        chunked = request.logits and request.chunked
        return TeacherOutputs(
            logits=out.logits if request.logits and not chunked else None,
            last_hidden=out.hidden_states[self.config.num_hidden_layers] if chunked else None,
            head=self.inner.get_output_embeddings() if chunked else None,
            hidden_states=out.hidden_states if request.hidden_layers else None,
            attentions=out.attentions if request.attention_layers else None,
            qkv=qkv,
        )

    def _forward(self, inputs: dict, request: TeacherRequest):
        return run_model(self.model, inputs, request, inner=self.inner, task=self.task)

    def _groups(self, inputs: dict):
        """Length groups for the forward, or None to run it on the whole batch."""
        mask = inputs.get("attention_mask")
        if self.task == "causal_lm" or mask is None or mask.dim() != 2:
            return None
        # a sharded teacher (FSDP2, ZeRO-3) runs collectives per forward: every rank must run as many
        if self.placement != "replicate":
            return None
        most = self.length_groups
        if most is None:
            most = 4 if next(self.model.parameters()).device.type == "cpu" else 1
        if most == 1:
            return None
        lengths = valid_lengths(mask)
        if lengths is None or not bool((lengths > 0).all()):  # left padding, or an empty row: run whole
            return None
        groups = length_groups(lengths, max_groups=most)
        return None if len(groups) == 1 and groups[0][1] == mask.shape[1] else groups


def _storage(p: torch.Tensor) -> int | None:
    """Address of a parameter's memory, ``None`` where it has none to compare (meta, empty, sharded wrappers)."""
    try:
        return (p.untyped_storage().data_ptr() or None) if p.numel() and p.device.type != "meta" else None
    except (RuntimeError, NotImplementedError):  # e.g. a DeepSpeed ZeRO-3 or FSDP placeholder
        return None


def check_distinct(student: nn.Module, teachers: list[Teacher]) -> None:
    """Refuse a teacher whose model is the student, or shares a parameter tensor with it: training the student would
    move its own targets (and the teacher's frozen copy would freeze the student); and one that cannot serve this
    student (:meth:`Teacher.check_student`)."""
    inner = unwrap(student)
    params = {id(p) for p in inner.parameters()}
    storages = {_storage(p) for p in inner.parameters()} - {None}
    fix = "pass a separate copy as the teacher (copy.deepcopy(model), or load it again)"
    for i, teacher in enumerate(teachers):
        teacher.check_student(student)
        model = teacher.model
        if model is None:
            continue
        if model is student or model is inner:
            raise ValueError(f"teacher_model[{i}] is the student model itself; {fix}.")
        shared = [name for name, p in model.named_parameters() if id(p) in params or _storage(p) in storages]
        if shared:
            raise ValueError(
                f"teacher_model[{i}] shares {len(shared)} parameter tensor(s) with the student (e.g. {shared[0]!r}); "
                f"{fix}."
            )
