"""keep_freed_memory: glibc keeps the blocks a training step frees, so the next step does not page-fault on them."""

import os
import platform
import subprocess
import sys

import pytest
from conftest import tiny_bert

import hf_distill.distillation_trainer as trainer_module
from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.cpu_memory import keep_freed_memory

GLIBC = platform.libc_ver()[0] == "glibc"

# a step's worth of allocations: five 6 MB relation-sized buffers alive at once, then freed (the heap top is trimmed
# and large blocks are unmapped by default, so every step faults on them again)
CHURN = """
import resource, sys, torch
if sys.argv[1] == "tuned":
    from hf_distill.cpu_memory import keep_freed_memory
    assert keep_freed_memory()
def step():
    bufs = [torch.empty(384, 64, 64).fill_(1.0) for _ in range(5)]
    del bufs
for _ in range(3):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_step(mode: str) -> float:
    # glibc's default thresholds adapt to what was freed before, so whether the default faults depends on the heap's
    # history; a fixed 128 kB mmap threshold (glibc's starting value) makes every buffer an mmap that faults again
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", CHURN, mode], capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_applies_on_glibc():
    assert keep_freed_memory() is GLIBC
    assert keep_freed_memory() is GLIBC  # once per process, same answer


@pytest.mark.skipif(not GLIBC, reason="glibc's mallopt thresholds only")
def test_kept_memory_is_reused_without_page_faults():
    default, tuned = _faults_per_step("default"), _faults_per_step("tuned")
    # 5 x 6 MB is 7,680 pages a step: mapped anew they all fault again; kept, none do
    assert default > 5000, default
    assert tuned < 50, tuned


def test_a_cpu_trainer_keeps_freed_memory(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1))
    args = DistillationConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    DistillationTrainer(model=tiny_bert(num_layers=2), teacher_model=tiny_bert(num_layers=4, seed=1), args=args)
    assert calls == [1]
