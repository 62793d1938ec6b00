"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss mixes the student's own loss with KD terms.

Only the Trainer's hooks live here. The teachers are sources (:mod:`hf_distill.teachers`), what the run asks of each
model is decided once (:mod:`hf_distill.distillation_plan`), the loss is a pure function
(:mod:`hf_distill.losses.objective`) and checkpoints are checked in :mod:`hf_distill.checkpoints`.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict

import torch
from transformers import Trainer

from .checkpoints import (
    checkpoint_folder,
    checkpoint_problems,
    checkpoint_to_resume,
    load_adapters,
    load_sampling_state,
    load_teacher_states,
    sampling_state_name,
    save_adapters,
    save_teacher_states,
)
from .constants import CROSS_TOKENIZER_CACHE_COLUMNS, GENERATION_COLUMNS, TEACHER_CACHE_COLUMNS, TEACHER_CACHE_INDEX
from .cpu_memory import keep_freed_memory
from .distillation_config import DISTILLATION_CONFIG_FILE, DistillationConfig
from .distillation_plan import (
    build_plan,
    build_teachers,
    chunked_loss_blockers,
    cross_tokenizer_teachers,
    distillation_record,
    own_param_groups,
)
from .distributed import default_teacher_dtype, teacher_placement
from .generation import SamplingRNG, maybe_generate
from .losses.objective import ItemCounts, StudentOutputs, count_batch_items, distillation_objective
from .mapping import (
    ADAPTERS_ATTR,
    DistillationAdapters,
    adapter_state,
    attach_adapters,
    projected_states,
    projection_hook,
    strip_adapters,
)
from .models import infer_task, resolve_dtype, unwrap
from .publish.trainer_hub import HubPushMixin
from .schedules import delayed_kd, intermediate_scale
from .teachers.base import check_soft_targets
from .teachers.columns import (
    check_dataset_columns,
    check_positions,
    claimed_columns,
    model_inputs,
    read_columns,
    without,
)
from .teachers.hooks import TeacherSteps
from .teachers.model import check_distinct, run_model
from .teachers.trained import detached, run_teachers, trained_teacher_losses
from .version import __version__

logger = logging.getLogger(__name__)

# batch columns that are no model inputs but must survive `remove_unused_columns`: the top-k teacher caches, the row
# of an encoder teacher cache and the prompts that on-policy / sequence-level KD generate from
EXTRA_COLUMNS = (*TEACHER_CACHE_COLUMNS, *CROSS_TOKENIZER_CACHE_COLUMNS, TEACHER_CACHE_INDEX, *GENERATION_COLUMNS)


class DistillationTrainer(HubPushMixin, Trainer):
    """Train ``model`` (the student) to match ``teacher_model`` as configured by a [`DistillationConfig`].

    ``teacher_model`` is a model, a Hub name / local folder, a :class:`hf_distill.teachers.Teacher`, or a list of
    them: their soft targets are mixed, and their hidden-state and attention terms weighted, with
    ``args.teacher_weights``. It may be left out when the training data carries a top-k teacher cache
    (:mod:`hf_distill.data.teacher_cache`). ``teacher_processing_class`` is the teachers' tokenizer, compared with the
    student's (``processing_class``) before token-level KD; by default it is loaded from each teacher's folder, or
    taken to be the student's. Every other argument is the ``Trainer``'s.
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
        data = kwargs.get("train_dataset"), kwargs.get("eval_dataset")
        tokenizers = (kwargs.get("processing_class"), teacher_processing_class)
        self.teachers = build_teachers(teacher_model, args, self.task, *data, student=model)
        self.teachers = cross_tokenizer_teachers(self.teachers, args, self.task, tokenizers)
        check_distinct(model, self.teachers)
        # the columns only teachers with a column map read: the student and the other teachers do not see them
        self._claimed = claimed_columns([t.columns for t in self.teachers], args.student_columns)
        check_dataset_columns(self.teachers, args.student_columns, {"train": data[0], "eval": data[1]})
        self.plan = build_plan(model, self.teachers, args, self.task, tokenizers)
        self.matches, self.vocab_rows = self.plan.matches, self.plan.settings.vocab_rows
        self.problem_type = self.plan.problem_type
        self.regression = self.problem_type == "regression"
        attach_adapters(model, self.matches, self.plan.teacher_hidden_sizes)
        super().__init__(model=model, args=args, **kwargs)
        if self.args.device.type == "cpu":  # a step frees and allocates again the same large buffers
            keep_freed_memory()
        default = default_teacher_dtype(self.accelerator, next(unwrap(self.model).parameters()).dtype)
        for teacher in self.teachers:  # freeze, and replicate, shard or wrap as the strategy wants
            teacher.prepare(self.accelerator, resolve_dtype(args.teacher_dtype, default))
        self.add_callback(
            TeacherSteps(self.teachers, lambda: self.student, lambda: self.accelerator.optimizer_step_was_skipped)
        )
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._window_counts: ItemCounts | None = None
        self._fused = self.task == "causal_lm" and args.kd_chunk_size > 0
        if self._fused and (
            blockers := chunked_loss_blockers(teacher_placement(self.accelerator), model, self.teachers)
        ):
            logger.warning("kd_chunk_size: computing full logits instead of chunks, as %s.", "; ".join(blockers))
            self._fused = False
        self._sampling = SamplingRNG(args.seed, rank=args.process_index)
        if args.should_log:
            path = f"chunked LM loss ({args.kd_chunk_size} tokens a chunk)" if self._fused else "full logits"
            logger.info(self.plan.describe(self.teachers, path))

    @property
    def student(self):
        """The student's transformers model, out of any wrapper."""
        return unwrap(self.accelerator.unwrap_model(self.model))

    @property
    def adapters(self) -> DistillationAdapters | None:
        return getattr(self.student, ADAPTERS_ATTR, None)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, plus groups of their own: the projection adapters when they have their own lr,
        each trained teacher's parameters."""
        fresh = self.optimizer is None
        optimizer = super().create_optimizer(model)
        for group in own_param_groups(self.args, self.adapters, self.teachers) if fresh else []:
            ids = {id(p) for p in group["params"]}
            for other in optimizer.param_groups:
                other["params"] = [p for p in other["params"] if id(p) not in ids]
            optimizer.add_param_group(group)
        return optimizer

    def _set_signature_columns_if_needed(self) -> None:
        """Keep the teacher-cache and prompt columns, and those the column maps name, through
        ``remove_unused_columns``: no forward argument of the student, but read."""
        super()._set_signature_columns_if_needed()
        mapped = [
            c
            for columns in (self.args.student_columns, *(t.columns for t in self.teachers))
            for c in (columns or {}).values()
        ]
        self._signature_columns = list(dict.fromkeys([*self._signature_columns, *EXTRA_COLUMNS, *mapped]))

    def _student_inputs(self, batch: dict) -> dict:
        """The student's forward arguments: its column map's (``student_columns``), or the batch's model inputs less
        the columns the teachers' maps claim."""
        if self.args.student_columns:
            return read_columns(batch, self.args.student_columns, "student_columns")
        return model_inputs(without(batch, self._claimed))

    # ---- item counts (gradient accumulation and DDP exactness) ----

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        """Fetch the accumulation window and count its items over all micro-batches and processes."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        batch_samples = [self._maybe_generate(batch) for batch in batch_samples]
        per_batch = []
        for b in batch_samples:
            inputs = self._student_inputs(b)
            per_batch.append(
                count_batch_items(self.task, b.get("labels"), inputs.get("attention_mask"), inputs.get("input_ids"))
            )
        counts = torch.tensor([sum(c) for c in zip(*per_batch)] or [0, 0], dtype=torch.float64, device=device)
        scale = 1.0
        if self.args.world_size > 1:
            counts = self.accelerator.gather(counts.view(1, -1)).sum(0)
            scale = float(self.args.world_size)  # DDP averages gradients over processes
        self._window_counts = ItemCounts(float(counts[0]), float(counts[1]), scale)
        return batch_samples, num_items_in_batch

    def _maybe_generate(self, batch: dict) -> dict:
        """With probability ``lmbda`` the student, else (with ``seq_kd``) the teacher, writes the batch's completions."""
        return maybe_generate(
            batch,
            self.args,
            self._sampling,
            self.model,
            self.teachers[0] if self.teachers else None,
            self.processing_class,
            self.accelerator.unwrap_model,
        )

    # ---- the loss ----

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Weighted sum of the active terms; each term is normalised by its item count over the whole window."""
        mode = "train" if model.training else "eval"
        batch = dict(inputs)
        inputs = self._student_inputs(batch)
        labels, mask = batch.get("labels"), inputs.get("attention_mask")
        # metrics need the full logits; the loss alone does not
        chunked = self._fused and not (return_outputs and self.compute_metrics is not None)
        # teachers first: the student's forward and backward then run back to back, on warm caches
        requests = [self.plan.request(i, chunked) for i in range(len(self.teachers))]
        for teacher, request in zip(self.teachers, requests):
            check_positions(teacher, batch, inputs, request, self.task)
        # a teacher with a column map reads the whole batch; the others, the batch less the columns those maps claim
        batches = [batch if t.columns else without(batch, self._claimed) for t in self.teachers]
        live = run_teachers(self.teachers, batches, requests)  # a trained teacher's outputs keep their graph
        teacher_outs = [detached(o) if t.trainable else o for t, o in zip(self.teachers, live)]
        raw, student = self._student_outputs(model, inputs, chunked)
        local = ItemCounts(*count_batch_items(self.task, labels, mask, inputs.get("input_ids")))
        counts = self._window_counts if (mode == "train" and self._window_counts is not None) else local
        if self.args.alpha_logits > 0 and self.model.training:
            check_soft_targets(teacher_outs)
        settings = delayed_kd(self.plan.settings, self.args.kd_delay_steps, self.state.global_step, model.training)
        loss, terms = distillation_objective(
            settings,
            student,
            teacher_outs,
            self.matches,
            labels=labels,
            attention_mask=mask,
            targets=counts.targets,
            tokens=counts.tokens,
            intermediate_scale=self._intermediate_scale(),
        )
        if mode == "train" and any(t.trainable for t in self.teachers):  # trained teachers learn on their own terms
            own, own_terms = trained_teacher_losses(
                self.plan.settings, self.teachers, live, raw.logits, labels=labels, attention_mask=mask,
                targets=counts.targets, tokens=counts.tokens,
            )  # fmt: skip
            loss, terms = loss + own, {**terms, **own_terms}
        loss = loss * counts.scale
        self._record_terms(mode, terms, counts, local)
        if return_outputs:
            return loss, type(raw)(loss=loss, logits=raw.logits)
        return loss

    def _student_outputs(self, model, inputs: dict, chunked: bool):
        """``(raw outputs, StudentOutputs)`` of the student's forward, its hidden states projected inside it."""
        inner = unwrap(self.accelerator.unwrap_model(model))
        hook = inner.register_forward_hook(projection_hook(self.matches))
        try:
            raw, qkv = run_model(model, inputs, self.plan.request(None, chunked), inner=inner, task=self.task)
        finally:
            hook.remove()
        return raw, StudentOutputs(
            logits=None if chunked else raw.logits,
            last_hidden=raw.hidden_states[inner.config.num_hidden_layers] if chunked else None,
            head=inner.get_output_embeddings() if chunked else None,
            projected=projected_states(self.matches, raw.hidden_states),
            attentions=raw.attentions,
            qkv=qkv,
        )

    def _intermediate_scale(self) -> float:
        """Factor on the hidden-state and attention weights at this training step (``args.intermediate_schedule``);
        1 in evaluation, so that ``eval_loss`` is the same objective at every evaluation (and after training)."""
        if not self.model.training:
            return 1.0
        return intermediate_scale(self.args.intermediate_schedule, self.state.global_step, self.state.max_steps)

    # ---- logging ----

    def _record_terms(self, mode: str, terms: dict, counts: ItemCounts, local: ItemCounts) -> None:
        """Record each term as a mean over this micro-batch, whatever the normaliser."""
        for name, value in terms.items():
            per_target = name.rsplit("/", 1)[-1] in ("task", "logits")  # a trained teacher's too: peer_1/task
            norm, own = (counts.targets, local.targets) if per_target else (counts.tokens, local.tokens)
            self._metrics[mode][f"loss/{name}"].append(value.item() * norm / max(own, 1))
        schedule = self.args.intermediate_schedule != "constant"
        if mode == "train" and schedule and ("hidden" in terms or "attention" in terms):
            self._metrics[mode]["intermediate_scale"].append(self._intermediate_scale())

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
            save_adapters(adapter_state(state_dict), output_dir)
            for teacher in self.teachers:  # a trained teacher beside the student, in its own folder
                teacher.save(output_dir, self.processing_class)
            record = distillation_record(self.plan, self.teachers, self.model, self.args, __version__)
            with open(os.path.join(output_dir, DISTILLATION_CONFIG_FILE), "w") as f:
                json.dump(record, f, indent=2, sort_keys=True)

    def _save_rng_state(self, output_dir: str) -> None:
        """The Trainer's RNG states, and the on-policy sampling stream beside them."""
        super()._save_rng_state(output_dir)
        if self.args.lmbda > 0 or self.args.seq_kd:
            torch.save(self._sampling.state_dict(), os.path.join(output_dir, self._sampling_state_name()))

    def _sampling_state_name(self) -> str:
        return sampling_state_name(self.args.process_index, self.args.world_size)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint of output_dir (one
        a crash cut short while saving is skipped with a warning), and a checkpoint named by path must be complete.
        """
        folder = checkpoint_to_resume(resume_from_checkpoint, self.args.output_dir, self.checkpoint_problems)
        if folder and (self.args.lmbda > 0 or self.args.seq_kd):
            # before the first batch of the resumed run is generated (the Trainer's RNG states come back after it)
            load_sampling_state(self._sampling, folder, self._sampling_state_name())
        if folder:  # here, not in _load_from_checkpoint, which the Trainer skips under DeepSpeed (ZeRO-1/2)
            load_teacher_states(self.teachers, folder)
        output = super().train(resume_from_checkpoint=folder, trial=trial, **kwargs)
        for teacher in self.teachers:
            teacher.on_train_end(self.student)
        return output

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, with each changing teacher's state, written first (``trainer_state.json``, last,
        marks a whole checkpoint) and also under ``save_only_model``: a resumed run continues the teacher."""
        if self.args.should_save:
            save_teacher_states(self.teachers, checkpoint_folder(self._get_output_dir(trial), self.state.global_step))
        super()._save_checkpoint(model, trial)

    def checkpoint_problems(self, folder: str) -> list[str]:
        """What keeps ``folder`` from being a checkpoint this trainer can resume from (empty when it is whole)."""
        return checkpoint_problems(
            folder,
            sharded=self.is_deepspeed_enabled or self.is_fsdp_enabled,
            save_only_model=self.args.save_only_model,
            has_adapters=self.adapters is not None and len(self.adapters) > 0,
            teacher_states=tuple(i for i, t in enumerate(self.teachers) if t.state_dict()),
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.adapters is not None and len(self.adapters):
            load_adapters(self.adapters, resume_from_checkpoint, required=True)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        if self.adapters is not None and len(self.adapters):  # training is over: they go unused
            load_adapters(self.adapters, self.state.best_model_checkpoint, required=False)
        # the teachers of that step too: an EMA published at the end (save_ema) is the best checkpoint's average
        load_teacher_states(self.teachers, self.state.best_model_checkpoint)

    def _issue_warnings_after_load(self, load_result) -> None:
        # the adapters are restored from their own file, so their absence from model.safetensors is expected
        load_result.missing_keys[:] = [k for k in load_result.missing_keys if ADAPTERS_ATTR not in k]
        super()._issue_warnings_after_load(load_result)
