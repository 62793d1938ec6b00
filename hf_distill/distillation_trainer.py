"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss mixes the student's own loss with KD terms."""

from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from dataclasses import asdict, dataclass

import safetensors.torch
import torch
from torch import nn
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from . import __version__
from .capture import capture_qkv
from .checks import check_label_spaces, ensure_eager_attention
from .distillation_config import DISTILLATION_CONFIG_FILE, DistillationConfig
from .distributed import default_teacher_dtype, place_teacher, teacher_placement
from .file_checks import WEIGHT_INDEXES, file_problem, json_problem
from .generation import SamplingRNG, generate_completions
from .length_buckets import length_groups, merge_outputs, merge_records, split_batch, valid_lengths
from .losses import (
    align_logits,
    check_labels,
    count_items,
    get_loss,
    loss_needs,
    mix_teacher_logits,
    target_mask,
    task_loss,
)
from .losses.matched import attention_term, default_relation_heads, hidden_term
from .losses.token import TeacherTargets, fused_causal_lm_loss
from .losses.topk import topk_token_kd
from .mapping import (
    ADAPTERS_ATTR,
    ADAPTERS_FILE,
    DistillationAdapters,
    adapter_state,
    build_layer_matches,
    disable_attention_dropout,
    resolve_layer_pairs,
    strip_adapters,
)
from .modeling import fused_loss_blockers, infer_task, load_model, resolve_dtype, unwrap
from .schedules import intermediate_scale
from .teacher_cache import TEACHER_CACHE_COLUMNS
from .trainer_hub import HubPushMixin
from .vocab import load_tokenizer_for, shared_vocab_rows

logger = logging.getLogger(__name__)

TERMS = ("task", "logits", "hidden", "attention")
# batch columns that are no model inputs but must survive `remove_unused_columns`: the top-k teacher cache and the
# prompts that on-policy / sequence-level KD generate from
GENERATION_COLUMNS = ("prompt_input_ids", "prompt_attention_mask", "prompt_length")
EXTRA_COLUMNS = (*TEACHER_CACHE_COLUMNS, *GENERATION_COLUMNS)
# the on-policy / sequence-level KD random stream in a checkpoint (one file per process, as the Trainer's RNG states)
SAMPLING_STATE_FILE = "hf_distill_sampling_state{}.pth"
# the student's weights in a checkpoint, one of these (FSDP and DeepSpeed checkpoints hold their own formats)
CHECKPOINT_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
    *WEIGHT_INDEXES,
)


@dataclass
class ItemCounts:
    """Loss normalisers: prediction targets (examples or tokens) and real tokens, with the DDP rescale factor."""

    targets: float
    tokens: float
    scale: float = 1.0


def _storage(p: torch.Tensor) -> int | None:
    """Address of a parameter's memory, ``None`` where it has none to compare (meta, empty, sharded wrappers)."""
    try:
        return (p.untyped_storage().data_ptr() or None) if p.numel() and p.device.type != "meta" else None
    except (RuntimeError, NotImplementedError):  # e.g. a DeepSpeed ZeRO-3 or FSDP placeholder
        return None


def _check_distinct(student: nn.Module, teachers: list[nn.Module]) -> None:
    """Refuse a teacher that is the student, or that shares a parameter tensor with it: training the student would
    move its own targets (and the teacher's frozen copy would freeze the student)."""
    inner = unwrap(student)
    params = {id(p) for p in inner.parameters()}
    storages = {_storage(p) for p in inner.parameters()} - {None}
    fix = "pass a separate copy as the teacher (copy.deepcopy(model), or load it again)"
    for i, teacher in enumerate(teachers):
        if teacher is student or teacher is inner:
            raise ValueError(f"teacher_model[{i}] is the student model itself; {fix}.")
        shared = [name for name, p in teacher.named_parameters() if id(p) in params or _storage(p) in storages]
        if shared:
            raise ValueError(
                f"teacher_model[{i}] shares {len(shared)} parameter tensor(s) with the student (e.g. {shared[0]!r}); "
                f"{fix}."
            )


class DistillationTrainer(HubPushMixin, Trainer):
    """Train ``model`` (the student) to match ``teacher_model`` as configured by a [`DistillationConfig`].

    ``teacher_model`` is a model, a Hub name / local folder, or a list of them (their soft targets are averaged with
    ``args.teacher_weights``; hidden-state and attention KD use the first teacher). It may be left out when the
    training data carries a top-k teacher cache (:mod:`hf_distill.teacher_cache`). ``teacher_processing_class`` is
    the teacher's tokenizer, compared with the student's (``processing_class``) before token-level KD; by default it
    is loaded from the teacher's folder, or taken to be the student's. Every other argument is the ``Trainer``'s.
    """

    # compute_loss normalises by the item count of the whole accumulation window itself
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model=None,
        teacher_model=None,
        args: DistillationConfig | None = None,
        teacher_processing_class=None,
        **kwargs,
    ):
        if args is None:
            args = DistillationConfig(output_dir="tmp_trainer")
        if not isinstance(args, DistillationConfig):
            raise ValueError(f"args must be a DistillationConfig, got {type(args).__name__}.")
        if model is None or isinstance(model, str):
            raise ValueError("DistillationTrainer needs the student model object as `model` (see build_student).")
        self.task = infer_task(model)
        self.teachers = self._load_teachers(teacher_model, args, kwargs.get("train_dataset"))
        _check_distinct(model, self.teachers)
        self._check_pair(model, args, kwargs.get("processing_class"), teacher_processing_class)
        self.matches = self._build_matches(model, args)
        adapters = None
        if self.matches:
            adapters = DistillationAdapters(self.matches, unwrap(model).config.hidden_size, self._teacher_width())
        if adapters is not None and len(adapters):
            inner = unwrap(model)
            inner.add_module(ADAPTERS_ATTR, adapters)
            # training-only weights: a plain `student.save_pretrained()` leaves them out too, not just save_model
            ignored = {f"{ADAPTERS_ATTR}.{key}" for key in adapters.state_dict()}
            inner._keys_to_ignore_on_save = set(inner._keys_to_ignore_on_save or ()) | ignored
        super().__init__(model=model, args=args, **kwargs)
        self._place_teachers()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._window_counts: ItemCounts | None = None
        blockers = self._fused_loss_blockers(model) if self.task == "causal_lm" else []
        if blockers and args.kd_chunk_size > 0:
            logger.warning("kd_chunk_size: computing full logits instead of chunks, as %s.", "; ".join(blockers))
        self._fused = self.task == "causal_lm" and args.kd_chunk_size > 0 and not blockers
        self._sampling = SamplingRNG(args.seed, rank=args.process_index)
        self._log_setup()

    # ---- set-up ----

    def _load_teachers(self, teacher_model, args, train_dataset) -> list[nn.Module]:
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher_model is None:
            cached = all(c in (getattr(train_dataset, "column_names", None) or []) for c in TEACHER_CACHE_COLUMNS)
            if not args.needs_live_teacher(cached):
                return []  # a no-KD baseline, or soft targets that come with the data
            if cached:
                raise ValueError(
                    "Training from a teacher cache without the teacher: hidden-state/attention KD and generated "
                    "completions need the teacher itself (set alpha_hidden=alpha_attention=lmbda=0, seq_kd=False)."
                )
            raise ValueError(
                "No teacher: pass teacher_model=, set teacher_model_name_or_path in the config, or train on data "
                "with a top-k teacher cache (hf_distill.teacher_cache.build_teacher_cache)."
            )
        teachers = list(teacher_model) if isinstance(teacher_model, list | tuple) else [teacher_model]
        if args.teacher_weights is not None and len(args.teacher_weights) != len(teachers):
            raise ValueError(
                f"teacher_weights {args.teacher_weights} has {len(args.teacher_weights)} entries for {len(teachers)} teachers."
            )
        maps = args.alpha_attention > 0 and "attention" in loss_needs("attention", args.attention_loss)
        return [
            load_model(
                t,
                self.task,
                dtype=resolve_dtype(args.teacher_dtype, None) if args.teacher_dtype else None,
                trust_remote_code=args.trust_remote_code,
                attn_implementation="eager" if maps else None,
            )
            if isinstance(t, str)
            else t
            for t in teachers
        ]

    def _check_pair(self, model, args, student_tokenizer=None, teacher_tokenizer=None) -> None:
        student = unwrap(model)
        self.vocab_rows = None  # token-level KD compares the first vocab_rows outputs (padded embeddings differ)
        for teacher in self.teachers:
            if infer_task(teacher) != self.task:
                raise ValueError(f"The student solves {self.task} but a teacher solves {infer_task(teacher)}.")
            if args.alpha_logits > 0 and self.task == "causal_lm":
                rows = shared_vocab_rows(
                    student,
                    teacher,
                    student_tokenizer,
                    teacher_tokenizer or load_tokenizer_for(teacher),
                )
                if self.vocab_rows not in (None, rows):
                    raise ValueError(
                        f"The teachers share {self.vocab_rows} and {rows} vocabulary rows with the student."
                    )
                self.vocab_rows = rows
            elif self.task != "causal_lm":
                check_label_spaces(student.config, teacher.config)
        self.problem_type = student.config.problem_type
        if self.task == "sequence_classification" and student.config.num_labels == 1:
            self.problem_type = "regression"
        self.regression = self.problem_type == "regression"
        if self.problem_type in ("regression", "multi_label_classification") and args.logit_loss != "mse":
            # a softmax over one output (or over independent sigmoid outputs) is no distribution to match
            logger.warning(
                "problem_type=%s: using logit_loss='mse' instead of %r.", self.problem_type, args.logit_loss
            )
        if args.alpha_attention > 0 and "attention" in loss_needs("attention", args.attention_loss):
            s_heads, t_heads = student.config.num_attention_heads, self.teachers[0].config.num_attention_heads
            if s_heads != t_heads and args.attention_head_reduction == "none":
                raise ValueError(
                    f"Attention KD on maps needs equal head counts (student {s_heads}, teacher {t_heads}); set "
                    "attention_head_reduction='mean' or attention_loss='relation'."
                )
            ensure_eager_attention(student, "student")
            ensure_eager_attention(self.teachers[0], "teacher")
            if disable_attention_dropout(student):
                logger.warning("Attention-map KD: set the student's attention-probability dropout to 0.")

    def _teacher_width(self) -> int:
        return self.teachers[0].config.hidden_size

    def _build_matches(self, model, args):
        if args.alpha_hidden == 0 and args.alpha_attention == 0:
            return []
        s_cfg, t_cfg = unwrap(model).config, self.teachers[0].config

        def pairs(spec):
            init = getattr(s_cfg, "distillation_teacher_layers", None)
            return resolve_layer_pairs(spec, s_cfg.num_hidden_layers, t_cfg.num_hidden_layers, init)

        widths = {"student_hidden_size": s_cfg.hidden_size, "teacher_hidden_size": t_cfg.hidden_size}
        hidden = build_layer_matches(
            pairs(args.layer_map),
            **widths,
            hidden_loss=args.hidden_loss if args.alpha_hidden > 0 else None,
            attention_loss=None,
            projection=args.projection,
        )
        attention = build_layer_matches(
            pairs(args.attention_layer_map or args.layer_map),
            **widths,
            hidden_loss=None,
            attention_loss=args.attention_loss if args.alpha_attention > 0 else None,
        )
        return hidden + attention

    def _fused_loss_blockers(self, model) -> list[str]:
        """Why the chunked causal-LM loss cannot run here (see ``fused_loss_blockers``), ZeRO-3 included."""
        if teacher_placement(self.accelerator) == "zero3":
            # the teachers are DeepSpeed engines by now, and the student becomes one: asking them for logits_to_keep
            # would give an accidental reason, this is the real one
            return ["ZeRO-3 partitions the output heads that the chunked loss reads outside the forward"]
        return fused_loss_blockers([unwrap(model), *self.teachers])

    def _place_teachers(self) -> None:
        """Freeze the teachers and replicate, shard or wrap them as the run's strategy wants (see distributed.py)."""
        default = default_teacher_dtype(self.accelerator, next(unwrap(self.model).parameters()).dtype)
        dtype = resolve_dtype(self.args.teacher_dtype, default)
        self.teachers = [place_teacher(teacher, self.accelerator, dtype) for teacher in self.teachers]

    def _log_setup(self) -> None:
        if not self.args.should_log:
            return
        pairs = [
            f"{m.feature}: student {m.student_layer} <- teacher {m.teacher_layer} ({m.loss}, w={m.weight:.3g}, proj={m.projection})"
            for m in self.matches
        ]
        logger.info(
            "hf_distill: task=%s, %d teacher(s), %s, layer matches:\n  %s",
            self.task,
            len(self.teachers),
            f"chunked LM loss ({self.args.kd_chunk_size} tokens a chunk)" if self._fused else "full logits",
            "\n  ".join(pairs) or "none",
        )

    @property
    def adapters(self) -> DistillationAdapters | None:
        return getattr(unwrap(self.accelerator.unwrap_model(self.model)), ADAPTERS_ATTR, None)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the projection adapters in their own group when they have their own lr."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        if fresh and self.args.adapter_learning_rate is not None and self.adapters is not None:
            ids = {id(p) for p in self.adapters.parameters()}
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in ids]
            optimizer.add_param_group(
                {
                    "params": list(self.adapters.parameters()),
                    "lr": self.args.adapter_learning_rate,
                    "weight_decay": 0.0,
                }
            )
        return optimizer

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the teacher-cache and prompt columns through ``remove_unused_columns``: no forward argument, but ours."""
        super()._set_signature_columns_if_needed()
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *EXTRA_COLUMNS]))

    # ---- item counts (gradient accumulation and DDP exactness) ----

    def _batch_counts(self, batch) -> tuple[int, int]:
        labels, attention_mask = batch.get("labels"), batch.get("attention_mask")
        input_ids = batch.get("input_ids")
        shape = input_ids.shape if input_ids is not None else attention_mask.shape
        aligned = (
            shape[:1] if self.task == "sequence_classification" else (shape[0], shape[1] - (self.task == "causal_lm"))
        )
        targets = count_items(target_mask(self.task, labels, attention_mask, aligned), aligned)
        return targets, count_items(attention_mask, shape)

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the accumulation window and count its items over all micro-batches and processes."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        batch_samples = [self._maybe_generate(batch) for batch in batch_samples]
        counts = torch.tensor(
            [sum(c) for c in zip(*(self._batch_counts(b) for b in batch_samples))] or [0, 0],
            dtype=torch.float64,
            device=device,
        )
        scale = 1.0
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts.view(1, -1)).sum(0)
            scale = float(self.args.world_size)  # DDP averages gradients over processes
        self._window_counts = ItemCounts(float(counts[0]), float(counts[1]), scale)
        return batch_samples, num_items_in_batch

    # ---- completions generated by the student (on-policy) or the teacher (sequence-level KD) ----

    def _maybe_generate(self, batch: dict) -> dict:
        """With probability ``lmbda`` the student, else (with ``seq_kd``) the teacher, writes the batch's completions."""
        args = self.args
        if args.lmbda == 0 and not args.seq_kd:
            return batch
        if self._sampling.choose() < args.lmbda:
            model = self.model
        elif args.seq_kd:
            model = self.teachers[0]
        else:
            return batch
        if "prompt_input_ids" not in batch:
            raise ValueError(
                "lmbda > 0 or seq_kd needs prompts: train on prompt/completion or messages data, or give the text "
                "data a prompt_length column (hf-distill causal-lm --generation_prompt_length)."
            )
        tokenizer = self.processing_class
        pad_id = getattr(tokenizer, "pad_token_id", None)
        eos_id = getattr(tokenizer, "eos_token_id", None) or unwrap(self.model).config.eos_token_id
        with self._sampling.active(next(unwrap(self.accelerator.unwrap_model(model)).parameters()).device):
            return generate_completions(
                model,
                batch["prompt_input_ids"],
                batch["prompt_attention_mask"],
                max_new_tokens=args.max_new_tokens,
                pad_token_id=pad_id if pad_id is not None else eos_id,
                eos_token_id=eos_id,
                temperature=args.generation_temperature,
                top_p=args.generation_top_p,
            )

    # ---- the loss ----

    def _output_request(self, role: str) -> dict:
        if role == "other_teacher":  # only the first teacher's internals are distilled
            return {}
        index = 0 if role == "student" else 1
        request = {}
        hidden = sorted({(m.student_layer, m.teacher_layer)[index] for m in self.matches if m.feature == "hidden"})
        if hidden:
            request["output_hidden_states"] = hidden
        if any(m.feature == "attention" and "attention" in loss_needs("attention", m.loss) for m in self.matches):
            request["output_attentions"] = True
        return request

    def _relation_layers(self, role: str) -> list[int]:
        if role == "other_teacher":
            return []
        index = 0 if role == "student" else 1
        return sorted(
            {
                (m.student_layer, m.teacher_layer)[index]
                for m in self.matches
                if m.feature == "attention" and "qkv" in loss_needs("attention", m.loss)
            }
        )

    def _forward(self, model, inputs, role, fused=False):
        """Run one model asking for what the losses need; ``role`` is student, teacher or other_teacher.

        ``fused``: the causal-LM loss is computed in chunks from the last hidden states, so ask for those and for
        the logits of one position only.
        """
        inner = unwrap(self.accelerator.unwrap_model(model))
        request = self._output_request(role)
        if self.task == "causal_lm":
            request["use_cache"] = False  # a training step needs no key/value cache (180 MB for SmolLM2 at 8 x 512)
        if fused:
            last = inner.config.num_hidden_layers
            request["output_hidden_states"] = sorted({*request.get("output_hidden_states", []), last})
            request["logits_to_keep"] = 1
        hook = inner.register_forward_hook(self._project_hidden_states) if role == "student" else None
        try:
            with capture_qkv(inner, self._relation_layers(role)) as qkv:
                outputs = model(**inputs, **request)
        finally:
            if hook is not None:
                hook.remove()
        return outputs, qkv

    def _teacher_forward(self, teacher, inputs, role, fused):
        """:meth:`_forward` of a teacher, on groups of rows of similar length when that skips padding (the same
        outputs: rows are independent and padded positions are masked; see :mod:`hf_distill.length_buckets`)."""
        groups = self._teacher_groups(teacher, inputs)
        if groups is None:
            return self._forward(teacher, inputs, role, fused)
        batch, seq_len = inputs["attention_mask"].shape
        parts = [self._forward(teacher, split_batch(inputs, rows, n, seq_len), role, fused) for rows, n in groups]
        token_logits = self.task == "token_classification"
        outputs = merge_outputs([p[0] for p in parts], groups, batch, seq_len, token_logits)
        return outputs, merge_records([p[1] for p in parts], groups, batch, seq_len)

    def _teacher_groups(self, teacher, inputs):
        """Length groups for the teacher's forward, or None to run it on the whole batch."""
        mask = inputs.get("attention_mask")
        if self.task == "causal_lm" or mask is None or mask.dim() != 2:
            return None
        # a sharded teacher (FSDP2, ZeRO-3) runs collectives per forward: every rank must run as many
        if teacher_placement(self.accelerator) != "replicate":
            return None
        most = self.args.teacher_length_groups
        if most is None:
            most = 4 if next(teacher.parameters()).device.type == "cpu" else 1
        if most == 1:
            return None
        lengths = valid_lengths(mask)
        if lengths is None or not bool((lengths > 0).all()):  # left padding, or an empty row: run whole
            return None
        groups = length_groups(lengths, max_groups=most)
        return None if len(groups) == 1 and groups[0][1] == mask.shape[1] else groups

    def _project_hidden_states(self, module, args, output):
        """Forward hook on the student: project its matched hidden states to the teacher's width *inside* the
        forward, so that DDP sees the adapters as used parameters and averages their gradients.

        The projections are appended to ``output.hidden_states`` (one per hidden match, in order): DDP rebuilds
        model outputs from their fields, so a new field would not survive.
        """
        if not any(m.feature == "hidden" for m in self.matches):
            return output
        adapters = getattr(module, ADAPTERS_ATTR, None)
        output.hidden_states = tuple(output.hidden_states) + tuple(
            adapters.project(m, output.hidden_states[m.student_layer])
            if adapters is not None
            else output.hidden_states[m.student_layer]
            for m in self.matches
            if m.feature == "hidden"
        )
        return output

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Weighted sum of the active terms; each term is normalised by its item count over the whole window."""
        mode = "train" if model.training else "eval"
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        cache = {k: inputs.pop(k) for k in TEACHER_CACHE_COLUMNS if k in inputs}
        for key in GENERATION_COLUMNS:
            inputs.pop(key, None)
        # metrics need the full logits; the loss alone does not
        fused = self._fused and not (return_outputs and self.compute_metrics is not None)
        # teachers first: the student's forward and backward then run back to back, on warm caches
        with torch.no_grad():  # without KD terms (a no-KD baseline) the teachers are not run at all
            teacher_outs = (
                [
                    self._teacher_forward(t, inputs, "teacher" if i == 0 else "other_teacher", fused)
                    for i, t in enumerate(self.teachers)
                ]
                if self._runs_teachers(cache)
                else []
            )
        student_out, student_qkv = self._forward(model, inputs, "student", fused)
        local = ItemCounts(*self._batch_counts({**inputs, "labels": labels}))
        counts = self._window_counts if (mode == "train" and self._window_counts is not None) else local
        loss, terms = self._loss_terms(student_out, student_qkv, teacher_outs, inputs, labels, counts, cache, fused)
        loss = loss * counts.scale
        for name, value in terms.items():  # log per-micro-batch means, whatever the normaliser
            norm = counts.targets if name in ("task", "logits") else counts.tokens
            own = local.targets if name in ("task", "logits") else local.tokens
            self._metrics[mode][f"loss/{name}"].append(value.item() * norm / max(own, 1))
        if (
            mode == "train"
            and self.args.intermediate_schedule != "constant"
            and ("hidden" in terms or "attention" in terms)
        ):
            self._metrics[mode]["intermediate_scale"].append(self._intermediate_scale())
        if return_outputs:
            return loss, type(student_out)(loss=loss, logits=student_out.logits)
        return loss

    def _runs_teachers(self, cache: dict) -> bool:
        """The teachers run when a KD term needs them: not for a no-KD baseline, not for logits from a cache."""
        args = self.args
        return bool(self.teachers) and (
            args.alpha_hidden > 0 or args.alpha_attention > 0 or (args.alpha_logits > 0 and not cache)
        )

    def _loss_terms(self, student_out, student_qkv, teacher_outs, inputs, labels, counts, cache, fused):
        """``(weighted sum, {term: value})`` of the active terms."""
        args = self.args
        attention_mask = inputs.get("attention_mask")
        if fused:
            loss, terms = self._fused_lm_terms(student_out, teacher_outs, inputs, labels, counts, cache)
        else:
            terms = self._output_terms(student_out, teacher_outs, attention_mask, labels, counts, cache)
            loss = sum(getattr(args, f"alpha_{k}") * v for k, v in terms.items())
        if teacher_outs:
            teacher_out, teacher_qkv = teacher_outs[0]
            kw = {"mask": attention_mask, "normalizer": counts.tokens}
            if args.alpha_hidden > 0:
                n = sum(m.feature == "hidden" for m in self.matches)  # projections appended by the student's hook
                projected = student_out.hidden_states[len(student_out.hidden_states) - n :]
                terms["hidden"] = hidden_term(self.matches, projected, teacher_out.hidden_states, **kw)
            if args.alpha_attention > 0:
                terms["attention"] = attention_term(
                    self.matches,
                    student_attentions=student_out.attentions,
                    teacher_attentions=teacher_out.attentions,
                    student_qkv=student_qkv,
                    teacher_qkv=teacher_qkv,
                    relation_heads=self._relation_heads() if self._relation_layers("student") else 1,
                    head_reduction=args.attention_head_reduction,
                    **kw,
                )
            scale = self._intermediate_scale()
            loss = loss + sum(
                scale * getattr(args, f"alpha_{k}") * terms[k] for k in ("hidden", "attention") if k in terms
            )
        return loss, terms

    def _intermediate_scale(self) -> float:
        """Factor on the hidden-state and attention weights at this training step (``args.intermediate_schedule``);
        1 in evaluation, so that ``eval_loss`` is the same objective at every evaluation (and after training)."""
        if not self.model.training:
            return 1.0
        return intermediate_scale(self.args.intermediate_schedule, self.state.global_step, self.state.max_steps)

    def _logit_loss_name(self) -> str:
        return "mse" if self.problem_type in ("regression", "multi_label_classification") else self.args.logit_loss

    def _check_soft_targets(self, teacher_outs, cache) -> bool:
        """Whether the logit term can be computed; training without any source of soft targets is an error."""
        if self.args.alpha_logits == 0:
            return False
        if teacher_outs or cache:
            return True
        if self.model.training:
            raise ValueError(
                "alpha_logits > 0 but there is no teacher and this batch has no teacher cache columns "
                f"{list(TEACHER_CACHE_COLUMNS)}."
            )
        return False  # e.g. evaluation data without a cache: the KD term is left out

    def _output_terms(self, student_out, teacher_outs, attention_mask, labels, counts, cache) -> dict:
        """The task and logit terms from full logits."""
        args, terms = self.args, {}
        s_logits = align_logits(student_out.logits, self.task)
        mask = target_mask(self.task, labels, attention_mask, s_logits.shape[:-1])
        if args.alpha_task > 0 and labels is not None:
            terms["task"] = task_loss(
                s_logits,
                labels,
                task=self.task,
                problem_type=self.problem_type,
                normalizer=counts.targets,
                label_smoothing=args.label_smoothing_factor,
            )
        elif labels is not None and self.problem_type not in ("regression", "multi_label_classification"):
            check_labels(labels, s_logits.shape[-1], "vocab_size" if self.task == "causal_lm" else "num_labels")
        if not self._check_soft_targets(teacher_outs, cache):
            return terms
        rows = self.vocab_rows
        kw = {"mask": mask, "temperature": args.temperature, "normalizer": counts.targets, "beta": args.jsd_beta}
        s_kd = s_logits[..., :rows] if rows else s_logits
        if cache:
            ids, logprobs = (align_logits(cache[k], self.task) for k in TEACHER_CACHE_COLUMNS)
            terms["logits"] = topk_token_kd(s_kd, ids, logprobs, loss=args.logit_loss, **kw)
            return terms
        loss_name = self._logit_loss_name()
        t_logits = [align_logits(out.logits, self.task) for out, _ in teacher_outs]
        t_logits = [t[..., :rows] if rows else t for t in t_logits]
        target = mix_teacher_logits(
            t_logits, args.teacher_weights or [1.0] * len(t_logits), args.temperature, loss_name
        )
        terms["logits"] = get_loss("logits", loss_name)(s_kd, target, **kw)
        return terms

    def _fused_lm_terms(self, student_out, teacher_outs, inputs, labels, counts, cache):
        """The causal LM's task and logit terms, chunked from the last hidden states (no full logits)."""
        args = self.args
        student = unwrap(self.accelerator.unwrap_model(self.model))
        s_hidden = align_logits(student_out.hidden_states[student.config.num_hidden_layers], self.task)  # (B, T-1, D)
        mask = target_mask(self.task, labels, inputs.get("attention_mask"), s_hidden.shape[:-1])
        teacher = None
        if self._check_soft_targets(teacher_outs, cache):
            if cache:
                ids, logprobs = (align_logits(cache[k], self.task) for k in TEACHER_CACHE_COLUMNS)
                teacher = TeacherTargets(topk_ids=ids, topk_logprobs=logprobs)
            else:
                teacher = TeacherTargets(
                    hidden=[
                        align_logits(out.hidden_states[t.config.num_hidden_layers], self.task)
                        for (out, _), t in zip(teacher_outs, self.teachers)
                    ],
                    heads=[t.get_output_embeddings() for t in self.teachers],
                    weights=args.teacher_weights,
                )
        return fused_causal_lm_loss(
            s_hidden,
            student.get_output_embeddings(),
            labels=labels[:, 1:] if labels is not None else None,
            mask=mask,
            teacher=teacher,
            alpha_task=args.alpha_task,
            alpha_logits=args.alpha_logits,
            loss=args.logit_loss,
            temperature=args.temperature,
            beta=args.jsd_beta,
            vocab_rows=self.vocab_rows,
            label_smoothing=args.label_smoothing_factor,
            normalizer=counts.targets,
            chunk_size=args.kd_chunk_size,
        )

    def _relation_heads(self) -> int:
        if self.args.relation_heads is not None:
            return self.args.relation_heads
        if not hasattr(self, "_default_relation_heads"):
            configs = (unwrap(self.model).config, self.teachers[0].config)
            self._default_relation_heads = default_relation_heads(*configs)
        return self._default_relation_heads

    # ---- logging ----

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval"):
        self._metric_key_prefix = metric_key_prefix
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss term since the last log (``loss/...`` in training, ``eval_loss/...``)."""
        mode = "train" if "loss" in logs else "eval"
        metrics = {key: sum(vals) / len(vals) for key, vals in self._metrics[mode].items() if vals}
        if mode == "eval":
            prefix = getattr(self, "_metric_key_prefix", "eval")
            metrics = {f"{prefix}_{key}": val for key, val in metrics.items()}
        logs.update(metrics)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # ---- saving and restoring ----

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Save the student alone (no adapters, no teacher); adapters go to their own file."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if state_dict is None:
            state_dict = self.accelerator.unwrap_model(self.model).state_dict()
        super()._save(output_dir, state_dict=strip_adapters(state_dict))
        if self.args.should_save:
            adapters = adapter_state(state_dict)
            if adapters:
                safetensors.torch.save_file(
                    {k: v.contiguous() for k, v in adapters.items()}, os.path.join(output_dir, ADAPTERS_FILE)
                )
            self._write_distillation_config(output_dir)

    def _write_distillation_config(self, output_dir: str) -> None:
        names = [t.config.name_or_path or f"{type(t).__name__} (built in memory)" for t in self.teachers]
        if self.args.teacher_model_name_or_path:
            names[0] = self.args.teacher_model_name_or_path
        record = {
            "hf_distill_version": __version__,
            "task": self.task,
            "teachers": names,
            "student_layers_from_teacher": getattr(unwrap(self.model).config, "distillation_teacher_layers", None),
            "layer_matches": [asdict(m) for m in self.matches],
            **self.args.distillation_dict(),
        }
        with open(os.path.join(output_dir, DISTILLATION_CONFIG_FILE), "w") as f:
            json.dump(record, f, indent=2, sort_keys=True)

    def _save_rng_state(self, output_dir: str) -> None:
        """The Trainer's RNG states, and the on-policy sampling stream beside them."""
        super()._save_rng_state(output_dir)
        if self.args.lmbda > 0 or self.args.seq_kd:
            torch.save(self._sampling.state_dict(), os.path.join(output_dir, self._sampling_state_name()))

    def _sampling_state_name(self) -> str:
        return SAMPLING_STATE_FILE.format(f"_{self.args.process_index}" if self.args.world_size > 1 else "")

    # ---- resuming: only from a checkpoint that was saved whole ----

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint of output_dir (one
        a crash cut short while saving is skipped with a warning), and a checkpoint named by path must be complete.
        """
        if resume_from_checkpoint is True:
            resume_from_checkpoint = self._newest_complete_checkpoint(self.args.output_dir)
        elif isinstance(resume_from_checkpoint, str):
            problems = self.checkpoint_problems(resume_from_checkpoint)
            if problems:
                raise ValueError(
                    f"{resume_from_checkpoint} is an incomplete checkpoint ({'; '.join(problems)}): resume from an "
                    "earlier checkpoint, or pass resume_from_checkpoint=True to take the newest complete one."
                )
        if resume_from_checkpoint:
            self._load_sampling_state(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, trial=trial, **kwargs)

    def checkpoint_problems(self, folder: str) -> list[str]:
        """What keeps ``folder`` from being a checkpoint this trainer can resume from (empty when it is whole): the
        Trainer writes ``trainer_state.json`` last, so a save cut short has none; the student's weights must read
        back; the optimizer and scheduler states and the projection adapters' weights must be there."""
        if not os.path.isdir(folder):
            return ["not a folder"]
        names = set(os.listdir(folder))
        problems = []
        if "trainer_state.json" not in names:
            problems.append("no trainer_state.json, which the Trainer writes last: the save did not finish")
        elif json_problem(os.path.join(folder, "trainer_state.json")):
            problems.append(f"trainer_state.json {json_problem(os.path.join(folder, 'trainer_state.json'))}")
        sharded = self.is_deepspeed_enabled or self.is_fsdp_enabled
        weights = [n for n in CHECKPOINT_WEIGHTS if n in names]
        if not weights and not sharded:
            problems.append("no model weights")
        problems += [f"{n} {p}" for n in weights if (p := file_problem(folder, n))]
        if not self.args.save_only_model and not sharded:
            problems += [f"no {n}" for n in ("optimizer.pt", "scheduler.pt") if n not in names]
        if self.adapters is not None and len(self.adapters):
            if ADAPTERS_FILE not in names:
                problems.append(f"no {ADAPTERS_FILE} (the projection adapters' weights)")
            elif problem := file_problem(folder, ADAPTERS_FILE):
                problems.append(f"{ADAPTERS_FILE} {problem}")
        return problems

    def _newest_complete_checkpoint(self, output_dir: str) -> str:
        """The newest ``checkpoint-N`` of ``output_dir`` that :meth:`checkpoint_problems` finds whole; newer ones
        that are not are skipped with a warning."""
        pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
        found = os.listdir(output_dir) if os.path.isdir(output_dir) else []
        steps = sorted((int(m.group(1)) for n in found if (m := pattern.match(n))), reverse=True)
        skipped = []
        for step in steps:
            folder = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
            if not os.path.isdir(folder):
                continue
            problems = self.checkpoint_problems(folder)
            if not problems:
                return folder
            logger.warning("Skipping %s, an incomplete checkpoint: %s.", folder, "; ".join(problems))
            skipped.append(os.path.basename(folder))
        if skipped:
            raise ValueError(
                f"resume_from_checkpoint=True but no checkpoint in {output_dir} is complete ({', '.join(skipped)} "
                "are not, see the warnings): train without resume_from_checkpoint to start afresh."
            )
        raise ValueError(
            f"resume_from_checkpoint=True but {output_dir} holds no {PREFIX_CHECKPOINT_DIR}-N folder: train without "
            "resume_from_checkpoint to start afresh."
        )

    def _load_sampling_state(self, folder: str) -> None:
        """Restore the on-policy sampling stream, before the first batch of the resumed run is generated (the
        Trainer's own RNG states come back only after that batch is drawn)."""
        if not (self.args.lmbda > 0 or self.args.seq_kd):
            return
        path = os.path.join(folder, self._sampling_state_name())
        if not os.path.isfile(path):
            logger.warning(
                "%s has no %s (saved by an older hf_distill, or with save_only_model): the resumed run samples other "
                "completions than an uninterrupted one would.",
                folder,
                os.path.basename(path),
            )
            return
        self._sampling.load_state_dict(torch.load(path, weights_only=True))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_adapters(resume_from_checkpoint, required=True)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        self._load_adapters(self.state.best_model_checkpoint, required=False)  # training is over: they go unused

    def _load_adapters(self, folder: str, required: bool) -> None:
        """Restore the projection adapters; on resume a checkpoint without them is an error, not adapters trained
        afresh against a restored optimizer state."""
        if self.adapters is None or not len(self.adapters):
            return
        path = os.path.join(folder, ADAPTERS_FILE)
        if os.path.isfile(path):
            self.adapters.load_state_dict(safetensors.torch.load_file(path, device="cpu"))
        elif required:
            raise ValueError(
                f"{folder} has no {ADAPTERS_FILE}, the weights of this run's projection adapters: resume from a "
                "checkpoint this trainer saved with the same layer map and widths, or start afresh."
            )

    def _issue_warnings_after_load(self, load_result) -> None:
        # the adapters are restored from their own file, so their absence from model.safetensors is expected
        load_result.missing_keys[:] = [k for k in load_result.missing_keys if ADAPTERS_ATTR not in k]
        super()._issue_warnings_after_load(load_result)
