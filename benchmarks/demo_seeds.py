"""Run `make demo`'s GLUE job on several seeds and print its table: teacher, KD student, no-KD student, gain, time.

    python benchmarks/demo_seeds.py                       # seeds 42 43 44, the demo's config
    python benchmarks/demo_seeds.py --seeds 42 --config my.yaml -- --unlabelled_train_samples 8000

Each seed is a full run of `hf-distill glue --config CONFIG --seed S --output_dir WORK_DIR/seed-S` (flags after `--`
are passed on), timed end to end. Each seed writes its own run file in --results_dir: the job's results.json, the
minutes, the job's command and its resolved GlueArguments and DistillationConfig, with the commit, library versions
and machine. The table of this invocation's seeds is printed at the end; `python benchmarks/summarize.py demo_seeds`
prints it from every run file (e.g. after seeds run side by side: `--seeds 43 &`, `--seeds 44 &`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, default_dir, new_path, resolved, run_record, write_record
from summarize import demo_seeds, load

DEMO_CONFIG = ROOT / "examples" / "glue" / "configs" / "kd-minilm_l3_from_minilm_l6-sst2.yaml"


def job_argv(config: str, seed: int, out: Path, extra: list[str]) -> list[str]:
    """The `hf-distill glue` flags of one seed's run."""
    flags = ["--config", config, "--seed", str(seed), "--output_dir", str(out), "--overwrite_output_dir", "true"]
    return [*flags, "--disable_tqdm", "true", *extra]


def job_config(argv: list[str]) -> dict:
    """The job's arguments as `hf-distill glue` resolves ``argv`` (YAML file, then flags): every field."""
    sys.path.insert(0, str(ROOT))
    from hf_distill.cli import parse_with_config
    from hf_distill.distillation_config import DistillationConfig
    from hf_distill.recipes.glue import GlueArguments

    glue_args, args = parse_with_config([GlueArguments, DistillationConfig], argv, "hf-distill glue")
    return {"glue_arguments": resolved(glue_args), "distillation_config": resolved(args)}


def run_seed(opts, seed: int) -> Path:
    """Run the job for ``seed`` and write its run file (returned)."""
    argv = job_argv(opts.config, seed, Path(opts.work_dir) / f"seed-{seed}", opts.extra)
    config = {
        "seed": seed,
        "config": opts.config,
        "extra": opts.extra,
        "work_dir": opts.work_dir,
        "job_command": [sys.executable, "-m", "hf_distill.cli", "glue", *argv],
        **job_config(argv),
    }
    path = new_path(opts.results_dir, f"seed{seed}")
    start = time.perf_counter()
    subprocess.run(config["job_command"], check=True)
    minutes = (time.perf_counter() - start) / 60
    job = json.loads((Path(opts.work_dir) / f"seed-{seed}" / "results.json").read_text())
    record = run_record("demo_seeds", config, {"minutes": minutes, "job": job})
    write_record(path, record)
    print(f"[demo_seeds] seed {seed}: {path}", flush=True)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--work_dir", default="out/demo-seeds", help="The jobs' output folders.")
    parser.add_argument("--results_dir", default=default_dir("demo_seeds"), help="Where each seed's run file goes.")
    parser.add_argument("extra", nargs="*", help="flags passed on to hf-distill glue (after --)")
    return parser


def no_baseline(opts) -> str | None:
    """The one-line refusal when the job would train no no-KD student (the table's "no KD" column), else ``None``."""
    argv = job_argv(opts.config, opts.seeds[0], Path(opts.work_dir) / f"seed-{opts.seeds[0]}", opts.extra)
    if job_config(argv)["glue_arguments"]["baseline_no_kd"]:
        return None
    return (
        "demo_seeds: error: the job has --baseline_no_kd false (from --config or the flags after --), so no no-KD "
        "student for the table: drop it, or pass -- --baseline_no_kd true."
    )


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    refusal = no_baseline(opts)  # before any seed runs, not after the last one
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    print(demo_seeds(load([run_seed(opts, seed) for seed in opts.seeds])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
