"""Where a benchmark run came from, and its own results file: every run writes one JSON file, never appends.

A file holds ``benchmark``, ``created`` (UTC), ``command`` (the argv), ``commit`` (``sha`` and whether the tracked
tree was ``dirty``), ``versions`` (torch, transformers, datasets, accelerate, peft, python), ``machine`` (CPU model,
cores, torch threads, GPU), ``config`` (every argument, resolved) and ``results`` (the measured numbers).
``benchmarks/summarize.py`` reads these files and prints the tables; nothing else reads them back.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LIBRARIES = ("torch", "transformers", "datasets", "accelerate", "peft")


def commit_info() -> dict:
    """``{"sha": HEAD's hash, "dirty": whether tracked files differ from it}``; ``None`` values outside a git tree."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    sha = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": sha, "dirty": None if status is None else bool(status)}


def library_versions() -> dict:
    """Installed versions of ``LIBRARIES`` (``None`` for one that is missing) and of Python."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {**versions, "python": platform.python_version()}


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU model, logical cores, torch's intra-op threads now, OMP_NUM_THREADS, GPU name (``None`` without one)."""
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": gpu,
        "gpu_count": torch.cuda.device_count() if gpu else 0,
        "platform": platform.platform(),
    }


def run_record(benchmark: str, config: dict, results: dict, command: list[str] | None = None) -> dict:
    """One run's file contents: provenance, ``config`` (every argument, resolved) and ``results``."""
    return {
        "benchmark": benchmark,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": list(sys.argv if command is None else command),
        "commit": commit_info(),
        "versions": library_versions(),
        "machine": machine_info(),
        "config": config,
        "results": results,
    }


def new_path(results_dir: str | Path, name: str) -> Path:
    """A file of this run's own in ``results_dir``: ``<UTC time>-<name>.json``, never one that exists already."""
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{name}"
    path, n = folder / f"{stem}.json", 1
    while path.exists():
        n += 1
        path = folder / f"{stem}-{n}.json"
    path.touch()  # claimed: a run started in the same second picks another name
    return path


def write_record(path: Path, record: dict) -> None:
    """Write ``record`` to ``path`` whole (through a temporary file, so a reader never sees half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def resolved(obj) -> dict:
    """Every field of a dataclass of arguments (a ``TrainingArguments`` through its ``to_dict``, tokens hidden)."""
    return obj.to_dict() if hasattr(obj, "to_dict") else dataclasses.asdict(obj)


def default_dir(benchmark: str) -> str:
    """``benchmarks/results/<benchmark>``, where a run writes unless told otherwise."""
    return str(RESULTS / benchmark)
