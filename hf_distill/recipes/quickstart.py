"""The quickstart job on tiny models built from configs: train a teacher, distill a 2-layer student, reload it.

It needs no network and no data files: the task is synthetic (is token 5 more frequent than token 7 in the
sentence?), so it shows the whole data flow in about a minute on a laptop CPU.
"""

from __future__ import annotations

import json
import os
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
from ..student import build_student
from ..validation import check_output_dir, clear_previous_run


@dataclass
class QuickstartArguments:
    output_dir: str = field(default="out/quickstart", metadata={"help": "Where teacher, student and results.json go."})
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
    common = dict(
        per_device_train_batch_size=32,
        learning_rate=1e-3,
        max_steps=steps,
        logging_steps=50,
        report_to="none",
        seed=seed,
        disable_tqdm=False,
    )
    print(f"[quickstart] 1/3 training a 4-layer teacher for {steps} steps")
    Trainer(
        model=teacher,
        args=TrainingArguments(output_dir=os.path.join(output_dir, "teacher"), **common),
        train_dataset=train,
        eval_dataset=dev,
        compute_metrics=accuracy,
    ).train()

    print("[quickstart] 2/3 distilling a 2-layer student (teacher layers 1 and 3) with logit + hidden + attention KD")
    student = build_student(teacher, layers=[1, 3])
    args = DistillationConfig(
        output_dir=os.path.join(output_dir, "student"),
        temperature=4.0,
        alpha_task=0.5,
        alpha_logits=0.5,
        alpha_hidden=1.0,
        alpha_attention=1.0,
        layer_map="uniform",
        **common,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train,
        eval_dataset=dev,
        compute_metrics=accuracy,
    )
    trainer.train()
    trainer.save_model()

    print("[quickstart] 3/3 evaluating teacher and reloaded student")
    reloaded = AutoModelForSequenceClassification.from_pretrained(args.output_dir)
    eval_args = TrainingArguments(
        output_dir=os.path.join(output_dir, "eval"), report_to="none", per_device_eval_batch_size=128
    )
    results = {
        "teacher_accuracy": Trainer(model=teacher, args=eval_args, compute_metrics=accuracy).evaluate(dev)[
            "eval_accuracy"
        ],
        "student_accuracy": Trainer(model=reloaded, args=eval_args, compute_metrics=accuracy).evaluate(dev)[
            "eval_accuracy"
        ],
        "teacher_parameters": teacher.num_parameters(),
        "student_parameters": reloaded.num_parameters(),
    }
    with open(os.path.join(output_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(json.dumps(results, indent=2))
    return results
