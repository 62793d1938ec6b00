"""What a distillation run decides once, before training, from its config, student and teachers: the teachers as
sources, the checks of each pair, every teacher's layer matches, what each model is asked for, and the settings of
the objective. The one place where the config becomes objects; :class:`~hf_distill.DistillationTrainer` only runs them.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass

from torch import nn

from .checks import check_label_spaces, ensure_eager_attention
from .constants import CROSS_TOKENIZER_CACHE_COLUMNS, TEACHER_CACHE_COLUMNS
from .losses import loss_needs
from .losses.matched import default_relation_heads
from .losses.objective import ObjectiveSettings
from .mapping import LayerMatch, build_layer_matches, resolve_layer_pairs
from .models import (
    check_tokenizers,
    disable_attention_dropout,
    first_vocab_difference,
    fused_loss_blockers,
    load_tokenizer_for,
    resolve_dtype,
    shared_vocab_rows,
    unwrap,
)
from .teachers import (
    CachedTeacher,
    CrossTokenizerCacheTeacher,
    CrossTokenizerTeacher,
    EMATeacher,
    ModelTeacher,
    Teacher,
    TeacherRequest,
    TopKCacheTeacher,
    TrainedTeacher,
    as_teachers,
)
from .teachers.columns import POSITION_ARGUMENTS

logger = logging.getLogger(__name__)

_NO_DISTRIBUTION = ("regression", "multi_label_classification")  # heads whose outputs are no distribution


def _has_cache(dataset, columns=TEACHER_CACHE_COLUMNS) -> bool:
    return all(c in (getattr(dataset, "column_names", None) or []) for c in columns)


def _maps(args) -> bool:
    """Whether attention KD compares attention maps (which need eager attention)."""
    return args.alpha_attention > 0 and "attention" in loss_needs("attention", args.attention_loss)


def build_teachers(
    teacher_model, args, task: str, train_dataset=None, eval_dataset=None, *, student: nn.Module | None = None
) -> list[Teacher]:
    """The run's teachers: ``teacher_model`` (a model, a name, a :class:`Teacher` or a list; default
    ``args.teacher_model_name_or_path``) as :class:`Teacher` objects; with a top-k teacher cache in the data, the
    first one reads its soft targets from there (:class:`TopKCacheTeacher`), or stands alone when no live teacher
    is needed: a teacher given by name (or path) is then not loaded at all. Empty for a no-KD baseline. With
    ``args.distill_mode == "ema"`` the one teacher is the moving average of ``student`` (:class:`EMATeacher`). Each
    teacher without a column map of its own reads ``args.teacher_columns``."""
    teachers = _teachers(teacher_model, args, task, train_dataset, eval_dataset, student=student)
    if args.teacher_columns:
        if any(isinstance(t, CachedTeacher) for t in teachers):
            raise ValueError(
                "teacher_columns with a teacher cache: the cache holds the teacher's outputs on the inputs it was "
                "built from; build the cache on the teacher's own columns instead, or drop teacher_columns."
            )
        for teacher in teachers:  # a Teacher built with its own map keeps it
            if teacher.columns is None:
                teacher.columns = dict(args.teacher_columns)
    return teachers


def _teachers(
    teacher_model, args, task: str, train_dataset=None, eval_dataset=None, *, student: nn.Module | None = None
) -> list[Teacher]:
    if args.distill_mode == "ema":
        return [_ema_teacher(teacher_model, args, student)]
    if args.distill_mode in ("mutual", "cotrain"):
        return _trained_teachers(teacher_model, args, task)
    if _has_cache(train_dataset, CROSS_TOKENIZER_CACHE_COLUMNS) and args.alpha_logits > 0:
        if not isinstance(teacher_model, CrossTokenizerCacheTeacher):
            raise ValueError(
                "The training data carry a cross-tokenizer teacher cache (teacher_xtok_* columns), which only a "
                "CrossTokenizerCacheTeacher reads: pass teacher_model=CrossTokenizerCacheTeacher(teacher_tokenizer, "
                "student_tokenizer, meta=<the meta load_teacher_cache returns>, model=<the teacher, optional>)."
            )
        return [teacher_model]
    teacher_model = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    cached = _has_cache(train_dataset) or _has_cache(eval_dataset)
    if teacher_model is None:
        if not args.live_teacher_needs(_has_cache(train_dataset)):
            return [TopKCacheTeacher()] if cached and args.alpha_logits > 0 else []
        if _has_cache(train_dataset):
            raise ValueError(
                "Training from a teacher cache without the teacher: hidden-state/attention KD and generated "
                "completions need the teacher itself (set alpha_hidden=alpha_attention=lmbda=0, seq_kd=False)."
            )
        raise ValueError(
            "No teacher: pass teacher_model=, set teacher_model_name_or_path in the config, or train on data "
            "with a top-k teacher cache (hf_distill.data.build_teacher_cache)."
        )
    given = len(teacher_model) if isinstance(teacher_model, list | tuple) else 1
    if args.teacher_weights is not None and len(args.teacher_weights) != given:
        raise ValueError(
            f"teacher_weights {args.teacher_weights} has {len(args.teacher_weights)} entries for {given} teachers."
        )
    if isinstance(teacher_model, str | os.PathLike) and cached and args.alpha_logits > 0:
        name = os.fspath(teacher_model)
        needs = args.live_teacher_needs(_has_cache(train_dataset))
        if not needs and (eval_dataset is None or _has_cache(eval_dataset)):
            # a teacher known by name only: the cache serves every active term, so its weights are not loaded
            return [TopKCacheTeacher(name=name)]
        logger.info(
            "hf_distill: loading the teacher %s: %s needs the model, not only the top-k cache.",
            name,
            " and ".join(needs) or "evaluation data without the cache",
        )
    teachers = as_teachers(
        teacher_model,
        task=task,
        length_groups=args.teacher_length_groups,
        dtype=resolve_dtype(args.teacher_dtype, None) if args.teacher_dtype else None,
        trust_remote_code=args.trust_remote_code,
        attn_implementation="eager" if _maps(args) else None,
    )
    if cached and args.alpha_logits > 0 and not isinstance(teachers[0], TopKCacheTeacher):
        if len(teachers) > 1:
            raise ValueError(
                f"The data carry a top-k teacher cache, which holds one teacher's soft targets, but {len(teachers)} "
                "teachers were given: pass the one the cache was built from, or drop the cache columns."
            )
        teachers = [TopKCacheTeacher(teachers[0])]
    return teachers


def cross_tokenizer_teachers(teachers: list[Teacher], args, task: str, tokenizers) -> list[Teacher]:
    """``teachers`` with each frozen causal-LM teacher whose tokenizer (``tokenizers[1]``, else the one saved beside
    it) differs from the student's (``tokenizers[0]``) made a :class:`CrossTokenizerTeacher`, its vocabulary share
    logged; the others as they are. Nothing changes without the student's tokenizer or without a logit term."""
    student_tokenizer, given = tokenizers
    if task != "causal_lm" or args.alpha_logits == 0 or student_tokenizer is None:
        return teachers
    out = []
    for teacher in teachers:
        if type(teacher) is ModelTeacher:
            teacher_tokenizer = given or load_tokenizer_for(teacher.model)
            if teacher_tokenizer is not None and first_vocab_difference(student_tokenizer, teacher_tokenizer):
                if args.seq_kd:
                    raise ValueError(
                        f"seq_kd: {teacher.name} has another tokenizer than the student, so the completions it writes "
                        "would be in its own tokens; drop seq_kd (on-policy lmbda > 0 works: the student's samples "
                        "are re-encoded for the teacher)."
                    )
                if teacher.columns:
                    raise ValueError(
                        f"teacher_columns {teacher.columns}: {teacher.name} has another tokenizer than the student, "
                        "so it reads the student's own rows (input_ids, attention_mask), re-encoded for it and "
                        "aligned with them; drop teacher_columns."
                    )
                teacher = CrossTokenizerTeacher(teacher.model, teacher_tokenizer, student_tokenizer, name=teacher.name)
                # it re-encodes the rows the student reads: those of the student's column map, if it has one
                rows = {a: c for a, c in (args.student_columns or {}).items() if a in POSITION_ARGUMENTS}
                teacher.columns = rows or None
                logger.info("hf_distill: %s", teacher.describe())
        out.append(teacher)
    return out


@dataclass
class DistillationPlan:
    """The decisions of one run: task, problem type, the layer matches of every teacher and the objective's
    settings; :meth:`request` says what each model is asked for."""

    task: str
    problem_type: str | None
    matches: list[LayerMatch]
    settings: ObjectiveSettings
    teacher_hidden_sizes: list[int]

    def request(self, teacher: int | None, chunked: bool) -> TeacherRequest:
        """What teacher number ``teacher`` (``None``: the student) must give for the active losses."""
        own = [m for m in self.matches if teacher is None or m.teacher == teacher]

        def layers(feature: str, need: str | None = None) -> tuple[int, ...]:
            picked = {
                m.student_layer if teacher is None else m.teacher_layer
                for m in own
                if m.feature == feature and (need is None or need in loss_needs(feature, m.loss))
            }
            return tuple(sorted(picked))

        return TeacherRequest(
            logits=teacher is None or self.settings.alpha_logits > 0,
            chunked=chunked,
            hidden_layers=layers("hidden"),
            attention_layers=layers("attention", "attention"),
            qkv_layers=layers("attention", "qkv"),
        )

    def describe(self, teachers: list[Teacher], loss_path: str) -> str:
        """The resolved set-up, as logged at the start of training."""
        pairs = [
            f"{m.feature}: student {m.student_layer} <- teacher{f'_{m.teacher}' if len(teachers) > 1 else ''} "
            f"{m.teacher_layer} ({m.loss}, w={m.weight:.3g}, proj={m.projection})"
            for m in self.matches
        ]
        kinds = ", ".join(type(t).__name__ for t in teachers) or "none"
        return (
            f"hf_distill: task={self.task}, {len(teachers)} teacher(s) ({kinds}), {loss_path}, layer matches:\n  "
            + ("\n  ".join(pairs) or "none")
        )


def _trained_teachers(teacher_model, args, task: str) -> list[Teacher]:
    """``distill_mode mutual``: the peers trained beside the student (at least one); ``cotrain``: the one teacher
    fine-tuned on the task while it teaches. A model or a name becomes a :class:`TrainedTeacher`."""
    given = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    items = list(given) if isinstance(given, list | tuple) else ([] if given is None else [given])
    mutual = args.distill_mode == "mutual"
    if mutual and not items:
        raise ValueError(
            "distill_mode mutual needs at least one peer besides the student: pass teacher_model=<peer model(s)> "
            "(hf-distill glue: --num_peers 2 or more)."
        )
    if not mutual and len(items) != 1:
        raise ValueError(
            f"distill_mode cotrain trains one teacher beside the student, got {len(items)}: pass one teacher_model."
        )
    teachers = []
    for i, item in enumerate(items, start=1):
        if isinstance(item, Teacher) and not item.trainable:
            raise ValueError(
                f"distill_mode {args.distill_mode} trains its teachers, but {item.name} is a {type(item).__name__}, "
                "which cannot be trained: pass the model itself (or a TrainedTeacher)."
            )
        if not isinstance(item, Teacher):
            model = as_teachers(item, task=task, trust_remote_code=args.trust_remote_code)[0].model
            save_dir = f"peer_{i}" if mutual else "teacher"
            item = TrainedTeacher(
                model,
                learns_from_peers=mutual,
                save_dir=save_dir,
                name=getattr(model.config, "name_or_path", None) or None,
            )
        teachers.append(item)
    return teachers


def check_ema_student(student: nn.Module) -> None:
    """An EMA teacher averages the weights the student trains: a quantized student (``is_quantized``, or a
    ``quantization_config`` in its config) trains none of its own unless it is a PEFT model (its adapters are then
    what is averaged). Refused before the student is copied."""
    model = unwrap(student)
    quantization = getattr(model, "quantization_config", None) or getattr(model.config, "quantization_config", None)
    adapters = hasattr(unwrap(student, peft=False), "peft_config") or getattr(model, "_hf_peft_config_loaded", False)
    if not (getattr(model, "is_quantized", False) or quantization) or adapters:
        return
    method = getattr(quantization, "quant_method", None) or (quantization or {}).get("quant_method", "quantized")
    raise ValueError(
        f"distill_mode ema averages the student's weights, but {type(model).__name__} is quantized ({method}) "
        "without adapters: its weights are not trained and cannot be averaged; attach LoRA adapters (peft) to it, "
        "or load it unquantized."
    )


def _ema_teacher(teacher_model, args, student: nn.Module | None) -> EMATeacher:
    """``distill_mode ema``: the student's moving average, which takes the place of any other teacher."""
    given = teacher_model if teacher_model is not None else args.teacher_model_name_or_path
    if given is not None and not isinstance(given, EMATeacher):
        name = given if isinstance(given, str | os.PathLike) else type(given).__name__
        raise ValueError(
            f"distill_mode ema takes no teacher (given: {name}): its teacher is the moving average of the student's "
            "own weights. Drop teacher_model / teacher_model_name_or_path, or use distill_mode frozen."
        )
    if isinstance(given, EMATeacher):
        given.publish = given.publish or args.save_ema
        return given
    if student is None:
        raise ValueError("distill_mode ema needs the student, whose weights its teacher averages.")
    check_ema_student(student)
    return EMATeacher(student, decay=args.ema_decay, warmup_steps=args.ema_warmup_steps, publish=args.save_ema)


def build_plan(student: nn.Module, teachers: list[Teacher], args, task: str, tokenizers=(None, None)):
    """Check every teacher against the student and resolve the plan (see the module docstring).

    ``tokenizers``: the student's and the teachers' tokenizer (compared before token-level KD; a teacher's defaults
    to the one saved beside it). Attention-map KD switches the student and the teachers to eager attention and the
    student's attention dropout off.
    """
    inner = unwrap(student)
    problem_type = inner.config.problem_type
    if task == "sequence_classification" and inner.config.num_labels == 1:
        problem_type = "regression"
    vocab_rows = _check_teachers(inner, teachers, args, task, tokenizers)
    if len(teachers) > 1 and args.alpha_logits > 0 and any(getattr(t, "own_tokenizer", False) for t in teachers):
        raise ValueError(
            f"{len(teachers)} teachers, one with another tokenizer than the student: its predictions cannot be mixed "
            "with another teacher's; distil from it alone."
        )
    if problem_type in _NO_DISTRIBUTION and args.logit_loss != "mse":
        # a softmax over one output (or over independent sigmoid outputs) is no distribution to match
        logger.warning("problem_type=%s: using logit_loss='mse' instead of %r.", problem_type, args.logit_loss)
    if _maps(args):
        _check_attention_maps(student, teachers, args)
    matches = []
    if args.alpha_hidden > 0 or args.alpha_attention > 0:
        for i, teacher in enumerate(teachers):
            if getattr(teacher, "own_tokenizer", False):
                raise ValueError(
                    f"teacher_model[{i}] ({teacher.name}) has another tokenizer than the student: its positions are "
                    "not the student's, so hidden-state and attention KD cannot pair them; set "
                    "alpha_hidden=alpha_attention=0."
                )
            matches += _teacher_matches(inner.config, teacher, i, args)
    relation_heads = tuple(
        (args.relation_heads or default_relation_heads(inner.config, t.config))
        if any(m.teacher == i and "qkv" in loss_needs(m.feature, m.loss) for m in matches)
        else 1
        for i, t in enumerate(teachers)
    )
    settings = ObjectiveSettings(
        task=task,
        alpha_task=args.alpha_task,
        alpha_logits=args.alpha_logits,
        alpha_hidden=args.alpha_hidden,
        alpha_attention=args.alpha_attention,
        temperature=args.temperature,
        logit_loss="mse" if problem_type in _NO_DISTRIBUTION else args.logit_loss,
        beta=args.jsd_beta,
        label_smoothing=args.label_smoothing_factor,
        head_reduction=args.attention_head_reduction,
        problem_type=problem_type,
        vocab_rows=vocab_rows,
        teacher_weights=tuple(args.teacher_weights) if args.teacher_weights is not None else None,
        relation_heads=relation_heads,
        chunk_size=args.kd_chunk_size,
        cross_tokenizer=args.cross_tokenizer_mix,
        uld_top_k=args.uld_top_k,
    )
    widths = [t.hidden_size if t.config is not None else 0 for t in teachers]
    return DistillationPlan(task, problem_type, matches, settings, widths)


def _check_teachers(student: nn.Module, teachers: list[Teacher], args, task: str, tokenizers) -> int | None:
    """Task, vocabulary and label space of each teacher against the student; returns the shared vocabulary rows
    token-level KD compares (``None``: all)."""
    vocab_rows = None
    for teacher in teachers:
        if getattr(teacher, "task", task) != task:
            raise ValueError(f"The student solves {task} but a teacher solves {teacher.task}.")
        if getattr(teacher, "own_tokenizer", False):  # aligned by text: no vocabulary to share row by row
            continue
        if task == "causal_lm" and args.alpha_logits > 0 and teacher.model is not None:
            rows = shared_vocab_rows(
                student, teacher.model, tokenizers[0], tokenizers[1] or load_tokenizer_for(teacher.model)
            )
            if vocab_rows not in (None, rows):
                raise ValueError(f"The teachers share {vocab_rows} and {rows} vocabulary rows with the student.")
            vocab_rows = rows
        elif task == "causal_lm" and args.alpha_logits > 0 and tokenizers[0] is not None:
            # a teacher known by name only (its soft targets in a top-k cache): its tokenizer is compared all the same
            teacher_tokenizer = tokenizers[1] or load_tokenizer_for(teacher.name)
            if teacher_tokenizer is not None:
                check_tokenizers(tokenizers[0], teacher_tokenizer)
        elif task != "causal_lm" and teacher.config is not None:
            check_label_spaces(student.config, teacher.config)
    return vocab_rows


def _check_attention_maps(student: nn.Module, teachers: list[Teacher], args) -> None:
    """Attention-map KD: equal head counts (or a head reduction), eager attention everywhere, no attention dropout."""
    s_heads = unwrap(student).config.num_attention_heads
    for i, teacher in enumerate(teachers):
        t_heads = teacher.config.num_attention_heads if teacher.config is not None else s_heads
        if s_heads != t_heads and args.attention_head_reduction == "none":
            raise ValueError(
                f"Attention KD on maps needs equal head counts (student {s_heads}, teacher {t_heads}); set "
                "attention_head_reduction='mean' or attention_loss='relation'."
            )
        if teacher.model is not None:
            ensure_eager_attention(teacher.model, "teacher" if i == 0 else f"teacher_model[{i}]")
    ensure_eager_attention(student, "student")
    if disable_attention_dropout(student):
        logger.warning("Attention-map KD: set the student's attention-probability dropout to 0.")


def _teacher_matches(s_cfg, teacher: Teacher, index: int, args) -> list[LayerMatch]:
    """Teacher ``index``'s hidden-state and attention matches, its layer map resolved against its own depth."""
    if teacher.config is None:
        raise ValueError(
            f"teacher_model[{index}] ({teacher.name}) has no config: hidden-state and attention KD need its layer "
            "count and width (give the teacher a model config, or set alpha_hidden=alpha_attention=0)."
        )

    def pairs(spec):
        init = getattr(s_cfg, "distillation_teacher_layers", None)
        return resolve_layer_pairs(spec, s_cfg.num_hidden_layers, teacher.num_hidden_layers, init)

    common = {
        "student_hidden_size": s_cfg.hidden_size,
        "teacher_hidden_size": teacher.hidden_size,
        "teacher": index,
    }
    hidden = build_layer_matches(
        pairs(args.layer_map),
        **common,
        hidden_loss=args.hidden_loss if args.alpha_hidden > 0 else None,
        attention_loss=None,
        projection=args.projection,
    )
    attention = build_layer_matches(
        pairs(args.attention_layer_map or args.layer_map),
        **common,
        hidden_loss=None,
        attention_loss=args.attention_loss if args.alpha_attention > 0 else None,
    )
    return hidden + attention


def own_param_groups(args, adapters: nn.Module | None, teachers: list[Teacher]) -> list[dict]:
    """The optimizer groups beside the student's: the projection adapters when ``args.adapter_learning_rate`` is set
    (no weight decay), and each trained teacher's parameters at its own learning rate."""
    groups = []
    if args.adapter_learning_rate is not None and adapters is not None and len(list(adapters.parameters())):
        groups.append({"params": list(adapters.parameters()), "lr": args.adapter_learning_rate, "weight_decay": 0.0})
    for teacher in teachers:
        if params := teacher.parameters_to_train():
            lr = teacher.learning_rate or args.learning_rate
            groups.append({"params": params, "lr": lr, "weight_decay": args.weight_decay})
    return groups


def chunked_loss_blockers(placement: str, student: nn.Module, teachers: list[Teacher]) -> list[str]:
    """Why the chunked causal-LM loss cannot run with these models (see ``fused_loss_blockers``), ZeRO-3 included
    (``placement`` as :func:`hf_distill.distributed.teacher_placement` gives it)."""
    if any(t.trainable for t in teachers):
        return ["a trained teacher (mutual, cotrain) learns from the student's full logits"]
    if placement == "zero3":
        # the teachers are DeepSpeed engines by now, and the student becomes one: asking them for logits_to_keep
        # would give an accidental reason, this is the real one
        return ["ZeRO-3 partitions the output heads that the chunked loss reads outside the forward"]
    return fused_loss_blockers([unwrap(student), *(t.model for t in teachers if t.model is not None)])


def distillation_record(plan: DistillationPlan, teachers: list[Teacher], student: nn.Module, args, version) -> dict:
    """What ``distillation_config.json`` holds: the package version, the task, the teachers, the layer matches and
    every distillation field of the config."""
    names = [t.name for t in teachers]
    if args.teacher_model_name_or_path and names:
        names[0] = args.teacher_model_name_or_path
    return {
        "hf_distill_version": version,
        "task": plan.task,
        "teachers": names,
        "student_layers_from_teacher": getattr(unwrap(student).config, "distillation_teacher_layers", None),
        "layer_matches": [asdict(m) for m in plan.matches],
        **args.distillation_dict(),
        **{k: v for teacher in teachers for k, v in teacher.record().items()},  # what the teachers really ran with
    }
