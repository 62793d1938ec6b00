"""Two processes on CPU (gloo): the projection adapters and the student stay identical on every rank."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_distill.mapping import ADAPTERS_ATTR

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("kind", ["encoder", "lm"])
def test_ddp_keeps_adapters_synchronised(tmp_path, kind):
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{HERE.parent}", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(HERE / "ddp_worker.py"),
        str(tmp_path),
        kind,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:
        pytest.fail(result.stdout[-3000:] + result.stderr[-3000:])
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    adapter_keys = [k for k in rank0 if ADAPTERS_ATTR in k]
    assert adapter_keys
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "distillation_config.json").exists()
