"""Run by test_ddp.py under `torchrun --nproc_per_node 2` (gloo on CPU): distill a tiny student under DDP.

``python ddp_worker.py OUT KIND [grads BATCH ACCUM]``; ``KIND`` is ``encoder`` (BERT, hidden + attention KD through
projection adapters: the student is narrower), ``lm`` (a causal LM through the fused, chunked loss: the head is
used outside the DDP forward, by the chunked autograd function), ``xtok`` (a causal-LM teacher with another
tokenizer: the chunked cross-tokenizer term), ``ema`` (BERT with its own moving average as the
teacher, ``distill_mode ema``), ``mutual`` (a BERT peer trained with it) or ``cotrain`` (a BERT teacher fine-tuned in
the same loop, the student distilling through projection adapters).

- default: train 3 steps and save each rank's student and adapter weights (``rank{i}.pt``) for the test to compare;
- ``grads``: one optimizer step on a sequential sampler, each rank saving the gradients it is about to apply, a
  trained teacher's too as ``teacher.<name>`` (``grads_rank{i}.pt``); `first_step_grads` is imported by the test to
  get the same run on one process.
"""

import os
import sys

import torch
from conftest import GradCatcher, classification_dataset, lm_dataset, tiny_bert, tiny_llama
from torch.nn.parallel import DistributedDataParallel
from transformers import TrainerCallback

from hf_distill import DistillationConfig, DistillationTrainer

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


def build(kind: str, dropout: bool = True):
    """``(teacher, student, data, extra config)`` of the ``encoder`` or ``lm`` run."""
    if kind == "xtok":  # a causal-LM teacher with another tokenizer (Gemma-like), re-encoding the student's rows
        from test_cross_tokenizer_teacher import byte_level, gemma, lm_rows, tiny_lm

        from hf_distill.teachers import CrossTokenizerTeacher

        s_tok, t_tok = byte_level(), gemma()
        teacher = CrossTokenizerTeacher(tiny_lm(len(t_tok), seed=1), t_tok, s_tok)
        extra = {"alpha_hidden": 0.0, "alpha_attention": 0.0, "kd_chunk_size": 5, "cross_tokenizer_uld": 0.5}
        return teacher, tiny_lm(len(s_tok), seed=2), lm_rows(s_tok, n=64), {**extra, "cross_tokenizer_chain": 0.5}
    if kind == "lm":  # Llama has no dropout
        teacher, data = tiny_llama(seed=1), lm_dataset(n=64)
        student = tiny_llama(num_layers=2, hidden=16, heads=2, kv_heads=1, seed=2)
        return teacher, student, data, {"kd_chunk_size": 7, "hidden_loss": "cosine"}  # relation KD on GQA too
    kw = {} if dropout else NO_DROPOUT
    if kind == "mutual":  # a peer trained with the student (distill_mode mutual), DDP-wrapped like it
        from hf_distill.teachers import TrainedTeacher

        student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **kw)
        peer = TrainedTeacher(tiny_bert(num_layers=2, hidden=16, heads=2, seed=3, **kw), save_dir="peer_1")
        return peer, student, classification_dataset(n=64), {"distill_mode": "mutual", "alpha_hidden": 0.0}
    if kind == "cotrain":  # a teacher fine-tuned in the same loop (distill_mode cotrain), DDP-wrapped like the student
        from hf_distill.teachers import TrainedTeacher

        teacher = TrainedTeacher(
            tiny_bert(seed=1, **kw), learns_from_peers=False, learning_rate=3e-3, save_dir="teacher"
        )
        student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **kw)
        return teacher, student, classification_dataset(n=64), {"distill_mode": "cotrain"}
    if kind == "ema":  # no teacher: the student's moving average (distill_mode ema)
        student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **kw)
        return None, student, classification_dataset(n=64), {"distill_mode": "ema", "ema_decay": 0.5}
    teacher, data = tiny_bert(seed=1, **kw), classification_dataset(n=64)
    student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **kw)
    return teacher, student, data, {}


def make_trainer(out: str, kind: str, dropout: bool = True, callbacks=(), **overrides) -> DistillationTrainer:
    teacher, student, data, extra = build(kind, dropout)
    config = {
        "output_dir": out,
        "report_to": "none",
        "per_device_train_batch_size": 4,
        "max_steps": 3,
        "alpha_hidden": 1.0,
        "alpha_attention": 1.0,
        "attention_loss": "relation",
        "save_strategy": "no",
        "disable_tqdm": True,
        "use_cpu": True,
        **extra,
    }
    args = DistillationConfig(**{**config, **overrides})
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=data, callbacks=list(callbacks)
    )
    assert trainer._fused == (kind in ("lm", "xtok"))
    return trainer


class TrainedTeacherGrads(TrainerCallback):
    """Keeps a copy of the trained teachers' gradients (a peer's, a co-trained teacher's) of the first optimizer step,
    as ``teacher.<name>``."""

    def __init__(self):
        self.grads, self.teachers = None, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.grads is None:
            self.grads = {
                f"teacher.{n}": p.grad.detach().clone()
                for t in self.teachers
                if t.trainable
                for n, p in t.inner.named_parameters()
                if p.grad is not None
            }


def first_step_grads(out: str, kind: str, batch: int, accum: int = 1) -> dict:
    """Gradients of the student (and adapters), and of a trained teacher (``teacher.<name>``), at the first optimizer
    step, on this process's share of the data.

    The sampler is sequential, so under accelerate's batch sharding rank ``r`` takes micro-batches ``r, r + world,
    ...``: together the first window holds rows ``0 .. batch * accum * world - 1``, as one process with batch 8 does.
    """
    catcher, teachers = GradCatcher(), TrainedTeacherGrads()
    trainer = make_trainer(
        out,
        kind,
        dropout=False,
        callbacks=[catcher, teachers],
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        max_steps=1,
        train_sampling_strategy="sequential",
        max_grad_norm=0,  # compare the raw gradients
    )
    teachers.teachers = trainer.teachers
    trainer.train()
    return {**catcher.grads, **teachers.grads}


def main(out: str, kind: str, mode: str = "train", *numbers: str) -> None:
    if mode == "grads":
        batch, accum = (int(n) for n in numbers)
        grads = first_step_grads(out, kind, batch, accum)
        rank = torch.distributed.get_rank()
        torch.save(grads, f"{out}/grads_rank{rank}.pt")
        return
    trainer = make_trainer(out, kind)
    trainer.train()
    assert isinstance(trainer.model_wrapped, DistributedDataParallel)
    teacher = trainer.teachers[0].model
    if kind == "mutual":  # a trained peer is DDP-wrapped like the student: its gradients are averaged
        assert isinstance(teacher, DistributedDataParallel)
        teacher = trainer.teachers[0].inner
    else:  # a frozen teacher is replicated, never DDP-wrapped: nothing to average, and no gradients at all
        assert not isinstance(teacher, DistributedDataParallel) and not teacher.training
        assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    weights = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    if kind in ("ema", "mutual"):  # the average, or the peer, on each rank
        weights.update({f"teacher.{k}": v.detach().clone() for k, v in teacher.state_dict().items()})
    torch.save(weights, f"{out}/rank{trainer.args.process_index}.pt")
    trainer.save_model()


if __name__ == "__main__":
    main(*sys.argv[1:])
    # Skip the interpreter's teardown, as fsdp_teacher_worker.py does: under load a gloo thread still running at exit
    # can abort the process ("terminate called without an active exception", exit -6) after every result above was
    # written. Both ranks pass the barrier first, so neither exits while the other still needs it.
    torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
