"""Run `make demo`'s GLUE job on several seeds and print its table: teacher, KD student, no-KD student, gain, time.

    python benchmarks/demo_seeds.py                       # seeds 42 43 44, the demo's config
    python benchmarks/demo_seeds.py --seeds 42 --config my.yaml -- --unlabelled_train_samples 8000

Each seed is a full run of `hf-distill glue --config CONFIG --seed S --output_dir OUT/seed-S` (flags after `--` are
passed on), timed end to end; the table is printed from the runs' results.json files, and also written to
OUT/demo_seeds.json with the commit, versions, machine and command line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO_CONFIG = ROOT / "examples" / "glue" / "configs" / "kd-minilm_l3_from_minilm_l6-sst2.yaml"


def run_seed(config: str, seed: int, out: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "hf_distill.cli", "glue", "--config", config, "--seed", str(seed)]
    cmd += ["--output_dir", str(out), "--overwrite_output_dir", "true", "--disable_tqdm", "true", *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    minutes = (time.perf_counter() - start) / 60
    (out / "demo_minutes.json").write_text(json.dumps({"minutes": minutes, "command": cmd}))
    return read_seed(seed, out)


def read_seed(seed: int, out: Path) -> dict:
    minutes = json.loads((out / "demo_minutes.json").read_text())["minutes"]
    return {"seed": seed, "minutes": minutes, "results": json.loads((out / "results.json").read_text())}


def table(runs: list[dict]) -> str:
    metric = runs[0]["results"]["metric"]
    lines = [
        "| seed | teacher | no KD | KD | KD - no KD | retention | minutes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = []
    for run in runs:
        r = run["results"]
        t, s, b = (100 * r[k][metric] for k in ("teacher", "student", "student_no_kd"))
        rows.append((t, b, s, s - b, 100 * s / t, run["minutes"]))
        lines.append(
            f"| {run['seed']} | {t:.2f} | {b:.2f} | {s:.2f} | {s - b:+.2f} | {100 * s / t:.1f}% | "
            f"{run['minutes']:.1f} |"
        )
    mean = [statistics.mean(col) for col in zip(*rows)]
    lines.append(
        f"| mean | {mean[0]:.2f} | {mean[1]:.2f} | {mean[2]:.2f} | **{mean[3]:+.2f}** | {mean[4]:.1f}% | "
        f"{mean[5]:.1f} |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEMO_CONFIG))
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--out", default="out/demo-seeds")
    parser.add_argument("--table_only", action="store_true", help="print the table of runs already in --out")
    parser.add_argument("extra", nargs="*", help="flags passed on to hf-distill glue (after --)")
    opts = parser.parse_args()
    out = Path(opts.out)
    if opts.table_only:  # e.g. after seeds run side by side: `--seeds 43 &`, `--seeds 44 &`
        runs = [read_seed(seed, out / f"seed-{seed}") for seed in opts.seeds]
    else:
        runs = [run_seed(opts.config, seed, out / f"seed-{seed}", opts.extra) for seed in opts.seeds]
    print(table(runs))
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    import torch
    import transformers

    record = {
        "command": sys.argv,
        "commit": commit,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": torch.get_num_threads(),
        },
        "runs": runs,
    }
    (out / "demo_seeds.json").write_text(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
