"""The GLUE job: fine-tune the teacher if asked, build a student from its layers, distill, evaluate both, report.

Output layout: ``output_dir/`` holds the distilled student (weights, config, tokenizer, distillation_config.json),
``results.json`` and ``report.png``; ``output_dir/teacher/`` the fine-tuned teacher (with ``--finetune_teacher``);
``output_dir/student_no_kd/`` the baseline student (with ``--baseline_no_kd``). With ``--teacher_cache DIR`` the
teacher's outputs for the KD training set are computed once into ``DIR`` (or read from it when it holds a cache of
this teacher, data and configuration) and the student distils from them without running the teacher.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from datasets import concatenate_datasets
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
    set_seed,
)

from ..constants import IGNORE_INDEX
from ..data import PadColumns, build_encoder_cache, is_encoder_cache, load_encoder_cache, with_cache_index
from ..distillation_config import GENERATION_MODES, DistillationConfig, check_number
from ..distillation_plan import build_plan
from ..distillation_trainer import DistillationTrainer
from ..file_checks import error_line
from ..generations import dropout_rate, train_born_again, train_noisy_student
from ..models import build_student, dropout_overrides, resolve_model_path
from ..report import build_results, write_report
from ..tasks import (
    augment_dataset,
    compute_metrics_for,
    embedding_neighbours,
    get_task,
    load_glue,
    tokenize_glue,
    word_candidates,
)
from ..tasks.glue import task_files
from ..teachers import ModelTeacher, TrainedTeacher
from ..validation import (
    check_glue_data_dir,
    parse_layers,
    prepare_output_dir,
    resolve_resume,
)
from .glue_checks import validate_compare_job, validate_glue_job

logger = logging.getLogger(__name__)


@dataclass
class GlueArguments:
    """What to distill on which GLUE task (the training knobs are in DistillationConfig)."""

    task_name: str = field(
        default="sst2", metadata={"help": "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli."}
    )
    data_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Folder with the task's train.tsv and dev.tsv (GLUE download format); default: the Hub."},
    )
    finetune_teacher: bool = field(
        default=False,
        metadata={"help": "Fine-tune the teacher on the task first (for a base, not task-tuned, model)."},
    )
    teacher_num_train_epochs: float = field(
        default=1.0, metadata={"help": "Epochs of teacher fine-tuning (unless --teacher_max_steps is set)."}
    )
    teacher_max_steps: Optional[int] = field(
        default=None,
        metadata={
            "help": "Optimizer steps of teacher fine-tuning (default: --teacher_num_train_epochs epochs; the job "
            "prints how many steps that is before it starts)."
        },
    )
    teacher_learning_rate: Optional[float] = field(
        default=None, metadata={"help": "Learning rate of teacher fine-tuning (default: learning_rate)."}
    )
    student_layers: Optional[str] = field(
        default=None,
        metadata={"help": "0-based teacher layers the student keeps, e.g. '1,3,5' (default: every other one)."},
    )
    student_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Use this (smaller) model as the student instead of teacher layers."}
    )
    student_dropout: Optional[float] = field(
        default=None,
        metadata={
            "help": "Dropout of the student's hidden states and attention probabilities (default: the teacher's "
            "config). The no-KD baseline gets the same student."
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Subsample the training set to this many examples (seeded shuffle)."}
    )
    unlabelled_train_samples: int = field(
        default=0,
        metadata={
            "help": "Also distill on this many further training examples of the task with their labels removed (they "
            "stand in for unlabelled in-domain text and learn from the teacher alone). The teacher is fine-tuned and "
            "the no-KD baseline trained on the labelled examples only, the baseline for as many steps as the KD run."
        },
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Evaluate on at most this many examples of each evaluation split."}
    )
    num_peers: int = field(
        default=2, metadata={"help": "--distill_mode mutual: models trained together, the student included (>= 2)."}
    )
    baseline_no_kd: bool = field(
        default=False,
        metadata={"help": "Also train the same student without KD (alpha_task only), same budget, for the report."},
    )
    augment_prob: float = field(
        default=0.0,
        metadata={
            "help": "Fraction of training examples rewritten by teacher-embedding word neighbours and labelled by the "
            "teacher alone (KD only, label dropped); same number of examples and steps. 0 turns it off."
        },
    )
    augment_replace_prob: float = field(
        default=0.3, metadata={"help": "Chance that each word of a rewritten example is replaced."}
    )
    augment_neighbours: int = field(
        default=8, metadata={"help": "A replaced word becomes one of its this many nearest teacher-embedding words."}
    )
    speed_batch_size: int = field(default=32, metadata={"help": "Batch size of the latency measurement."})
    speed_seq_len: int = field(default=64, metadata={"help": "Sequence length of the latency measurement."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Cache folder for Hub downloads."})
    teacher_cache: Optional[str] = field(
        default=None,
        metadata={
            "help": "Folder of an encoder teacher cache: the teacher's logits and the internals the KD losses read, "
            "computed once for the KD training set (after fine-tuning) and stored there without padding in float16, "
            "or reused when the folder holds one of this teacher, data and configuration; the student then "
            "distils without running the teacher."
        },
    )

    def __post_init__(self):
        for name in ("augment_prob", "augment_replace_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1].")
        if self.student_dropout is not None and not 0.0 <= self.student_dropout < 1.0:
            raise ValueError(f"student_dropout={self.student_dropout} must be in [0, 1), or unset for the teacher's.")
        if self.unlabelled_train_samples < 0:
            raise ValueError(f"unlabelled_train_samples={self.unlabelled_train_samples} must be 0 or more.")
        if self.augment_neighbours < 1:
            raise ValueError(f"augment_neighbours={self.augment_neighbours} must be at least 1.")
        check_number(
            "teacher_learning_rate", self.teacher_learning_rate, "> 0 (or unset for learning_rate)", lambda v: v > 0
        )
        check_number("teacher_num_train_epochs", self.teacher_num_train_epochs, ">= 0", lambda v: v >= 0)


def prepare_data(glue_args: GlueArguments, tokenizer, seed: int):
    task = get_task(glue_args.task_name)
    check_glue_data_dir(glue_args.data_dir, task)  # a wrong data_dir is an error, never a switch to the Hub
    try:
        raw = load_glue(task, data_dir=glue_args.data_dir, cache_dir=glue_args.cache_dir)
    except OSError as err:  # the Hub is unreachable (ConnectionError) or refuses
        if glue_args.data_dir is not None:
            raise
        raise ValueError(
            f"Cannot load {task.name} from the Hub ({error_line(err)}); "
            f"pass --data_dir with the {task.dir_name} folder of the GLUE download ({', '.join(task_files(task))})."
        ) from err
    train = raw["train"]
    n_unlabelled = glue_args.unlabelled_train_samples
    available = len(train) - n_unlabelled  # max_train_samples is a cap, as in transformers' run_glue
    if available < 1:
        raise ValueError(
            f"--unlabelled_train_samples {n_unlabelled} leaves no labelled example of {task.name}'s {len(train)} "
            "training examples; lower it."
        )
    n_labelled = available if glue_args.max_train_samples is None else min(glue_args.max_train_samples, available)
    if n_labelled + n_unlabelled < len(train):
        logger.warning(
            "Subsampled the training set to %d labelled and %d unlabelled of %d examples.",
            n_labelled,
            n_unlabelled,
            len(train),
        )
        train = train.shuffle(seed=seed)
    raw["train"] = train.select(range(n_labelled))
    if n_unlabelled:
        raw["unlabelled"] = train.select(range(n_labelled, n_labelled + n_unlabelled))
    for split in task.eval_splits:
        if glue_args.max_eval_samples is not None and glue_args.max_eval_samples < len(raw[split]):
            raw[split] = raw[split].select(range(glue_args.max_eval_samples))
    data = tokenize_glue(raw, tokenizer, task, max_length=glue_args.max_seq_length)
    if n_unlabelled:
        missing = float(IGNORE_INDEX) if task.is_regression else IGNORE_INDEX
        data["unlabelled"] = data["unlabelled"].map(lambda _: {"labels": missing}, desc="dropping labels")
    return task, data


def load_teacher(glue_args, args: DistillationConfig, task, data, tokenizer, collator):
    name = resolve_model_path(args.teacher_model_name_or_path)
    labels = {} if task.is_regression else {"id2label": task.id2label, "label2id": task.label2id}
    set_seed(args.seed)  # a base model's new classification head: the same seed, the same teacher
    teacher = AutoModelForSequenceClassification.from_pretrained(
        name, num_labels=task.num_labels, use_safetensors=True, trust_remote_code=args.trust_remote_code, **labels
    )
    if not glue_args.finetune_teacher:
        return teacher
    teacher_dir = os.path.join(args.output_dir, "teacher")
    teacher_args = TrainingArguments(
        **{k: getattr(args, k) for k in _SHARED_TRAINING_FIELDS},
        learning_rate=glue_args.teacher_learning_rate or args.learning_rate,
        num_train_epochs=glue_args.teacher_num_train_epochs,
        max_steps=-1 if glue_args.teacher_max_steps is None else glue_args.teacher_max_steps,
        output_dir=teacher_dir,
        save_strategy="no",
    )
    print(
        f"[glue] fine-tuning the teacher on {task.name}: {teacher_budget(glue_args, teacher_args, len(data['train']))}"
    )
    trainer = Trainer(
        model=teacher,
        args=teacher_args,
        train_dataset=data["train"],
        data_collator=collator,
        processing_class=tokenizer,
    )
    trainer.train()
    trainer.save_model(teacher_dir)
    return teacher


def teacher_budget(glue_args: GlueArguments, teacher_args: TrainingArguments, num_examples: int) -> str:
    """How long teacher fine-tuning is, in optimizer steps, and which flag sets it (never a silent epoch)."""
    if glue_args.teacher_max_steps is not None:
        return f"{num_examples} examples, {glue_args.teacher_max_steps} steps (--teacher_max_steps)"
    batches = math.ceil(num_examples / (teacher_args.per_device_train_batch_size * max(teacher_args.world_size, 1)))
    steps = math.ceil(
        glue_args.teacher_num_train_epochs * max(math.ceil(batches / teacher_args.gradient_accumulation_steps), 1)
    )
    return (
        f"{num_examples} examples, {steps} steps ({glue_args.teacher_num_train_epochs:g} epoch(s), "
        "--teacher_num_train_epochs; cap them with --teacher_max_steps N)"
    )


# TrainingArguments fields that teacher fine-tuning takes over from the distillation run
_SHARED_TRAINING_FIELDS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "seed",
    "bf16",
    "fp16",
    "use_cpu",
    "logging_steps",
    "report_to",
    "disable_tqdm",
    "dataloader_num_workers",
    "train_sampling_strategy",
)


def make_student(glue_args: GlueArguments, args, teacher, task):
    if glue_args.student_model_name_or_path:
        labels = {} if task.is_regression else {"id2label": task.id2label, "label2id": task.label2id}
        path = resolve_model_path(glue_args.student_model_name_or_path)
        dropout = dropout_overrides(glue_args.student_dropout, AutoConfig.from_pretrained(path))
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=task.num_labels, **labels, **dropout
        )
    torch.manual_seed(args.seed)
    layers = parse_layers(glue_args.student_layers)
    return build_student(teacher, layers=layers, **dropout_overrides(glue_args.student_dropout, teacher.config))


def evaluate_model(model, args, task, data, collator, compute_metrics) -> dict:
    """Every metric of the task on its first eval split; later splits (MNLI mismatched) get a ``_mm`` suffix."""
    eval_args = TrainingArguments(
        output_dir=os.path.join(args.output_dir, "eval"),
        per_device_eval_batch_size=args.per_device_eval_batch_size,
        report_to="none",
        use_cpu=args.use_cpu,
        disable_tqdm=args.disable_tqdm,
    )
    trainer = Trainer(model=model, args=eval_args, data_collator=collator, compute_metrics=compute_metrics)
    scores = {}
    for i, split in enumerate(task.eval_splits):
        metrics = trainer.evaluate(data[split], metric_key_prefix="eval")
        suffix = "" if i == 0 else "_mm"
        scores.update({f"{k}{suffix}": v for k, v in metrics.items()})
    return scores


def check_kd_only_data(glue_args: GlueArguments, args) -> None:
    """Examples without a label (augmented or unlabelled) learn from the teacher alone: refuse them without KD."""
    if args.alpha_logits or args.alpha_hidden or args.alpha_attention:
        return
    for name in ("augment_prob", "unlabelled_train_samples"):
        if getattr(glue_args, name):
            raise ValueError(
                f"{name}={getattr(glue_args, name)} needs a KD term: examples without a label learn from the teacher "
                f"only. Set alpha_logits (or alpha_hidden / alpha_attention) > 0, or {name} 0."
            )


def replacement_neighbours(glue_args: GlueArguments, teacher, tokenizer):
    """``(W, k)`` the ``--augment_neighbours`` nearest teacher-embedding words of each candidate word (the word
    replacement's table), or None when augmentation is off. Computed once per teacher: reuse it for every draw."""
    if glue_args.augment_prob == 0:
        return None
    return embedding_neighbours(
        teacher.get_input_embeddings().weight, word_candidates(tokenizer), glue_args.augment_neighbours
    )


def augment_train(glue_args: GlueArguments, args, teacher, tokenizer, data, seed=None, neighbours=None) -> dict:
    """``data`` with its training split augmented as ``glue_args.augment_*`` say (unchanged when it is off), the
    rewrites drawn with ``seed`` (default ``args.seed``) from ``neighbours`` (default: computed from ``teacher``,
    :func:`replacement_neighbours`)."""
    check_kd_only_data(glue_args, args)
    if glue_args.augment_prob == 0:
        return data
    if neighbours is None:
        neighbours = replacement_neighbours(glue_args, teacher, tokenizer)
    train = augment_dataset(
        data["train"], neighbours, glue_args.augment_prob, glue_args.augment_replace_prob,
        seed=args.seed if seed is None else seed,
    )  # fmt: skip
    rewritten = sum(label == IGNORE_INDEX for label in train["labels"])
    print(f"[glue] augmentation: {rewritten} of {len(train)} training examples rewritten and labelled by the teacher")
    return {**data, "train": train}


def check_teacher_cache(glue_args: GlueArguments, args) -> None:
    """Before anything is loaded: a teacher cache needs a KD term, and a folder that is a cache or empty."""
    path = glue_args.teacher_cache
    if path is None:
        return
    if not (args.alpha_logits or args.alpha_hidden or args.alpha_attention):
        raise ValueError(
            f"--teacher_cache {path} needs a KD term to cache the teacher for: set alpha_logits (or alpha_hidden / "
            "alpha_attention) > 0, or drop --teacher_cache."
        )
    if os.path.isfile(path) or (os.path.isdir(path) and os.listdir(path) and not is_encoder_cache(path)):
        raise ValueError(
            f"--teacher_cache {path} holds no finished teacher cache but other files: point it at an empty or new "
            "folder."
        )


def cached_teacher(glue_args: GlueArguments, args, teacher, student, train):
    """The teacher of the KD run as a cache of its outputs on ``train`` (``glue_args.teacher_cache``), built now or
    loaded when the folder holds a matching one; returns ``(teacher, train with its cache index column)``."""
    path = glue_args.teacher_cache
    live = ModelTeacher(teacher, length_groups=args.teacher_length_groups)  # as the trainer would run it
    plan = build_plan(student, [live], args, live.task)
    request = plan.request(0, chunked=False)
    # self-relation KD reads the relations themselves, computed once with the run's head count
    heads = plan.settings.relation_heads[0] if request.qkv_layers else None
    # a fine-tuned teacher's weights are the files saved after fine-tuning, not those it was loaded from
    weights = os.path.join(args.output_dir, "teacher") if glue_args.finetune_teacher else teacher
    if is_encoder_cache(path):
        cache = load_encoder_cache(
            path, dataset=train, teacher=weights, request=request, source=live, relation_heads=heads
        )
        print(f"[glue] teacher cache: reusing {path} ({len(train)} examples); the teacher is not run for them")
    else:
        print(f"[glue] teacher cache: running the teacher once over {len(train)} examples into {path}")
        cache = build_encoder_cache(
            teacher,
            train,
            request,
            path,
            batch_size=args.per_device_eval_batch_size,
            weights=weights,
            relation_heads=heads,
        )
        cache.source = live  # evaluation batches (no cache index) run it live
    return cache, with_cache_index(train)


def distill(model, teacher, args, data, collator, tokenizer, compute_metrics, eval_split, resume=None):
    trainer = DistillationTrainer(
        model=model,
        teacher_model=teacher,
        args=args,
        train_dataset=data["train"],
        eval_dataset=data[eval_split],
        data_collator=collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(args.output_dir)
    return trainer


def train_baseline(glue_args, args, trainer, make, teacher, data, collator, tokenizer, compute_metrics, task):
    """With ``--baseline_no_kd``, ``(model, trainer)`` of the student ``make()`` trained without KD (same budget, no
    augmentation), else ``(None, None)``."""
    if not glue_args.baseline_no_kd:
        return None, None
    print("[glue] training the same student without KD (same budget, no augmentation)")
    base_args = dataclasses.replace(
        args,
        output_dir=os.path.join(args.output_dir, "student_no_kd"),
        resume_from_checkpoint=None,
        alpha_task=1.0,
        alpha_logits=0.0,
        alpha_hidden=0.0,
        alpha_attention=0.0,
        distill_mode="frozen",
        generations=1,  # one plain run, whatever the KD run's mode (born_again / noisy_student chain generations)
        ensemble_generations=False,
        teacher_columns=None,  # the noisy student's clean copy: its data only, the baseline's has none
        save_ema=False,
        # as many optimizer steps as the KD run, which also saw the unlabelled examples
        max_steps=trainer.state.global_step if "unlabelled" in data else args.max_steps,
    )
    baseline = make()
    return baseline, distill(
        baseline, teacher, base_args, data, collator, tokenizer, compute_metrics, task.eval_splits[0]
    )


# the tokenizer's columns the noisy student's teacher reads from its own copy (``teacher_<column>``)
TOKEN_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")


def clean_teacher_inputs(data: dict, tokenizer, collator) -> tuple[dict, dict[str, str], PadColumns]:
    """A noisy student's data: every split with a ``teacher_<column>`` copy of its token columns, made before any
    augmentation, so that the teacher reads the clean sentence while the student reads its rewrite (Xie et al.
    2020: only the student is noised). The word replacement is token for token, so positions still pair for the
    hidden-state and relation terms. Returns ``(data, teacher_columns, collator)``, the collator padding the
    copies too."""
    columns = [c for c in TOKEN_COLUMNS if c in data["train"].column_names]
    copied = {
        split: ds.map(lambda ex: {f"teacher_{c}": ex[c] for c in columns}, desc="the teacher's clean copy")
        for split, ds in data.items()
    }
    pad = {"teacher_input_ids": tokenizer.pad_token_id, "teacher_attention_mask": 0, "teacher_token_type_ids": 0}
    return (
        copied,
        {c: f"teacher_{c}" for c in columns},
        # padded on the tokenizer's side, as the collator pads the student's columns: the positions pair
        PadColumns(
            collator, {f"teacher_{c}": pad[f"teacher_{c}"] for c in columns}, left=tokenizer.padding_side == "left"
        ),
    )


def with_unlabelled(glue_args, args, teacher, tokenizer, data, seed=None, neighbours=None) -> dict:
    """The KD run's data: the training split augmented (drawn with ``seed``, default ``args.seed``, from
    ``neighbours``, see :func:`augment_train`), and the unlabelled examples added (the teacher labels both)."""
    kd_data = augment_train(glue_args, args, teacher, tokenizer, data, seed, neighbours)
    if "unlabelled" in data:
        kd_data = {**kd_data, "train": concatenate_datasets([kd_data["train"], data["unlabelled"]])}
        print(f"[glue] + {len(data['unlabelled'])} unlabelled examples labelled by the teacher")
    return kd_data


def run(glue_args: GlueArguments, args: DistillationConfig) -> dict:
    """Run the whole job and return the ``results.json`` object."""
    check_kd_only_data(glue_args, args)
    check_teacher_cache(glue_args, args)
    tokenizer = validate_glue_job(glue_args, args)  # every input checked before anything is loaded or trained
    prepare_output_dir(args, "glue")
    task, data = prepare_data(glue_args, tokenizer, args.seed)
    collator = DataCollatorWithPadding(tokenizer)
    compute_metrics = compute_metrics_for(task)
    if args.distill_mode in ("ema", "mutual"):
        own_run = run_ema if args.distill_mode == "ema" else run_mutual
        return own_run(glue_args, args, task, data, tokenizer, collator, compute_metrics)
    teacher = load_teacher(glue_args, args, task, data, tokenizer, collator)
    if args.distill_mode in GENERATION_MODES:
        return run_generations(glue_args, args, task, data, tokenizer, collator, compute_metrics, teacher)

    print(f"[glue] distilling a student on {task.name} ({len(data['train'])} examples)")
    student = make_student(glue_args, args, teacher, task)
    kd_data = with_unlabelled(glue_args, args, teacher, tokenizer, data)
    kd_teacher = teacher
    if args.distill_mode == "cotrain":  # fine-tuned on the task in the same loop, at its own learning rate
        print(
            f"[glue] co-training the teacher (learning rate {glue_args.teacher_learning_rate or args.learning_rate})"
        )
        kd_teacher = TrainedTeacher(
            teacher, learns_from_peers=False, learning_rate=glue_args.teacher_learning_rate, save_dir="teacher",
            name=args.teacher_model_name_or_path,
        )  # fmt: skip
    if glue_args.teacher_cache:
        kd_teacher, train = cached_teacher(glue_args, args, teacher, student, kd_data["train"])
        kd_data = {**kd_data, "train": train}
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    trainer = distill(
        student, kd_teacher, args, kd_data, collator, tokenizer, compute_metrics, task.eval_splits[0], resume
    )

    baseline, baseline_trainer = train_baseline(
        glue_args, args, trainer, lambda: make_student(glue_args, args, teacher, task), teacher, data, collator,
        tokenizer, compute_metrics, task,
    )  # fmt: skip

    print("[glue] evaluating teacher and student(s), measuring speed")
    scores = {
        name: evaluate_model(m, args, task, data, collator, compute_metrics)
        for name, m in (("teacher", teacher), ("student", student))
    }
    extra = {"teacher_model": args.teacher_model_name_or_path}
    return report_job(
        glue_args, args, task, data, collator, compute_metrics, trainer, (scores["teacher"], scores["student"]),
        (teacher, student), (baseline, baseline_trainer), extra, f"GLUE {task.name}",
    )  # fmt: skip


def report_job(
    glue_args, args, task, data, collator, compute_metrics, trainer, scores, models, baseline, extra, title
):
    """``results.json`` (and ``report.png``) of a finished GLUE job, returned: ``scores`` and ``models`` are the
    (teacher, student) pairs the report compares, ``baseline`` the no-KD ``(model, trainer)`` or ``(None, None)``,
    ``trainer`` the one that trained the student; ``extra`` adds the mode's own entries."""
    (teacher_scores, student_scores), (teacher, student), (base_model, base_trainer) = scores, models, baseline
    results = build_results(
        task.name,
        task.metric,
        teacher_scores,
        student_scores,
        teacher,
        student,
        baseline_scores=evaluate_model(base_model, args, task, data, collator, compute_metrics)
        if base_model
        else None,
        baseline_model=base_model,
        batch_size=glue_args.speed_batch_size,
        seq_len=glue_args.speed_seq_len,
        extra={
            "distill_mode": args.distill_mode,
            "train_examples": len(data["train"]),
            "unlabelled_examples": len(data["unlabelled"]) if "unlabelled" in data else 0,
            "max_steps": trainer.state.global_step,
            **({"no_kd_max_steps": base_trainer.state.global_step} if base_trainer else {}),
            "student_layers": getattr(student.config, "distillation_teacher_layers", None),
            **extra,
        },
    )
    if args.should_save:
        write_report(results, args.output_dir, log_history=trainer.state.log_history, title=title)
    return results


def own_student(glue_args: GlueArguments, args, task, seed: int | None = None):
    """A student of its own (``--distill_mode ema`` or ``mutual``, or ``born_again`` from
    ``--student_model_name_or_path``): ``--student_model_name_or_path`` with the task's head (drawn with ``seed``,
    default ``args.seed``), cut to ``--student_layers`` when given."""
    torch.manual_seed(args.seed if seed is None else seed)
    model = make_student(dataclasses.replace(glue_args, student_layers=None), args, None, task)
    layers = parse_layers(glue_args.student_layers)
    if layers is None:
        return model
    torch.manual_seed(args.seed)
    return build_student(model, layers=layers)


def run_ema(glue_args: GlueArguments, args, task, data, tokenizer, collator, compute_metrics) -> dict:
    """``--distill_mode ema``: train the student with its own moving average as the teacher (mean teacher).

    ``results.json``'s ``teacher`` is the moving average and its ``student`` the model saved in ``output_dir``: the
    raw student, or with ``--save_ema`` the average itself, whose raw student is then ``student_before_ema``."""
    print(f"[glue] training a student on {task.name} ({len(data['train'])} examples), its moving average as teacher")
    student = own_student(glue_args, args, task)
    kd_data = with_unlabelled(glue_args, args, student, tokenizer, data)
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    # the job scores the raw student before it takes the average's weights (save_ema), so the trainer does not
    train_args = dataclasses.replace(args, save_ema=False)
    trainer = distill(
        student, None, train_args, kd_data, collator, tokenizer, compute_metrics, task.eval_splits[0], resume
    )
    ema = trainer.teachers[0]
    baseline, baseline_trainer = train_baseline(
        glue_args, args, trainer, lambda: own_student(glue_args, args, task), None, data, collator, tokenizer,
        compute_metrics, task,
    )  # fmt: skip
    print("[glue] evaluating the student, its moving average and the no-KD student, measuring speed")
    raw = evaluate_model(student, args, task, data, collator, compute_metrics)
    averaged = evaluate_model(ema.model, args, task, data, collator, compute_metrics)
    extra = {}
    if args.save_ema:
        ema.copy_to(student)
        ema.publish = True  # so distillation_config.json says these weights are the average
        trainer.save_model(args.output_dir)
        extra["student_before_ema"] = {k.removeprefix("eval_"): v for k, v in raw.items()}
    extra = {
        **extra,
        "ema_decay": args.ema_decay,
        "ema_warmup_steps": args.ema_warmup_steps,
        "saved": "ema" if args.save_ema else "student",
        "teacher_model": ema.name,
    }
    return report_job(
        glue_args, args, task, data, collator, compute_metrics, trainer, (averaged, averaged if args.save_ema else raw),
        (ema.model, student), (baseline, baseline_trainer), extra,
        f"GLUE {task.name}, mean teacher (EMA {args.ema_decay:g})",
    )  # fmt: skip


def run_generations(glue_args: GlueArguments, args, task, data, tokenizer, collator, compute_metrics, teacher) -> dict:
    """``--distill_mode born_again`` or ``noisy_student``: ``--generations`` students from the same initial weights,
    each taught by the one before (the first by the teacher; with ``--ensemble_generations`` the last by all of them).
    A noisy student trains with its dropout on, on the labelled examples and the unlabelled ones, the augmentation
    drawn afresh for each generation (seed ``seed + g - 1``).

    Each generation is saved in ``output_dir/generation_<g>`` and scored; the last one is also saved in
    ``output_dir``, and is ``results.json``'s ``student``; ``generations`` lists every generation's scores."""
    if glue_args.student_model_name_or_path:
        initial = own_student(glue_args, args, task)
    else:
        initial = make_student(glue_args, args, teacher, task)
    noisy = args.distill_mode == "noisy_student"
    kd_source, kd_collator = data, collator
    if noisy:  # the teacher reads the clean sentence (its own columns), the student the rewritten one
        kd_source, teacher_columns, kd_collator = clean_teacher_inputs(data, tokenizer, collator)
        args = dataclasses.replace(args, teacher_columns=teacher_columns)
    neighbours = replacement_neighbours(glue_args, teacher, tokenizer)  # one table for every draw
    kd_data = with_unlabelled(glue_args, args, teacher, tokenizer, kd_source, neighbours=neighbours)
    eval_split = task.eval_splits[0]
    generations = []

    def score(generation: int, trainer) -> None:
        scores = evaluate_model(trainer.model, args, task, data, collator, compute_metrics)
        record = {k.removeprefix("eval_"): v for k, v in scores.items()}
        metric = task.metric.removeprefix("eval_")
        print(
            f"[glue] generation {generation} ({', '.join(t.name for t in trainer.teachers)}): {metric} {record[metric]:.4f}"
        )
        generations.append({"generation": generation, "teachers": [t.name for t in trainer.teachers], **record})

    what = "noisy student" if noisy else "born-again"
    print(f"[glue] {what}: {args.generations} generation(s) on {task.name} ({len(kd_data['train'])} examples)")
    kwargs = dict(
        on_generation=score,
        train_dataset=kd_data["train"],
        eval_dataset=kd_source[eval_split],
        data_collator=kd_collator,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
    )
    if noisy:  # generation 1 trains on kd_data (seed args.seed); each later one on its own draw of the augmentation

        def noised(g: int):
            if g == 1:
                return kd_data["train"]
            return with_unlabelled(glue_args, args, teacher, tokenizer, kd_source, args.seed + g - 1, neighbours)[
                "train"
            ]

        trainers = train_noisy_student(lambda: copy.deepcopy(initial), teacher, args, noised, **kwargs)
    else:
        trainers = train_born_again(lambda: copy.deepcopy(initial), teacher, args, **kwargs)
    last = trainers[-1]
    last.save_model(args.output_dir)
    baseline, baseline_trainer = train_baseline(
        glue_args, args, last, lambda: copy.deepcopy(initial), teacher, data, collator, tokenizer, compute_metrics,
        task,
    )  # fmt: skip
    print("[glue] evaluating teacher and student(s), measuring speed")
    scores = [evaluate_model(m, args, task, data, collator, compute_metrics) for m in (teacher, last.model)]
    extra = {
        "ensemble_generations": args.ensemble_generations,
        "generations": generations,
        "teacher_model": args.teacher_model_name_or_path,
    }
    if noisy:
        extra["noise"] = {"augment_prob": glue_args.augment_prob, "dropout": dropout_rate(initial)}
    return report_job(
        glue_args, args, task, data, collator, compute_metrics, last, scores, (teacher, last.model),
        (baseline, baseline_trainer), extra, f"GLUE {task.name}, {what} ({args.generations} generations)",
    )  # fmt: skip


def run_mutual(glue_args: GlueArguments, args, task, data, tokenizer, collator, compute_metrics) -> dict:
    """``--distill_mode mutual``: ``--num_peers`` copies of the student (``--student_model_name_or_path``, cut to
    ``--student_layers``; each with a task head of its own seed) trained together, each on its labels and on the
    others' current predictions (deep mutual learning).

    The student (peer 0) is saved in ``output_dir``, peer ``i`` in ``output_dir/peer_<i>``. ``results.json``'s
    ``student`` is peer 0 and its ``teacher`` peer 1; ``peers`` lists every peer's folder and scores, ``best_peer``
    names the best on the task's metric."""
    print(f"[glue] training {glue_args.num_peers} peers together on {task.name} ({len(data['train'])} examples)")
    student = own_student(glue_args, args, task)
    peers = [
        TrainedTeacher(own_student(glue_args, args, task, seed=args.seed + i), save_dir=f"peer_{i}", name=f"peer {i}")
        for i in range(1, glue_args.num_peers)
    ]
    kd_data = with_unlabelled(glue_args, args, student, tokenizer, data)
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    trainer = distill(student, peers, args, kd_data, collator, tokenizer, compute_metrics, task.eval_splits[0], resume)
    baseline, baseline_trainer = train_baseline(
        glue_args, args, trainer, lambda: own_student(glue_args, args, task), None, data, collator, tokenizer,
        compute_metrics, task,
    )  # fmt: skip
    print("[glue] evaluating every peer and the no-KD student, measuring speed")
    models = [student, *(p.inner for p in peers)]
    scores = [evaluate_model(m, args, task, data, collator, compute_metrics) for m in models]
    metric = task.metric.removeprefix("eval_")
    table = [{k.removeprefix("eval_"): v for k, v in s.items()} for s in scores]
    best = max(range(len(table)), key=lambda i: table[i][metric])
    for i, row in enumerate(table):
        print(f"[glue] peer {i}: {metric} {row[metric]:.4f}{' (best)' if i == best else ''}")
    extra = {
        "peers": [{"peer": i, "folder": "." if i == 0 else f"peer_{i}", **row} for i, row in enumerate(table)],
        "best_peer": best,
        "teacher_model": None,
    }
    return report_job(
        glue_args, args, task, data, collator, compute_metrics, trainer, (scores[1], scores[0]),
        (peers[0].inner, student), (baseline, baseline_trainer), extra,
        f"GLUE {task.name}, {glue_args.num_peers} peers (mutual learning)",
    )  # fmt: skip


@dataclass
class CompareArguments:
    """Two finished models, one GLUE task: scores, size and speed side by side (no training)."""

    teacher_model_name_or_path: str = field(default=None, metadata={"help": "The teacher (a task-tuned model)."})
    student_model_name_or_path: str = field(default=None, metadata={"help": "The student (e.g. a distilled run)."})
    task_name: str = field(default="sst2", metadata={"help": "GLUE task whose dev split is scored."})
    data_dir: Optional[str] = field(default=None, metadata={"help": "Local GLUE task folder; default: the Hub."})
    output_dir: str = field(default="out/compare", metadata={"help": "Where results.json and report.png go."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace the results.json and report.png of an earlier run in output_dir."}
    )
    max_seq_length: int = field(default=128, metadata={"help": "Truncate inputs to this many tokens."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Score at most this many examples."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    speed_batch_size: int = field(default=32, metadata={"help": "Batch size of the latency measurement."})
    speed_seq_len: int = field(default=64, metadata={"help": "Sequence length of the latency measurement."})


def compare(cmp: CompareArguments) -> dict:
    """Score teacher and student on the task's dev split, measure both, write ``results.json`` and ``report.png``."""
    tokenizer = validate_compare_job(cmp)
    glue_args = GlueArguments(
        task_name=cmp.task_name,
        data_dir=cmp.data_dir,
        max_seq_length=cmp.max_seq_length,
        max_train_samples=1,
        max_eval_samples=cmp.max_eval_samples,
    )
    task, data = prepare_data(glue_args, tokenizer, seed=0)
    collator = DataCollatorWithPadding(tokenizer)
    eval_args = TrainingArguments(
        output_dir=cmp.output_dir, per_device_eval_batch_size=cmp.per_device_eval_batch_size, disable_tqdm=True
    )
    models = {
        role: AutoModelForSequenceClassification.from_pretrained(resolve_model_path(path), use_safetensors=True)
        for role, path in (("teacher", cmp.teacher_model_name_or_path), ("student", cmp.student_model_name_or_path))
    }
    scores = {
        r: evaluate_model(m, eval_args, task, data, collator, compute_metrics_for(task)) for r, m in models.items()
    }
    results = build_results(
        task.name,
        task.metric,
        scores["teacher"],
        scores["student"],
        models["teacher"],
        models["student"],
        batch_size=cmp.speed_batch_size,
        seq_len=cmp.speed_seq_len,
        extra={"teacher_model": cmp.teacher_model_name_or_path, "student_model": cmp.student_model_name_or_path},
    )
    write_report(results, cmp.output_dir, title=f"GLUE {task.name}: teacher vs student")
    return results
