"""The quickstart job on tiny models built from configs: train a teacher, distill a 2-layer student, reload both,
and write what the GLUE job writes (results.json, report.png) plus the student's model card.

It needs no network and no data files: the task is synthetic (is token 5 more frequent than token 7 in the
sentence?), so it shows the whole data flow in about a minute on a laptop CPU.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

import torch
from datasets import Dataset
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
)

from ..distillation_config import DistillationConfig
from ..distillation_trainer import DistillationTrainer
from ..models import build_student
from ..publish import write_model_card
from ..report import build_results, write_report
from ..validation import check_output_dir, clear_previous_run


@dataclass
class QuickstartArguments:
    output_dir: str = field(
        default="out/quickstart",
        metadata={
            "help": "Where the student goes, with results.json, report.png and its model card (README.md); the "
            "teacher goes to <output_dir>/teacher."
        },
    )
    max_steps: int = field(default=150, metadata={"help": "Optimizer steps for the teacher and for the student."})
    seed: int = field(default=0, metadata={"help": "Random seed."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a run already in output_dir (deleted first); else it is refused."}
    )


def synthetic_dataset(n: int, seed: int, seq_len: int = 16, vocab: int = 30) -> Dataset:
    """Sentences of random tokens; the label says whether token 5 occurs more often than token 7."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (n, seq_len), generator=g)
    labels = ((ids == 5).sum(1) > (ids == 7).sum(1)).long()
    return Dataset.from_dict(
        {"input_ids": ids.tolist(), "attention_mask": [[1] * seq_len] * n, "labels": labels.tolist()}
    )


def accuracy(eval_pred) -> dict:
    logits, labels = eval_pred
    return {"accuracy": float((logits.argmax(-1) == labels).mean())}


def run(
    output_dir: str = "out/quickstart", steps: int = 150, seed: int = 0, overwrite_output_dir: bool = False
) -> dict:
    """Train a teacher into ``output_dir/teacher``, distil a student into ``output_dir``, score, time and report both.

    ``output_dir`` ends up laid out as the GLUE job's: the student with ``distillation_config.json``,
    ``results.json`` (:func:`hf_distill.report.build_results`), ``report.png`` and a model card (``README.md``);
    ``teacher/`` holds the teacher. Both load with ``from_pretrained``. Returns the ``results.json`` object.
    """
    if steps < 1:
        raise ValueError(f"--max_steps {steps}: give a positive number of optimizer steps, e.g. --max_steps 150.")
    check_output_dir(output_dir, overwrite_output_dir, resume=None, resumable=False)
    if overwrite_output_dir:
        clear_previous_run(output_dir)
    torch.manual_seed(seed)
    train, dev = synthetic_dataset(2048, seed), synthetic_dataset(512, seed + 1)
    config = BertConfig(
        vocab_size=30,
        hidden_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=128,
        num_labels=2,
        id2label={0: "no", 1: "yes"},
        label2id={"no": 0, "yes": 1},
        attn_implementation="eager",
    )
    teacher = BertForSequenceClassification(config)
    teacher_dir = os.path.join(output_dir, "teacher")
    common = dict(
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        max_steps=steps,
        logging_steps=50,
        report_to="none",
        seed=seed,
        disable_tqdm=False,
        save_strategy="no",  # the final models are saved below; no checkpoint folders beside them
    )
    print(f"[quickstart] 1/3 training a 4-layer teacher for {steps} steps, saved to {teacher_dir}")
    teacher_trainer = Trainer(
        model=teacher, args=TrainingArguments(output_dir=teacher_dir, **common), train_dataset=train
    )
    teacher_trainer.train()
    teacher_trainer.save_model(teacher_dir)

    print("[quickstart] 2/3 distilling a 2-layer student (teacher layers 1 and 3) with logit + hidden + attention KD")
    student = build_student(teacher, layers=[1, 3])
    args = DistillationConfig(
        output_dir=output_dir,
        teacher_model_name_or_path=teacher_dir,  # recorded in distillation_config.json and the model card
        temperature=4.0,
        alpha_task=0.5,
        alpha_logits=0.5,
        alpha_hidden=1.0,
        alpha_attention=1.0,
        layer_map="uniform",
        **common,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=train)
    trainer.train()
    trainer.save_model()

    print("[quickstart] 3/3 scoring and timing the reloaded teacher and student; writing the report and model card")
    models = {
        role: AutoModelForSequenceClassification.from_pretrained(path)
        for role, path in (("teacher", teacher_dir), ("student", output_dir))
    }
    with tempfile.TemporaryDirectory() as scratch:  # Trainer.evaluate needs an output_dir; it writes nothing here
        eval_args = TrainingArguments(output_dir=scratch, report_to="none", per_device_eval_batch_size=128)
        scores = {
            role: Trainer(model=model, args=eval_args, compute_metrics=accuracy).evaluate(dev)
            for role, model in models.items()
        }
    results = build_results(
        "synthetic",
        "accuracy",
        scores["teacher"],
        scores["student"],
        models["teacher"],
        models["student"],
        batch_size=32,
        seq_len=16,
        extra={
            "train_examples": len(train),
            "max_steps": trainer.state.global_step,
            "teacher_model": teacher_dir,
            "student_layers": [1, 3],
        },
    )
    write_report(results, output_dir, log_history=trainer.state.log_history, title="quickstart: tiny BERT 4L -> 2L")
    print(f"[quickstart] model card: {write_model_card(output_dir)}")
    return results
