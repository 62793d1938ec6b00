"""Run by test_distributed_teacher.py under `torchrun --nproc_per_node 2` (gloo on CPU): shard a tiny Llama teacher
with FSDP2 (`shard_teacher`), compare it with the whole teacher, then distil a student under DDP from it. Last, place
an fp32 teacher through the real `place_teacher` as under accelerate's `fsdp` config (FSDP2, bf16): accelerate's own
FSDP2 plugin and parallelism mesh on an accelerator stub, and the logits_to_keep=1 forward of the chunked loss.

Each rank checks its own numbers and writes them to ``<out>/rank<r>.json`` for the test to compare across ranks."""

import copy
import json
import os
import sys
import types

import torch
import torch.distributed as dist
from accelerate.parallelism_config import ParallelismConfig
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from conftest import lm_dataset, tiny_llama
from numerics import assert_fp32_close, divergence_scale, forward_chain
from torch.distributed.tensor import DTensor

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.distributed import _fsdp2_policies, _fsdp_mesh, default_teacher_dtype, place_teacher, shard_teacher
from hf_distill.losses import get_loss

out = sys.argv[1]
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
record = {"rank": rank}


def local_and_full(model):
    """``(local elements, full elements)`` of the sharded (DTensor) parameters, and the plain ones' elements."""
    sharded = [p for p in model.parameters() if isinstance(p, DTensor)]
    plain = sum(p.numel() for p in model.parameters() if not isinstance(p, DTensor))
    return sum(p.to_local().numel() for p in sharded), sum(p.numel() for p in sharded), plain


# ---- sharding: every parameter sharded, and each rank holds about half of it ----
reference = tiny_llama(seed=1)  # same seed on both ranks: the same teacher
total = sum(p.numel() for p in reference.parameters())
whole = shard_teacher(copy.deepcopy(reference), keep_output_head=False)
local, full, plain = local_and_full(whole)
assert plain == 0 and full == total, (plain, full, total)
record["local_fraction"] = local / total

teacher = shard_teacher(copy.deepcopy(reference))  # the default: output head kept whole for the chunked loss
local, full, plain = local_and_full(teacher)
head = reference.get_output_embeddings().weight.numel()
assert plain == head and full == total - head, (plain, head, full, total)
record["local_fraction_kept_head"] = local / full
assert not isinstance(teacher.get_output_embeddings().weight, DTensor)

# ---- the sharded teacher computes what the whole one does ----
data = lm_dataset(n=8)
batch = {k: torch.tensor(data[k]) for k in ("input_ids", "attention_mask")}
with torch.no_grad():
    expected = reference(**batch).logits
    got = teacher(**batch).logits
    got_whole = whole(**batch).logits
# the sharded forward all-gathers the same weights: rounding along the model's chains at most (tests/numerics.py)
record["n"] = forward_chain(reference.config, batch["input_ids"].shape[1])
assert_fp32_close(got, expected, n=record["n"], msg="sharded logits")
assert_fp32_close(got_whole, expected, n=record["n"], msg="sharded logits, head too")
record["max_logit_diff"] = max((got - expected).abs().max().item(), (got_whole - expected).abs().max().item())
# reshard_after_forward=True at the root too: after the forward every sharded weight is a shard again
assert all(isinstance(p, DTensor) for n, p in teacher.named_parameters() if "lm_head" not in n)

student = tiny_llama(num_layers=2, hidden=16, heads=2, kv_heads=1, seed=2)
with torch.no_grad():
    s_logits = student(**batch).logits
mask = batch["attention_mask"].bool()
kd = get_loss("logits", "kl")
record["kd_sharded"] = kd(s_logits, got, mask=mask, temperature=2.0).item()
record["kd_whole"] = kd(s_logits, expected, mask=mask, temperature=2.0).item()
record["kd_scale"] = divergence_scale(s_logits, expected, temperature=2.0, mask=mask)
assert_fp32_close(record["kd_sharded"], record["kd_whole"], scale=record["kd_scale"], n=record["n"], msg="kd")


# ---- a few DDP steps of the student from the sharded teacher; the same run from the whole teacher ----
def train(teacher_model, tag):
    args = DistillationConfig(
        output_dir=f"{out}/{tag}",
        report_to="none",
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        kd_chunk_size=7,
        alpha_hidden=1.0,
        hidden_loss="cosine",
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    model = copy.deepcopy(student).train()
    torch.manual_seed(0)  # the projection adapters are drawn before the Trainer seeds: the same ones in both runs
    trainer = DistillationTrainer(model=model, teacher_model=teacher_model, args=args, train_dataset=lm_dataset(n=16))
    assert trainer._fused and trainer.teachers[0].model is teacher_model
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
    losses = [log["loss/logits"] for log in trainer.state.log_history if "loss/logits" in log]
    return losses, model


before = {n: p.full_tensor().clone() for n, p in teacher.named_parameters() if isinstance(p, DTensor)}
record["losses_sharded"], trained = train(teacher, "sharded")
record["losses_whole"], _ = train(reference, "whole")
assert all(torch.equal(p.full_tensor(), before[n]) for n, p in teacher.named_parameters() if n in before)
assert all(p.grad is None for p in teacher.parameters())
assert not torch.equal(trained.model.layers[0].mlp.up_proj.weight, student.model.layers[0].mlp.up_proj.weight)


# ---- the `fsdp` config's bf16 through the real place_teacher: an fp32 teacher, FSDP2 with a bf16 policy ----
def fsdp2_bf16_accelerator():
    """The attributes of an ``Accelerator`` under hf_distill's ``fsdp`` config that place_teacher reads, with
    accelerate's own plugin (bf16 ``MixedPrecisionPolicy``) and the data-parallel mesh it builds."""
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, mixed_precision_policy="bf16")
    parallelism = ParallelismConfig(dp_shard_size=world)
    return types.SimpleNamespace(
        distributed_type=DistributedType.FSDP,
        is_fsdp2=True,
        mixed_precision="bf16",
        state=types.SimpleNamespace(fsdp_plugin=plugin, deepspeed_plugin=None),
        device=torch.device("cpu"),
        torch_device_mesh=parallelism.build_device_mesh("cpu"),
        parallelism_config=parallelism,
    )


accelerator = fsdp2_bf16_accelerator()
policies = _fsdp2_policies(accelerator)
assert policies["mp_policy"].param_dtype == torch.bfloat16 and type(policies["offload_policy"]).__name__ == (
    "OffloadPolicy"  # no offload
), policies
assert _fsdp_mesh(accelerator).size() == world
every_row = torch.ones(len(data), 1, dtype=torch.bool)  # the last position of every row (padding or not)
with torch.no_grad():
    s_last = student(**batch, logits_to_keep=1).logits
record["fsdp2_bf16"] = []
for tied in (False, True):
    base = tiny_llama(seed=1, tie_word_embeddings=tied)  # fp32, as the student's default dtype would leave it
    # the dtype the trainer passes: default_teacher_dtype (bf16 under FSDP with bf16), and None (a teacher_dtype of fp32:
    # the policy computes the blocks in bf16 and shard_teacher must cast the kept head to match)
    for dtype in (default_teacher_dtype(accelerator, torch.float32), None):
        placed = place_teacher(copy.deepcopy(base), accelerator, dtype)
        head = placed.get_output_embeddings().weight
        assert head.dtype == torch.bfloat16 and not isinstance(head, DTensor), (tied, dtype, head.dtype)
        assert (placed.get_input_embeddings().weight is head) == tied
        assert not placed.training and not any(p.requires_grad for p in placed.parameters())
        whole_bf16 = copy.deepcopy(base).to(torch.bfloat16)
        with torch.no_grad():
            got = placed(**batch, logits_to_keep=1).logits  # raised "expected Float but found BFloat16" before
            want = whole_bf16(**batch, logits_to_keep=1).logits
        assert got.shape == (len(data), 1, base.config.vocab_size) and got.dtype == torch.bfloat16
        kd_got = kd(s_last, got, mask=every_row, temperature=2.0).item()
        kd_want = kd(s_last, want, mask=every_row, temperature=2.0).item()
        scale = divergence_scale(s_last, want, temperature=2.0, mask=every_row)
        record["fsdp2_bf16"].append(
            {
                "tied": tied,
                "cast_first": dtype is not None,
                "kd_sharded": kd_got,
                "kd_whole_bf16": kd_want,
                "kd_scale": scale,
            }
        )

with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(record, f)
dist.barrier()
# Skip the interpreter's teardown: about one run in ten under load, a gloo thread still running at exit aborted the
# process ("terminate called without an active exception") after all the work above had passed, with or without
# destroy_process_group. Both ranks are past the barrier and their results are on disk.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
