"""Two processes on CPU (gloo): the projection adapters and the student stay identical on every rank, and the first
optimizer step's gradients equal those of one process on the same global batch, a trained teacher's (a mutual peer,
a co-trained teacher) as well as the student's."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_worker import build, first_step_grads
from numerics import assert_fp32_close, forward_chain, grad_scales

from hf_distill.mapping import ADAPTERS_ATTR

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

HERE = Path(__file__).parent


def torchrun_worker(*args) -> None:
    """``ddp_worker.py args`` on two CPU processes."""
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{HERE.parent}", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # torchrun picks a free port itself
        "--nproc_per_node",
        "2",
        str(HERE / "ddp_worker.py"),
        *map(str, args),
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    if result.returncode != 0:
        pytest.fail(result.stdout[-3000:] + result.stderr[-3000:])


@pytest.mark.parametrize("kind", ["encoder", "lm"])
def test_ddp_keeps_adapters_synchronised(tmp_path, kind):
    torchrun_worker(tmp_path, kind)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    adapter_keys = [k for k in rank0 if ADAPTERS_ATTR in k]
    assert adapter_keys
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "distillation_config.json").exists()


@pytest.mark.parametrize("kind", ["ema", "mutual"])
def test_ddp_keeps_a_teacher_that_changes_identical_on_every_rank(tmp_path, kind):
    """Teachers that change during training, under DDP: each rank averages its own copy of the student (``ema``), or
    trains a peer with averaged gradients (``mutual``); the copies stay the same on every rank, as the students do."""
    torchrun_worker(tmp_path, kind)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    teacher = [k for k in rank0 if k.startswith("teacher.")]
    assert teacher and rank0.keys() == rank1.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    if kind == "ema":  # 3 steps at decay 0.5 moved the average away from the start and from the student
        assert any(
            not torch.equal(rank0[k], rank0[k.removeprefix("teacher.")]) for k in teacher if "embeddings" not in k
        )
    else:
        assert (tmp_path / "peer_1" / "model.safetensors").exists()


@pytest.mark.parametrize(
    "kind, batch, accum",
    [("encoder", 4, 1), ("lm", 4, 1), ("encoder", 2, 2)],
    ids=["encoder-hidden-attention-adapters", "causal-lm-chunked", "encoder-accumulation"],
)
def test_ddp_first_step_gradients_match_one_process(tmp_path, kind, batch, accum):
    """Global batch 8 both ways: 2 ranks x ``batch`` x ``accum`` under DDP, 8 rows on one process. The rows have
    ragged lengths, so each rank counts other numbers of tokens: the loss must be normalised by the global count."""
    torchrun_worker(tmp_path, kind, "grads", batch, accum)
    ddp = [torch.load(tmp_path / f"grads_rank{rank}.pt") for rank in (0, 1)]
    single = first_step_grads(str(tmp_path / "single"), kind, batch=8)
    assert ddp[0].keys() == ddp[1].keys() == single.keys()
    assert any(ADAPTERS_ATTR in name for name in single)  # the students are narrower: projections get gradients
    # other micro-batches: the teacher's forward, the student's forward and backward, the sums over tokens and the
    # average over 2 ranks all run in other orders (tests/numerics.py)
    teacher, student, *_ = build(kind, dropout=False)
    n = forward_chain(teacher.config, 12) + 2 * forward_chain(student.config, 12) + 8 * 12 + 2
    scales = grad_scales(single)
    for name in single:
        assert torch.equal(ddp[0][name], ddp[1][name]), name  # DDP averaged them
        assert_fp32_close(ddp[0][name], single[name], scale=scales[name], n=n, msg=name)


@pytest.mark.parametrize(
    "kind, batch, accum",
    [("mutual", 4, 1), ("cotrain", 4, 1), ("cotrain", 2, 2)],
    ids=["mutual-peer", "cotrain-teacher-adapters", "cotrain-accumulation"],
)
def test_ddp_first_step_gradients_of_a_trained_teacher_match_one_process(tmp_path, kind, batch, accum):
    """Global batch 8 both ways, as above, for the models the optimizer trains beside the student: a mutual-learning
    peer (task loss + KD to the student) and a co-trained teacher (task loss; the student distils from its hidden
    states and attention through projection adapters). Each is DDP-wrapped like the student: its gradients, as the
    student's, must be those of one process on the whole batch."""
    torchrun_worker(tmp_path, kind, "grads", batch, accum)
    ddp = [torch.load(tmp_path / f"grads_rank{rank}.pt") for rank in (0, 1)]
    single = first_step_grads(str(tmp_path / "single"), kind, batch=8)
    assert ddp[0].keys() == ddp[1].keys() == single.keys()
    teacher_grads = [name for name in single if name.startswith("teacher.")]
    assert teacher_grads and len(teacher_grads) < len(single)  # the trained teacher's and the student's
    assert all(single[name].abs().sum() > 0 for name in teacher_grads if "classifier" in name)  # it does learn
    assert any(ADAPTERS_ATTR in name for name in single) == (kind == "cotrain")
    peer, student, *_ = build(kind, dropout=False)
    # forward and backward of both models in other orders, the sums over tokens, the average over 2 ranks
    n = 2 * forward_chain(peer.inner.config, 12) + 2 * forward_chain(student.config, 12) + 8 * 12 + 2
    scales = grad_scales(single)
    for name in single:
        assert torch.equal(ddp[0][name], ddp[1][name]), name  # DDP averaged them
        assert_fp32_close(ddp[0][name], single[name], scale=scales[name], n=n, msg=name)


def test_ddp_cross_tokenizer_first_step_gradients_match_one_process(tmp_path):
    """A teacher with another tokenizer (every part of the cross-tokenizer term): 2 ranks x 4 rows against 8 rows on
    one process. The ranks align other numbers of groups; the term is normalised by the global token count."""
    torchrun_worker(tmp_path, "xtok", "grads", 4, 1)
    ddp = [torch.load(tmp_path / f"grads_rank{rank}.pt") for rank in (0, 1)]
    single = first_step_grads(str(tmp_path / "single"), "xtok", batch=8)
    assert ddp[0].keys() == ddp[1].keys() == single.keys() and single
    for name in single:
        assert torch.equal(ddp[0][name], ddp[1][name]), name  # DDP averaged them
        torch.testing.assert_close(ddp[0][name], single[name], rtol=1e-4, atol=1e-6, msg=name)
