"""Run by test_ddp.py under `torchrun --nproc_per_node 2` (gloo on CPU): distill a tiny student under DDP and
save each rank's adapter and student weights for the test to compare. ``argv[2] == "lm"``: a causal LM through the
fused, chunked loss (the head is used outside the DDP forward, by the chunked autograd function)."""

import sys

import torch
from conftest import classification_dataset, lm_dataset, tiny_bert, tiny_llama

from hf_distill import DistillationConfig, DistillationTrainer

out = sys.argv[1]
lm = len(sys.argv) > 2 and sys.argv[2] == "lm"
if lm:
    teacher, data = tiny_llama(seed=1), lm_dataset(n=64)
    student = tiny_llama(num_layers=2, hidden=16, heads=2, kv_heads=1, seed=2)
    extra = {"kd_chunk_size": 7, "hidden_loss": "cosine"}  # relation KD on a GQA student too
else:
    teacher, data = tiny_bert(seed=1), classification_dataset(n=64)
    student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2)
    extra = {}
args = DistillationConfig(
    output_dir=out,
    report_to="none",
    per_device_train_batch_size=4,
    max_steps=3,
    alpha_hidden=1.0,
    alpha_attention=1.0,
    attention_loss="relation",
    save_strategy="no",
    disable_tqdm=True,
    use_cpu=True,
    **extra,
)
trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
assert trainer._fused == lm
trainer.train()
assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
torch.save(
    {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
    f"{out}/rank{trainer.args.process_index}.pt",
)
trainer.save_model()
