"""``DistillationTrainer``: a ``transformers.Trainer`` whose loss mixes the student's own loss with KD terms."""

from __future__ import annotations

import json
import logging
import math
import os
from collections import defaultdict
from dataclasses import asdict, dataclass

import safetensors.torch
import torch
from torch import nn
from transformers import Trainer

from . import __version__
from .capture import capture_qkv
from .checks import check_label_spaces, check_vocabularies, ensure_eager_attention
from .distillation_config import DistillationConfig
from .losses import align_logits, count_items, get_loss, match_heads, mix_teacher_logits, target_mask, task_loss
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
from .modeling import infer_task, load_model, resolve_dtype, unwrap

logger = logging.getLogger(__name__)

DISTILLATION_CONFIG_FILE = "distillation_config.json"
TERMS = ("task", "logits", "hidden", "attention")


@dataclass
class ItemCounts:
    """Loss normalisers: prediction targets (examples or tokens) and real tokens, with the DDP rescale factor."""

    targets: float
    tokens: float
    scale: float = 1.0


class DistillationTrainer(Trainer):
    """Train ``model`` (the student) to match ``teacher_model`` as configured by a [`DistillationConfig`].

    ``teacher_model`` is a model, a Hub name / local folder, or a list of them (their soft targets are averaged with
    ``args.teacher_weights``; hidden-state and attention KD use the first teacher). Every other argument is the
    ``Trainer``'s.
    """

    # compute_loss normalises by the item count of the whole accumulation window itself
    loss_is_scaled_for_ga = True

    def __init__(self, model=None, teacher_model=None, args: DistillationConfig | None = None, **kwargs):
        if args is None:
            args = DistillationConfig(output_dir="tmp_trainer")
        if not isinstance(args, DistillationConfig):
            raise ValueError(f"args must be a DistillationConfig, got {type(args).__name__}.")
        if model is None or isinstance(model, str):
            raise ValueError("DistillationTrainer needs the student model object as `model` (see build_student).")
        self.task = infer_task(model)
        self.teachers = self._load_teachers(teacher_model, args)
        self._check_pair(model, args)
        self.matches = self._build_matches(model, args)
        adapters = DistillationAdapters(self.matches, unwrap(model).config.hidden_size, self._teacher_width())
        if len(adapters):
            inner = unwrap(model)
            inner.add_module(ADAPTERS_ATTR, adapters)
            # training-only weights: a plain `student.save_pretrained()` leaves them out too, not just save_model
            ignored = {f"{ADAPTERS_ATTR}.{key}" for key in adapters.state_dict()}
            inner._keys_to_ignore_on_save = set(inner._keys_to_ignore_on_save or ()) | ignored
        super().__init__(model=model, args=args, **kwargs)
        self._place_teachers()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._window_counts: ItemCounts | None = None
        self._log_setup()

    # ---- set-up ----

    def _load_teachers(self, teacher_model, args) -> list[nn.Module]:
        teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
        if teacher_model is None:
            raise ValueError("No teacher: pass teacher_model= or set teacher_model_name_or_path in the config.")
        teachers = list(teacher_model) if isinstance(teacher_model, list | tuple) else [teacher_model]
        if args.teacher_weights is not None and len(args.teacher_weights) != len(teachers):
            raise ValueError(
                f"teacher_weights {args.teacher_weights} has {len(args.teacher_weights)} entries for {len(teachers)} teachers."
            )
        maps = args.alpha_attention > 0 and args.attention_loss != "relation"
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

    def _check_pair(self, model, args) -> None:
        student = unwrap(model)
        for teacher in self.teachers:
            if infer_task(teacher) != self.task:
                raise ValueError(f"The student solves {self.task} but a teacher solves {infer_task(teacher)}.")
            if args.alpha_logits > 0 and self.task == "causal_lm":
                check_vocabularies(student, teacher)
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
        if args.alpha_attention > 0 and args.attention_loss != "relation":
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

    def _place_teachers(self) -> None:
        student_dtype = next(unwrap(self.model).parameters()).dtype
        dtype = resolve_dtype(self.args.teacher_dtype, student_dtype)
        for teacher in self.teachers:
            teacher.eval().requires_grad_(False)
            teacher.to(self.args.device)
            if dtype != "auto":
                teacher.to(dtype)

    def _log_setup(self) -> None:
        if not self.args.should_log:
            return
        pairs = [
            f"{m.feature}: student {m.student_layer} <- teacher {m.teacher_layer} ({m.loss}, w={m.weight:.3g}, proj={m.projection})"
            for m in self.matches
        ]
        logger.info(
            "hf_distill: task=%s, %d teacher(s), layer matches:\n  %s",
            self.task,
            len(self.teachers),
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

    # ---- the loss ----

    def _output_request(self, role: str) -> dict:
        if role == "other_teacher":  # only the first teacher's internals are distilled
            return {}
        index = 0 if role == "student" else 1
        request = {}
        hidden = sorted({(m.student_layer, m.teacher_layer)[index] for m in self.matches if m.feature == "hidden"})
        if hidden:
            request["output_hidden_states"] = hidden
        if any(m.feature == "attention" and m.loss != "relation" for m in self.matches):
            request["output_attentions"] = True
        return request

    def _relation_layers(self, role: str) -> list[int]:
        if role == "other_teacher":
            return []
        index = 0 if role == "student" else 1
        return sorted({(m.student_layer, m.teacher_layer)[index] for m in self.matches if m.loss == "relation"})

    def _forward(self, model, inputs, role):
        """Run one model asking for what the losses need; ``role`` is student, teacher or other_teacher."""
        inner = unwrap(self.accelerator.unwrap_model(model))
        hook = inner.register_forward_hook(self._project_hidden_states) if role == "student" else None
        try:
            with capture_qkv(inner, self._relation_layers(role)) as qkv:
                outputs = model(**inputs, **self._output_request(role))
        finally:
            if hook is not None:
                hook.remove()
        return outputs, qkv

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
        student_out, student_qkv = self._forward(model, inputs, "student")
        with torch.no_grad():  # without KD terms (a no-KD baseline) the teachers are not run at all
            teacher_outs = (
                []
                if not self._uses_teacher()
                else [
                    self._forward(t, inputs, "teacher" if i == 0 else "other_teacher")
                    for i, t in enumerate(self.teachers)
                ]
            )
        local = ItemCounts(*self._batch_counts({**inputs, "labels": labels}))
        counts = self._window_counts if (mode == "train" and self._window_counts is not None) else local
        terms = self._loss_terms(student_out, student_qkv, teacher_outs, inputs, labels, counts)
        alphas = {k: getattr(self.args, f"alpha_{k}") for k in TERMS}
        loss = sum(alphas[k] * v for k, v in terms.items()) * counts.scale
        for name, value in terms.items():  # log per-micro-batch means, whatever the normaliser
            norm = counts.targets if name in ("task", "logits") else counts.tokens
            own = local.targets if name in ("task", "logits") else local.tokens
            self._metrics[mode][f"loss/{name}"].append(value.item() * norm / max(own, 1))
        if return_outputs:
            return loss, type(student_out)(loss=loss, logits=student_out.logits)
        return loss

    def _uses_teacher(self) -> bool:
        return any(getattr(self.args, f"alpha_{k}") > 0 for k in ("logits", "hidden", "attention"))

    def _loss_terms(self, student_out, student_qkv, teacher_outs, inputs, labels, counts: ItemCounts) -> dict:
        args, terms = self.args, {}
        attention_mask = inputs.get("attention_mask")
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
        if args.alpha_logits > 0:
            loss_name = "mse" if self.problem_type in ("regression", "multi_label_classification") else args.logit_loss
            t_logits = [align_logits(out.logits, self.task) for out, _ in teacher_outs]
            weights = args.teacher_weights or [1.0] * len(t_logits)
            target = mix_teacher_logits(t_logits, weights, args.temperature, loss_name)
            terms["logits"] = get_loss("logits", loss_name)(
                s_logits,
                target,
                mask=mask,
                temperature=args.temperature,
                normalizer=counts.targets,
                beta=args.jsd_beta,
            )
        if not teacher_outs:
            return terms
        teacher_out, teacher_qkv = teacher_outs[0]
        if args.alpha_hidden > 0:
            terms["hidden"] = self._hidden_term(student_out, teacher_out, attention_mask, counts.tokens)
        if args.alpha_attention > 0:
            terms["attention"] = self._attention_term(
                student_out, teacher_out, student_qkv, teacher_qkv, attention_mask, counts.tokens
            )
        return terms

    def _hidden_term(self, student_out, teacher_out, mask, normalizer):
        total = 0.0
        hidden_matches = [m for m in self.matches if m.feature == "hidden"]
        projected = student_out.hidden_states[-len(hidden_matches) :]  # appended by _project_hidden_states
        for m, student_h in zip(hidden_matches, projected):
            loss = get_loss("hidden", m.loss)(
                student_h, teacher_out.hidden_states[m.teacher_layer], mask=mask, normalizer=normalizer
            )
            total = total + m.weight * loss
        return total

    def _attention_term(self, student_out, teacher_out, student_qkv, teacher_qkv, mask, normalizer):
        total = 0.0
        for m in (m for m in self.matches if m.feature == "attention"):
            fn = get_loss("attention", m.loss)
            if m.loss == "relation":
                pairs = zip(student_qkv[m.student_layer], teacher_qkv[m.teacher_layer])
                heads = self._relation_heads()
                loss = sum(fn(s, t, mask=mask, normalizer=normalizer, num_relation_heads=heads) for s, t in pairs) / 3
            else:
                if student_out.attentions is None or teacher_out.attentions is None:
                    raise RuntimeError(
                        "The models returned no attention maps: attention-map KD needs eager attention."
                    )
                s_attn, t_attn = match_heads(
                    student_out.attentions[m.student_layer - 1],
                    teacher_out.attentions[m.teacher_layer - 1],
                    self.args.attention_head_reduction,
                )
                loss = fn(s_attn, t_attn, mask=mask, normalizer=normalizer)
            total = total + m.weight * loss
        return total

    def _relation_heads(self) -> int:
        if self.args.relation_heads is not None:
            return self.args.relation_heads
        if not hasattr(self, "_default_relation_heads"):
            widths = []
            for model in (unwrap(self.model), self.teachers[0]):
                cfg = model.config
                head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
                kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
                widths += [cfg.num_attention_heads * head_dim, kv * head_dim]
            heads = unwrap(self.model).config.num_attention_heads
            self._default_relation_heads = heads if all(w % heads == 0 for w in widths) else math.gcd(*widths)
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

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        self._load_adapters(resume_from_checkpoint)

    def _load_best_model(self) -> None:
        super()._load_best_model()
        self._load_adapters(self.state.best_model_checkpoint)

    def _load_adapters(self, folder: str) -> None:
        path = os.path.join(folder, ADAPTERS_FILE)
        if self.adapters is not None and os.path.isfile(path):
            self.adapters.load_state_dict(safetensors.torch.load_file(path, device="cpu"))

    def _issue_warnings_after_load(self, load_result) -> None:
        # the adapters are restored from their own file, so their absence from model.safetensors is expected
        load_result.missing_keys[:] = [k for k in load_result.missing_keys if ADAPTERS_ATTR not in k]
        super()._issue_warnings_after_load(load_result)

    # ---- publishing ----

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **card,
    ):
        """Save the student and push it with the hf_distill model card through [`hf_distill.hub.push_student`].

        Unlike ``Trainer.push_to_hub`` (which uploads all of ``output_dir`` with a Trainer card), only the student goes
        up: weights, config, tokenizer, distillation_config.json, results.json, report.png and a freshly rendered
        README.md; adapters and training_args.bin stay local. ``card`` takes ``license``, ``tags``, ``datasets``,
        ``language`` and ``base_model``. Returns the ``CommitInfo`` (a ``Future`` of it when ``blocking=False``).
        """
        from huggingface_hub import HfApi

        from .hub import push_student  # hub imports this module

        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        output_dir = self.args.output_dir
        kwargs = {
            "private": private if private is not None else self.args.hub_private_repo,
            "revision": revision or self.args.hub_revision,
            "commit_message": commit_message,
            "token": token or self.args.hub_token,
            "regenerate_card": True,
            **card,
        }
        repo_id = self.args.hub_model_id or os.path.basename(os.path.abspath(output_dir))
        if blocking:
            return push_student(output_dir, repo_id, **kwargs)
        return HfApi().run_as_future(push_student, output_dir, repo_id, **kwargs)
