"""Run by test_ddp.py under `torchrun --nproc_per_node 2` (gloo on CPU): distill a tiny student under DDP and
save each rank's adapter and student weights for the test to compare."""

import sys

import torch
from conftest import classification_dataset, tiny_bert

from hf_distill import DistillationConfig, DistillationTrainer

out = sys.argv[1]
teacher = tiny_bert(seed=1)
student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2)
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
)
trainer = DistillationTrainer(
    model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset(n=64)
)
trainer.train()
assert type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
torch.save(
    {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
    f"{out}/rank{trainer.args.process_index}.pt",
)
trainer.save_model()
