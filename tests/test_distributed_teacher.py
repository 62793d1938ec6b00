"""Where the teacher lives under DDP, FSDP2 and DeepSpeed (hf_distill.distributed).

The FSDP2 sharding runs for real on 2 CPU processes (gloo), also through ``place_teacher`` with accelerate's own FSDP2
plugin (bf16) and mesh; DeepSpeed is not installed here, so its paths are tested with a fake accelerator state and a
fake ``deepspeed`` module that records what it was given.
"""

import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import classification_dataset, tiny_bert, tiny_llama
from numerics import assert_fp32_close
from torch.nn.parallel import DistributedDataParallel

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill import distributed as hd

HERE = Path(__file__).parent

DS_CONFIG = {
    "train_micro_batch_size_per_gpu": 4,
    "gradient_accumulation_steps": 1,
    "bf16": {"enabled": True},
    "optimizer": {"type": "AdamW", "params": {"lr": 1e-4}},
    "scheduler": {"type": "WarmupLR", "params": {"warmup_num_steps": 10}},
    "zero_optimization": {
        "stage": 3,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": 1000,
    },
}


def fake_accelerator(distributed_type, zero=None, mixed_precision="no", is_fsdp2=False):
    """The attributes of ``accelerate.Accelerator`` that hf_distill.distributed reads."""
    plugin = None
    if zero is not None:
        config = json.loads(json.dumps(DS_CONFIG))
        config["zero_optimization"]["stage"] = zero
        plugin = types.SimpleNamespace(deepspeed_config=config, zero_stage=zero)
    state = types.SimpleNamespace(deepspeed_plugin=plugin, fsdp_plugin=None)
    return types.SimpleNamespace(
        distributed_type=distributed_type,
        state=state,
        mixed_precision=mixed_precision,
        is_fsdp2=is_fsdp2,
        device=torch.device("cpu"),
        torch_device_mesh=None,
        parallelism_config=None,
    )


@pytest.fixture
def fake_deepspeed(monkeypatch):
    """A ``deepspeed`` module whose ``initialize`` records its arguments and returns a stand-in engine."""
    calls = []

    class DeepSpeedEngine(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    def initialize(model=None, config=None, **kwargs):
        calls.append({"model": model, "config": config, **kwargs})
        return DeepSpeedEngine(model), None, None, None

    monkeypatch.setitem(sys.modules, "deepspeed", types.SimpleNamespace(initialize=initialize))
    return calls


@pytest.mark.parametrize(
    "distributed_type,zero,expected",
    [
        (DistributedType.NO, None, "replicate"),
        (DistributedType.MULTI_CPU, None, "replicate"),
        (DistributedType.MULTI_GPU, None, "replicate"),
        (DistributedType.DEEPSPEED, 1, "zero12"),
        (DistributedType.DEEPSPEED, 2, "zero12"),
        (DistributedType.DEEPSPEED, 3, "zero3"),
    ],
)
def test_placement_follows_the_strategy(distributed_type, zero, expected):
    assert hd.teacher_placement(fake_accelerator(distributed_type, zero)) == expected


def test_fsdp2_shards_and_fsdp1_replicates_with_a_warning(caplog):
    caplog.set_level(logging.WARNING, logger="hf_distill")
    assert hd.teacher_placement(fake_accelerator(DistributedType.FSDP, is_fsdp2=True)) == "fsdp"
    fsdp1 = fake_accelerator(DistributedType.FSDP, is_fsdp2=False)
    assert hd.teacher_placement(fsdp1) == "replicate"
    teacher = tiny_llama(seed=1)
    assert hd.place_teacher(teacher, fsdp1, torch.bfloat16) is teacher  # shard_teacher would fail: no process group
    assert next(teacher.parameters()).dtype == torch.bfloat16 and not teacher.training
    assert "FSDP1" in caplog.text and "replicated" in caplog.text


@pytest.mark.parametrize("distributed_type", [DistributedType.FSDP, DistributedType.DEEPSPEED])
def test_sharded_strategies_default_the_teacher_to_their_half_precision(distributed_type):
    for mixed_precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("no", torch.float32)):
        accelerator = fake_accelerator(distributed_type, zero=2, mixed_precision=mixed_precision, is_fsdp2=True)
        assert hd.default_teacher_dtype(accelerator, torch.float32) == dtype
    # DDP: the student stays fp32 under autocast, and so does the teacher unless teacher_dtype says otherwise
    ddp = fake_accelerator(DistributedType.MULTI_GPU, mixed_precision="bf16")
    assert hd.default_teacher_dtype(ddp, torch.float32) == torch.float32


def test_zero3_teacher_is_an_inference_engine(fake_deepspeed):
    teacher = tiny_llama(seed=1).train()
    accelerator = fake_accelerator(DistributedType.DEEPSPEED, zero=3, mixed_precision="bf16")
    engine = hd.place_teacher(teacher, accelerator, torch.float32)
    (call,) = fake_deepspeed
    assert call["model"] is teacher and engine.module is teacher and not engine.training
    config = call["config"]
    assert config["zero_optimization"]["stage"] == 3
    assert "optimizer" not in config and "scheduler" not in config
    hidden = teacher.config.hidden_size
    assert config["zero_optimization"]["reduce_bucket_size"] == hidden * hidden  # "auto" filled from the teacher
    assert config["zero_optimization"]["stage3_param_persistence_threshold"] == 1000  # a number is kept
    # the accelerator's own config is untouched (the student's engine is built from it later)
    assert "optimizer" in accelerator.state.deepspeed_plugin.deepspeed_config
    assert not any(p.requires_grad for p in teacher.parameters())
    assert hd.place_teacher(engine, accelerator) is engine  # an engine is left as it is
    assert len(fake_deepspeed) == 1


def test_a_zero3_model_teacher_still_gives_its_internals(fake_deepspeed):
    """The engine wraps the model; config, q/k/v hooks and hidden states are read from the model inside it."""
    from hf_distill.teachers import ModelTeacher, TeacherRequest

    model = tiny_llama(seed=1)
    teacher = ModelTeacher(model)
    teacher.prepare(fake_accelerator(DistributedType.DEEPSPEED, zero=3), torch.float32)
    assert teacher.model is not model and teacher.model.module is model and teacher.placement == "zero3"
    ids = torch.randint(1, 99, (2, 6))
    request = TeacherRequest(logits=True, hidden_layers=(2,), qkv_layers=(3,))
    out = teacher.outputs({"input_ids": ids, "attention_mask": torch.ones_like(ids)}, request)
    with torch.no_grad():
        want = model(input_ids=ids, output_hidden_states=True)
    assert torch.equal(out.logits, want.logits) and torch.equal(out.hidden_states[2], want.hidden_states[2])
    assert list(out.qkv) == [3] and [x.shape[-1] for x in out.qkv[3]] == [32, 16, 16]


@pytest.mark.parametrize("stage", [1, 2])
def test_zero12_teacher_stays_out_of_deepspeed(fake_deepspeed, stage):
    teacher = tiny_llama(seed=1)
    accelerator = fake_accelerator(DistributedType.DEEPSPEED, zero=stage, mixed_precision="bf16")
    dtype = hd.default_teacher_dtype(accelerator, torch.float32)
    assert dtype == torch.bfloat16  # DeepSpeed will run the student in bf16
    placed = hd.place_teacher(teacher, accelerator, dtype)
    assert fake_deepspeed == []
    assert placed is teacher and next(teacher.parameters()).dtype == torch.bfloat16
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_deepspeed_config_auto_without_hidden_size_is_an_error():
    with pytest.raises(ValueError, match="reduce_bucket_size='auto'"):
        hd.deepspeed_inference_config(DS_CONFIG, hidden_size=None)


def test_fsdp2_strategy_shards_the_teacher(monkeypatch):
    calls = []
    monkeypatch.setattr(hd, "shard_teacher", lambda teacher, mesh, **kw: calls.append((teacher, mesh, kw)) or teacher)
    teacher = tiny_llama(seed=1)
    accelerator = fake_accelerator(DistributedType.FSDP, is_fsdp2=True)
    assert hd.place_teacher(teacher, accelerator, torch.bfloat16) is teacher
    (call,) = calls
    assert call[0] is teacher and call[1] is None and call[2]["device"] == torch.device("cpu")
    assert next(teacher.parameters()).dtype == torch.bfloat16 and not teacher.training


def test_shard_teacher_needs_a_process_group():
    with pytest.raises(ValueError, match="torch.distributed"):
        hd.shard_teacher(tiny_llama(seed=1))


def test_replicated_teacher_is_frozen_and_unchanged_by_training(tmp_out):
    teacher = tiny_bert(seed=1).train()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    args = DistillationConfig(
        output_dir=tmp_out,
        report_to="none",
        per_device_train_batch_size=8,
        max_steps=2,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset()
    )
    assert trainer.teachers[0].model is teacher and not teacher.training
    trainer.train()
    placed = trainer.teachers[0].model
    assert placed is teacher and not isinstance(placed, DistributedDataParallel) and not placed.training
    student_modules = {id(m) for m in trainer.model_wrapped.modules()}
    assert not any(id(m) in student_modules for m in placed.modules())  # nothing of it inside the trained model
    assert all(p.grad is None and not p.requires_grad for p in placed.parameters())
    assert all(torch.equal(v, before[k]) for k, v in placed.state_dict().items())


def test_zero3_computes_full_logits_with_a_clear_reason(tmp_out, monkeypatch, caplog):
    """Under ZeRO-3 the chunked loss would read partitioned output heads: the trainer says so and falls back."""
    caplog.set_level(logging.WARNING, logger="hf_distill")
    from hf_distill import distillation_trainer

    deepspeed3 = fake_accelerator(DistributedType.DEEPSPEED, zero=3)
    # the trainer's own accelerator is a real one-process one: its fused-loss decision sees ZeRO-3 (the teacher itself
    # is placed as on one process, a plain module, so no other blocker applies)
    monkeypatch.setattr(
        distillation_trainer, "teacher_placement", lambda accelerator: hd.teacher_placement(deepspeed3)
    )
    args = DistillationConfig(output_dir=tmp_out, report_to="none", kd_chunk_size=8, use_cpu=True)
    student = tiny_llama(num_layers=2, hidden=16, heads=2, kv_heads=1, seed=2)
    trainer = DistillationTrainer(model=student, teacher_model=tiny_llama(seed=1), args=args)
    assert not trainer._fused
    assert "ZeRO-3 partitions the output heads that the chunked loss reads outside the forward" in caplog.text
    assert "computing full logits" in caplog.text and "logits_to_keep" not in caplog.text
    monkeypatch.setattr(distillation_trainer, "teacher_placement", lambda accelerator: "replicate")
    assert DistillationTrainer(model=student, teacher_model=tiny_llama(seed=1), args=args)._fused


def test_sharded_teacher_on_two_cpu_processes(tmp_path):
    """FSDP2 on a gloo mesh: half the weights a rank, the same logits and KD loss, and DDP training from it."""
    env = {**os.environ, "PYTHONPATH": f"{HERE}:{HERE.parent}", "OMP_NUM_THREADS": "1"}
    # --standalone: torchrun picks a free port itself (no race with other jobs for a port chosen here)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    result = subprocess.run(
        [*cmd, str(HERE / "fsdp_teacher_worker.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if result.returncode != 0:
        pytest.fail(result.stdout[-3000:] + result.stderr[-3000:])
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for record in ranks:
        assert record["local_fraction"] == pytest.approx(0.5, abs=0.02)
        assert record["local_fraction_kept_head"] == pytest.approx(0.5, abs=0.02)
        # the worker compared the logits; the KD loss to float32 rounding of the model's chains (tests/numerics.py)
        assert_fp32_close(record["kd_sharded"], record["kd_whole"], scale=record["kd_scale"], n=record["n"])
        # a sharded and a whole teacher give the same training losses, step by step
        assert len(record["losses_sharded"]) == 2
        losses = torch.tensor(record["losses_sharded"]), torch.tensor(record["losses_whole"])
        assert_fp32_close(*losses, scale=record["kd_scale"], n=record["n"], msg="losses")
    # the two ranks' shards are disjoint halves of the whole
    assert ranks[0]["local_fraction"] + ranks[1]["local_fraction"] == pytest.approx(1.0, abs=1e-9)
    # an fp32 teacher through place_teacher under accelerate's FSDP2 plugin with bf16 (the `fsdp` config): the
    # logits_to_keep=1 forward runs, and its KD loss is that of the whole teacher cast to bf16. Cast first (the
    # default: default_teacher_dtype is bf16 there): the same numbers, but two bf16 forwards may round a logit to
    # neighbouring bf16 values (one bf16 rounding of the logits, tests/numerics.py). Kept fp32 (teacher_dtype float32):
    # the bf16 policy casts the weights but not the buffers (the rotary inv_freq, which the bf16 reference has in
    # bf16): bf16 rounding along the model's chains; measured rel 1.7e-4 (untied) and 3.0e-4 (tied).
    for record in ranks:
        cases = record["fsdp2_bf16"]
        assert sorted((c["tied"], c["cast_first"]) for c in cases) == [
            (a, b) for a in (False, True) for b in (False, True)
        ]
        for case in cases:
            n = 1 if case["cast_first"] else record["n"]
            got, want = case["kd_sharded"], case["kd_whole_bf16"]
            assert_fp32_close(got, want, scale=case["kd_scale"], n=n, dtype=torch.bfloat16, msg=str(case))
