"""Distillation modes on GLUE (issue 18): teachers that learn, against no KD and frozen KD, at the quality benchmark's
budget (benchmarks/glue_quality.py: MiniLM-L6 fine-tuned 1 epoch on up to 16k labelled examples, 3-layer students
from its layers 1, 3, 5 for as many steps, batch 32, max length 64), with the wall time of each.

Per (task, seed), in one run:
- ``teacher``: MiniLM-L6 fine-tuned (the two-stage pipeline's first stage); ``no_kd``: the 3-layer student alone;
  ``kd``: the recipe's frozen KD from the fine-tuned teacher (the two-stage pipeline's second stage);
- ``born_again``: a 3-layer student from the same initial weights, taught by ``no_kd`` (its own 3-layer teacher;
  generation 1), with the recipe's KD terms;
- ``ema``: the 3-layer student with its own moving average as the teacher (logits, ``EMA``), scored raw and averaged;
- ``mutual``: two 3-layer peers (heads of seeds ``seed`` and ``seed + 1``) trained together (logits KD both ways);
- ``cotrain``: the base MiniLM-L6 fine-tuned in the same loop as the 3-layer student, which distils from it with the
  recipe's KD terms; its wall time is the whole pipeline's, to compare with ``teacher`` + ``kd``; ``cotrain_delayed``
  the same with a KD warm-up delay (``kd_delay_steps`` 100: the student on its labels alone while the teacher starts);
- ``noisy_student``: 2 generations of the 3-layer student (dropout 0.1), the first taught by the fine-tuned teacher,
  the second by the first, each on its own draw of the word-replacement augmentation (half the examples rewritten
  and labelled by the teacher alone: the same number of examples and steps as ``kd``) with the recipe's KD terms;
  the teacher reads the clean sentence, the student its rewrite; both generations are scored, its time is both
  generations'.

``--reuse_teacher`` loads the teacher a run before fine-tuned in the same ``--work_dir`` (its folder
``<task>-<seed>/teacher``) instead of fine-tuning it again: for adding modes to a (task, seed) measured before (the
summary merges the runs of one task and seed; the teacher's minutes come from the run that trained it).

Each run writes its own file in --results_dir after every mode (an interrupted run keeps what it finished);
`python benchmarks/summarize.py glue_modes` prints the tables.

    python benchmarks/glue_modes.py --tasks sst2 --seeds 42 43 44
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_dir, new_path, resolved, run_record, write_record  # noqa: E402
from glue_quality import DIRS, NO_KD, bench_arguments  # noqa: E402
from summarize import glue_modes, load  # noqa: E402

from hf_distill.generations import train_noisy_student  # noqa: E402
from hf_distill.models import resolve_model_path  # noqa: E402
from hf_distill.recipes.glue import (  # noqa: E402
    clean_teacher_inputs,
    distill,
    evaluate_model,
    load_teacher,
    make_student,
    prepare_data,
    replacement_neighbours,
    with_unlabelled,
)
from hf_distill.tasks import compute_metrics_for  # noqa: E402
from hf_distill.teachers import TrainedTeacher  # noqa: E402

LOGITS_ONLY = {"alpha_hidden": 0.0, "alpha_attention": 0.0}
# each mode's overrides of the recipe's DistillationConfig (the recipe: T=4, alpha_task=alpha_logits=0.5, hidden
# MSE weight 1, self-relations weight 5); the EMA's horizon (1 / (1 - decay) = 100 steps) fits a 500-step run
MODES = {
    "no_kd": NO_KD,
    "kd": {},
    "born_again": {},
    "ema": {
        "distill_mode": "ema",
        "ema_decay": 0.99,
        "ema_warmup_steps": 50,
        "teacher_model_name_or_path": None,
        **LOGITS_ONLY,
    },
    "mutual": {"distill_mode": "mutual", **LOGITS_ONLY},
    "cotrain": {"distill_mode": "cotrain"},
    "noisy_student": {"distill_mode": "noisy_student", "generations": 2},
    # cotrain with a KD warm-up delay: the student on its labels alone for the first 100 of ~500 steps
    "cotrain_delayed": {"distill_mode": "cotrain", "kd_delay_steps": 100},
    # deep mutual learning as Zhang et al. (2018) ran it: soft targets at T=1, the task and KD terms at weight 1 each
    "mutual_dml": {
        "distill_mode": "mutual",
        "temperature": 1.0,
        "alpha_task": 1.0,
        "alpha_logits": 1.0,
        **LOGITS_ONLY,
    },
    # cotrain with the teacher at twice the student's learning rate: good soft targets sooner
    "cotrain_fast": {"distill_mode": "cotrain", "teacher_learning_rate": 2e-4},
}
# the mode overrides that are GlueArguments, not DistillationConfig fields
GLUE_OVERRIDES = ("teacher_learning_rate",)
# the noisy student's noise (GlueArguments): word replacement on half the examples, dropout on the student
NOISE = {"augment_prob": 0.5, "student_dropout": 0.1}
ORDER = list(MODES)  # born_again reads no_kd's student: no_kd runs first


def run_one(task_name: str, seed: int, opts, save) -> dict:
    glue_args, args = bench_arguments(task_name, seed, opts.train_samples, opts.epochs, opts.work_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.teacher_model_name_or_path))
    task, data = prepare_data(glue_args, tokenizer, seed)
    collator = DataCollatorWithPadding(tokenizer)
    metrics = compute_metrics_for(task)

    def score(model) -> float:
        return evaluate_model(model, args, task, data, collator, metrics)[f"eval_{task.metric}"]

    results = {"task": task.name, "metric": task.metric, "seed": seed, "train_examples": len(data["train"])}
    results.update(scores={}, minutes={}, steps={})
    base = dataclasses.replace(glue_args, finetune_teacher=False)
    base_teacher = load_teacher(base, args, task, data, tokenizer, collator)  # the base model, a fresh head
    start = time.perf_counter()
    teacher_dir = os.path.join(args.output_dir, "teacher")
    if opts.reuse_teacher and os.path.exists(os.path.join(teacher_dir, "model.safetensors")):
        teacher = AutoModelForSequenceClassification.from_pretrained(teacher_dir)  # fine-tuned by an earlier run
        results["reused_teacher"] = teacher_dir
    else:
        teacher = load_teacher(glue_args, args, task, data, tokenizer, collator)  # fine-tuned: the first stage
        results["minutes"]["teacher"] = (time.perf_counter() - start) / 60
    results["scores"]["teacher"] = score(teacher)
    save(results)
    initial = make_student(glue_args, args, teacher, task)  # teacher layers 1, 3, 5 (the same in every mode)
    initial_base = make_student(glue_args, args, base_teacher, task)
    no_kd = None
    for name in [n for n in ORDER if n in opts.modes]:
        print(f"[bench] {task_name} seed {seed}: {name}", flush=True)
        config = {k: v for k, v in MODES[name].items() if k not in GLUE_OVERRIDES}
        run_args = dataclasses.replace(args, output_dir=f"{args.output_dir}-{name}", **config)
        run_glue = dataclasses.replace(glue_args, **{k: v for k, v in MODES[name].items() if k in GLUE_OVERRIDES})
        cotrain = MODES[name].get("distill_mode") == "cotrain"
        student = copy.deepcopy(initial_base if cotrain else initial)
        source = {"no_kd": teacher, "kd": teacher, "born_again": no_kd}.get(name)
        if name == "born_again" and no_kd is None:
            raise ValueError("born_again is taught by no_kd's student: run --modes no_kd born_again together.")
        if name.startswith("mutual"):
            torch.manual_seed(seed + 1)
            peer = copy.deepcopy(initial)
            peer.classifier.reset_parameters()  # the peers start apart: another head
            source = [TrainedTeacher(peer, save_dir="peer_1", name="peer 1")]
        if cotrain:  # a fresh copy of the base model: each cotrain mode fine-tunes its own
            lr, model = run_glue.teacher_learning_rate, copy.deepcopy(base_teacher)
            source = TrainedTeacher(model, learns_from_peers=False, learning_rate=lr, save_dir="teacher")
        start = time.perf_counter()
        if name == "noisy_student":
            trainers = noisy_student(glue_args, run_args, task, teacher, data, tokenizer, collator, metrics)
            trainer = trainers[-1]
            results["scores"]["noisy_student_gen1"] = score(trainers[0].model)
        else:
            trainer = distill(student, source, run_args, data, collator, tokenizer, metrics, task.eval_splits[0])
        results["minutes"][name] = (time.perf_counter() - start) / 60
        results["steps"][name] = trainer.state.global_step
        results["scores"][name] = score(trainer.model)
        if name == "no_kd":
            no_kd = trainer.model
        elif name == "ema":
            results["scores"]["ema_average"] = score(trainer.teachers[0].model)
        elif name.startswith("mutual"):
            results["scores"][f"{name}_peer_1"] = score(trainer.teachers[0].inner)
        elif cotrain:
            results["scores"][f"{name}_teacher"] = score(source.inner)
        save(results)
    return results


def noisy_student(glue_args, args, task, teacher, data, tokenizer, collator, metrics) -> list:
    """The trainers of ``args.generations`` noisy-student generations (``NOISE``) of the 3-layer student, the
    teacher reading the clean sentences (``clean_teacher_inputs``, as the GLUE job)."""
    noisy = dataclasses.replace(glue_args, **NOISE)
    initial = make_student(noisy, args, teacher, task)  # teacher layers 1, 3, 5, with dropout
    clean, columns, kd_collator = clean_teacher_inputs(data, tokenizer, collator)
    args = dataclasses.replace(args, teacher_columns=columns)
    neighbours = replacement_neighbours(noisy, teacher, tokenizer)  # one word-replacement table for every draw

    def noised(generation: int):
        return with_unlabelled(noisy, args, teacher, tokenizer, clean, args.seed + generation - 1, neighbours)["train"]

    return train_noisy_student(
        lambda: copy.deepcopy(initial), teacher, args, noised, train_dataset=None,
        eval_dataset=clean[task.eval_splits[0]], data_collator=kd_collator, processing_class=tokenizer,
        compute_metrics=metrics,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2"], choices=sorted(DIRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--modes", nargs="+", default=ORDER, choices=ORDER)
    parser.add_argument("--train_samples", type=int, default=16000, help="Labelled training examples at most.")
    parser.add_argument("--epochs", type=float, default=1.0, help="Epochs of the teacher and of every student.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument(
        "--reuse_teacher", action="store_true", help="Load the teacher an earlier run fine-tuned in --work_dir."
    )
    parser.add_argument("--work_dir", default="out/bench-modes", help="The models' output folders.")
    parser.add_argument("--results_dir", default=default_dir("glue_modes"), help="Where each run's file goes.")
    return parser


def main() -> None:
    opts = build_parser().parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    paths = []
    for seed in opts.seeds:
        for task in opts.tasks:
            glue_args, args = bench_arguments(task, seed, opts.train_samples, opts.epochs, opts.work_dir)
            config = {
                "task": task,
                "seed": seed,
                "epochs": opts.epochs,
                "train_samples": opts.train_samples,
                "modes": opts.modes,
                "mode_overrides": {name: MODES[name] for name in opts.modes},
                "threads": opts.threads,
                "reuse_teacher": opts.reuse_teacher,
                "noise": NOISE if "noisy_student" in opts.modes else None,
                "glue_arguments": resolved(glue_args),
                "distillation_config": resolved(args),
            }
            path = new_path(opts.results_dir, f"{task}-seed{seed}")
            record = run_record("glue_modes", config, {})

            def save(results, record=record, path=path):
                write_record(path, {**record, "results": results})

            run_one(task, seed, opts, save)
            paths.append(path)
    print(glue_modes(load(paths)))


if __name__ == "__main__":
    main()
