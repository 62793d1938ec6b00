"""The causal-LM job: load the teacher, build (or load) the student, distill on text / prompt-completion / chat data,
on generated completions, or on teacher samples when no data is given, and report perplexities.

Output layout: ``output_dir/`` holds the student (a full model, a LoRA adapter, or the merged model), its tokenizer,
``distillation_config.json`` and ``results.json``::

    {"task": "causal_lm", "teacher": {"num_parameters": ..., "perplexity": {"valid.txt": ...}},
     "student": {...}, "student_before_training": {...}, "train_examples": ..., "max_steps": ...}
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from ..data import (
    CACHE_META_FILE,
    DistillationDataCollator,
    build_teacher_cache,
    load_lm_dataset,
    load_teacher_cache,
    perplexity,
    read_text_split,
    tokenize_lm_dataset,
)
from ..data.teacher_cache import read_meta, teacher_weight_folder
from ..distillation_config import DistillationConfig, check_number
from ..distillation_trainer import DistillationTrainer
from ..file_checks import error_line
from ..models import build_student, dropout_overrides, resolve_dtype, resolve_model_path
from ..report import count_parameters, format_perplexities, write_results
from ..teachers import CrossTokenizerTeacher
from ..validation import (
    parse_layers,
)

logger = logging.getLogger(__name__)


# The job's defaults where DistillationConfig's (T=2, alpha 0.5/0.5, lr 5e-5 decaying: classification KD) do not suit
# causal LMs: the settings benchmarks/lm_quality.py measured best (forward KL at T=1 without the next-token loss,
# hidden-state cosine KD on the layers the student was built from, a constant lr of 2e-4 after 10 warm-up steps).
# A YAML config and command-line flags override them; the Python API keeps DistillationConfig's own defaults.
JOB_DEFAULTS = {
    "temperature": 1.0,
    "alpha_task": 0.0,
    "alpha_logits": 1.0,
    "logit_loss": "kl",
    "alpha_hidden": 1.0,
    "hidden_loss": "cosine",
    "layer_map": "init",
    "learning_rate": 2e-4,
    "lr_scheduler_type": "constant_with_warmup",
    "warmup_steps": 10,
}
# a student loaded with --student_model_name_or_path has no layers taken from the teacher to match, and a run from
# --teacher_cache_dir should not need the teacher at all: no hidden-state term by default for either
SEPARATE_STUDENT_DEFAULTS = {**JOB_DEFAULTS, "alpha_hidden": 0.0, "layer_map": "uniform"}
# --distill_mode ema / mutual: the student's teacher starts as itself (its average, its copies), so the KD term alone
# gives it no gradient; the next-token loss beside it, at DistillationConfig's (and the GLUE job's) 0.5 / 0.5
OWN_STUDENT_DEFAULTS = {**SEPARATE_STUDENT_DEFAULTS, "alpha_task": 0.5, "alpha_logits": 0.5}


@dataclass
class CausalLMArguments:
    """Data, student and evaluation of the causal-LM job (the training knobs are in DistillationConfig)."""

    student_layers: Optional[str] = field(
        default=None,
        metadata={
            "help": "0-based teacher layers the student keeps, e.g. '0,2,4' (default: every other one, starting with "
            "the first)."
        },
    )
    student_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "Use this smaller causal LM (same tokenizer) as the student instead (--distill_mode ema / "
            "mutual: the model trained, cut to --student_layers when given)."
        },
    )
    student_dropout: Optional[float] = field(
        default=None,
        metadata={
            "help": "Dropout of the student's attention probabilities and hidden states (default: its config's); "
            "--distill_mode mutual needs some, or the peers, copies of the student, stay equal."
        },
    )
    num_peers: int = field(
        default=2, metadata={"help": "--distill_mode mutual: models trained together, the student included (>= 2)."}
    )
    teacher_learning_rate: Optional[float] = field(
        default=None,
        metadata={"help": "--distill_mode cotrain: the learning rate of the teacher trained beside the student "
                  "(default: learning_rate)."},
    )  # fmt: skip
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset of the training data."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Config name of the Hub dataset."})
    dataset_split: str = field(default="train", metadata={"help": "Split of the Hub dataset to train on."})
    train_file: Optional[str] = field(
        default=None,
        metadata={
            "help": "Local training data: .txt (plain text), .json/.jsonl (text, prompt/completion or messages)."
        },
    )
    validation_split_percentage: int = field(
        default=0,
        metadata={
            "help": "Hold out the last N percent of a .txt train_file (cut at a line) and report its perplexity "
            "as '<file> (held out)'; tinyshakespeare's usual split is 10."
        },
    )
    validation_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Text files whose perplexity is reported (keyed by file name); Hub split names also work."},
    )
    block_size: int = field(default=128, metadata={"help": "Tokens per training block / longest example."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use at most this many examples."})
    max_eval_blocks: Optional[int] = field(
        default=None, metadata={"help": "Score at most this many blocks of each validation text."}
    )
    max_eval_tokens: Optional[int] = field(
        default=None,
        metadata={
            "help": "Score at most this many tokens of each validation text, before and after training (whole "
            "blocks of block_size, each predicting block_size - 1 tokens; default: all). The job prints how many it "
            "scores; a full validation file can take many minutes on a CPU."
        },
    )
    generation_prompt_length: Optional[int] = field(
        default=None,
        metadata={
            "help": "Plain-text data with lmbda > 0 or seq_kd: the first N tokens of each block are the prompt "
            "that the student / teacher continues (default: half the block)."
        },
    )
    data_free_samples: int = field(
        default=0,
        metadata={"help": "With no training data: sample this many sequences from the teacher and train on them."},
    )
    teacher_cache_dir: Optional[str] = field(
        default=None,
        metadata={
            "help": "Top-k teacher cache folder: built from the training data when missing, then used for the "
            "logit term instead of running the teacher (hidden-state KD still needs the teacher). A finished cache "
            "with --student_model_name_or_path and --eval_teacher false reads only the teacher's config and "
            "tokenizer, not its weights. With a student of another tokenizer, a cross-tokenizer cache (the "
            "teacher's top-k in its own tokens at the aligned positions), for that pair of tokenizers only."
        },
    )
    teacher_cache_k: int = field(default=32, metadata={"help": "Teacher logits kept per token in the cache."})
    eval_teacher: bool = field(
        default=True, metadata={"help": "Also report the teacher's perplexities (this loads its weights)."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train a LoRA adapter on the student (peft)."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: str = field(
        default="all-linear", metadata={"help": "Modules given LoRA adapters: 'all-linear' or names, comma-separated."}
    )
    merge_lora: bool = field(
        default=False, metadata={"help": "Save the student with the LoRA adapter merged in (else the adapter alone)."}
    )

    def __post_init__(self):
        if self.student_dropout is not None and not 0.0 <= self.student_dropout < 1.0:
            raise ValueError(
                f"student_dropout={self.student_dropout} must be in [0, 1), or unset for the model's own."
            )
        check_number(
            "teacher_learning_rate", self.teacher_learning_rate, "> 0 (or unset for learning_rate)", lambda v: v > 0
        )


def load_hub_split(lm: CausalLMArguments, split: str):
    """The ``split`` of ``--dataset_name``; a dataset that cannot be loaded (no such name, no such split, the Hub out
    of reach) is a ``ValueError`` of one line."""
    from datasets.exceptions import DatasetsError

    try:
        return load_lm_dataset(lm.dataset_name, lm.dataset_config_name, split=split)
    except (OSError, DatasetsError, ValueError) as err:  # ConnectionError, DatasetNotFoundError: OSErrors
        raise ValueError(
            f"--dataset_name {lm.dataset_name}: cannot load its {split!r} split ({error_line(err, first=False)}); check "
            "the name (a Hub dataset such as org/name, or a local dataset folder), or pass local files with "
            "--train_file."
        ) from err


def load_text_data(lm: CausalLMArguments, tokenizer):
    """``(train dataset, {name: validation text})`` from the arguments (Hub, local files), tokenized."""
    texts = {}
    for entry in lm.validation_files:
        if os.path.isfile(entry):
            texts[os.path.basename(entry)] = read_text_split(entry, part="all")
        elif lm.dataset_name:
            texts[entry] = "\n\n".join(load_hub_split(lm, entry)["text"])
        else:
            raise ValueError(f"validation_files entry {entry!r} is neither a file nor a split of --dataset_name.")
    if lm.train_file is None and lm.dataset_name is None:
        return None, texts
    if lm.validation_split_percentage:
        if not (lm.train_file and lm.train_file.endswith(".txt")):
            raise ValueError("validation_split_percentage needs a .txt train_file.")
        fraction = lm.validation_split_percentage / 100
        texts[f"{os.path.basename(lm.train_file)} (held out)"] = read_text_split(lm.train_file, "validation", fraction)
        from datasets import Dataset

        raw = Dataset.from_dict({"text": [read_text_split(lm.train_file, "train", fraction)]})
    elif lm.dataset_name:
        raw = load_hub_split(lm, lm.dataset_split)
    else:
        raw = load_lm_dataset(train_file=lm.train_file)
    train = tokenize_lm_dataset(raw, tokenizer, block_size=lm.block_size)
    if lm.max_train_samples is not None and lm.max_train_samples < len(train):
        train = train.select(range(lm.max_train_samples))
    return train, texts


def add_text_prompts(train, lm: CausalLMArguments, args: DistillationConfig):
    """Plain-text blocks get a ``prompt_length`` when completions are generated (on-policy or sequence-level KD)."""
    if (args.lmbda == 0 and not args.seq_kd) or "prompt_length" in train.column_names:
        return train
    n = lm.generation_prompt_length or lm.block_size // 2
    return train.add_column("prompt_length", [min(n, len(ids)) for ids in train["input_ids"]])


def make_student(lm: CausalLMArguments, args: DistillationConfig, teacher, tokenizer):
    """The student: ``--student_model_name_or_path`` (in the teacher's dtype; cut to ``--student_layers`` in the modes
    without a teacher), else built from ``teacher``'s layers (``teacher`` may be ``None`` in the first case); with
    ``--student_dropout``, and wrapped in LoRA with ``--use_peft``."""
    layers = parse_layers(lm.student_layers)
    if lm.student_model_name_or_path:
        path = resolve_model_path(lm.student_model_name_or_path)  # its tokenizer: checked by validate_causal_lm_job
        dropout = dropout_overrides(lm.student_dropout, AutoConfig.from_pretrained(path))
        dtype = resolve_dtype(args.teacher_dtype, torch.float32)
        student = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **dropout)
        if layers is not None:  # ema / mutual / another tokenizer: the student's own layers
            torch.manual_seed(args.seed)
            student = build_student(student, layers=layers)
    else:
        torch.manual_seed(args.seed)
        student = build_student(teacher, layers=layers, **dropout_overrides(lm.student_dropout, teacher.config))
    if lm.use_peft:
        from peft import LoraConfig, get_peft_model

        targets = lm.lora_target_modules
        student = get_peft_model(
            student,
            LoraConfig(
                r=lm.lora_r,
                lora_alpha=lm.lora_alpha,
                lora_dropout=lm.lora_dropout,
                target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
                task_type="CAUSAL_LM",
            ),
        )
        if lm.student_model_name_or_path:  # the name users load, not the local folder it resolved to
            student.peft_config["default"].base_model_name_or_path = lm.student_model_name_or_path
    return student


def check_eval_caps(lm: CausalLMArguments) -> None:
    """``--max_eval_tokens`` must leave at least one whole block to score: checked before any model is loaded."""
    if lm.max_eval_tokens is not None and lm.max_eval_tokens < lm.block_size - 1:
        raise ValueError(
            f"--max_eval_tokens {lm.max_eval_tokens} is fewer than the {lm.block_size - 1} tokens one block of "
            f"--block_size {lm.block_size} scores; raise --max_eval_tokens or leave it unset to score every token."
        )


def needed_bos(tokenizer) -> int | None:
    """The BOS id a tokenizer puts before every text (Gemma-3's ``<bos>``: the model scores far worse without it),
    else ``None`` (SmolLM2, GPT-2: none)."""
    bos = getattr(tokenizer, "bos_token_id", None)
    return bos if bos is not None and tokenizer("a")["input_ids"][:1] == [bos] else None


def score(model, texts: dict, tokenizer, lm: CausalLMArguments, *, label: str = "model", progress: bool = False):
    """``num_parameters``, ``perplexity`` and ``eval_tokens`` (tokens scored) per validation text of ``model``.

    Prints each perplexity with the number of tokens it was computed over; ``progress`` shows a bar per text.
    """
    ppl, tokens = {}, {}
    for name, text in texts.items():
        out = perplexity(
            model,
            text,
            tokenizer,
            block_size=lm.block_size,
            max_blocks=lm.max_eval_blocks,
            max_tokens=lm.max_eval_tokens,
            progress=progress,
            desc=f"perplexity of the {label} on {name}",
            bos_token_id=needed_bos(tokenizer),
        )
        ppl[name], tokens[name] = out["perplexity"], out["tokens"]
        capped = " (capped by --max_eval_tokens)" if lm.max_eval_tokens is not None else ""
        print(
            f"[causal-lm] {label}: perplexity {out['perplexity']:.2f} on {name}, over {out['tokens']:,} tokens "
            f"in {out['blocks']} blocks{capped}"
        )
    return {"num_parameters": count_parameters(model), "perplexity": ppl, "eval_tokens": tokens}


def show_bars(args: DistillationConfig) -> bool:
    """Progress bars while scoring: unless ``--disable_tqdm``, on the main process."""
    return not args.disable_tqdm and args.local_process_index == 0


def make_trainer(student, teacher, args: DistillationConfig, train, tokenizer, teacher_tokenizer=None):
    """The job's trainer of ``student`` from ``teacher`` (a model, a ``Teacher``, a list of them, or ``None``) on data
    in ``tokenizer``'s tokens; ``teacher_tokenizer``: the teacher's when it differs (the trainer then distils across
    tokenizers)."""
    return DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=train,
        data_collator=DistillationDataCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        teacher_processing_class=teacher_tokenizer or tokenizer,
    )


def finish(lm, args, trainer, results: dict, train, texts, tokenizer, complete=None) -> dict:
    """Score the trained (and saved) student of ``trainer`` (merged first with ``--merge_lora``), complete
    ``results`` with it and the run's facts (and ``complete(results)``, a mode's own entries), write ``results.json``
    and print the table; returns ``results``."""
    model = trainer.model
    if lm.use_peft and lm.merge_lora:
        model = model.merge_and_unload()
        if args.should_save:
            save_merged(model, args.output_dir)
    results["student"] = score(model, texts, tokenizer, lm, label="distilled student", progress=show_bars(args))
    results.update(
        {
            "train_examples": len(train),
            "max_steps": trainer.state.global_step,
            "student_layers": getattr(model.config, "distillation_teacher_layers", None),
            "losses": {"alpha_task": args.alpha_task, "alpha_logits": args.alpha_logits, "loss": args.logit_loss},
        }
    )
    if complete is not None:
        complete(results)
    if args.should_save:
        write_results(results, args.output_dir)
    print(format_perplexities(results))
    return results


def loss_summary(args: DistillationConfig, crossed: bool = False) -> str:
    """The loss terms and learning rate of a run in one line (the job's defaults are in ``JOB_DEFAULTS``); ``crossed``:
    the teacher has another tokenizer (the parts of its logit term)."""
    logits = f"{args.alpha_logits} x {args.logit_loss} at T={args.temperature}"
    if crossed:
        parts = {"exact": args.cross_tokenizer_exact, "uld": args.cross_tokenizer_uld}
        parts["chain"] = args.cross_tokenizer_chain
        mix = " + ".join(f"{weight:g} {name}" for name, weight in parts.items() if weight > 0)
        logits = f"{args.alpha_logits} x cross-tokenizer ({mix}; {args.logit_loss} at T={args.temperature})"
    terms = [logits, f"{args.alpha_task} x next-token"]
    if args.alpha_hidden:
        terms.append(f"{args.alpha_hidden} x hidden {args.hidden_loss} ({args.layer_map} layer map)")
    schedule = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    return f"{' + '.join(terms)}; lr {args.learning_rate:g} {schedule}, {args.warmup_steps} warm-up steps"


def save_merged(model, output_dir: str) -> None:
    """The merged student in ``output_dir``; the adapter moves to ``output_dir/lora_adapter`` (else transformers
    would load ``output_dir`` as base model + adapter)."""
    adapter_dir = os.path.join(output_dir, "lora_adapter")
    os.makedirs(adapter_dir, exist_ok=True)
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        if os.path.isfile(os.path.join(output_dir, name)):
            os.replace(os.path.join(output_dir, name), os.path.join(adapter_dir, name))
    model.save_pretrained(output_dir)


def cached_train_set(lm, args, teacher, train, tokenizer, teacher_tokenizer=None):
    """``(dataset, meta)``: the training data with the teacher's top-k columns, from the finished cache in
    ``--teacher_cache_dir``, checked against ``teacher`` (the model, or its name when it is not loaded: its weight files
    are then hashed, not loaded, and not checked when there are none), or built there with the model.
    ``teacher_tokenizer``: the teacher's, when it differs from the student's ``tokenizer``: the cache is then a
    cross-tokenizer one (:class:`hf_distill.teachers.CrossTokenizerTeacher`), for this pair of tokenizers only."""
    tokenizers = (teacher_tokenizer, tokenizer) if teacher_tokenizer is not None else None
    meta_path = os.path.join(lm.teacher_cache_dir, CACHE_META_FILE)
    if os.path.isfile(meta_path):
        print(f"[causal-lm] training from the teacher cache in {lm.teacher_cache_dir}")
        if isinstance(teacher, str) and teacher_weight_folder(teacher) is None:
            print(
                f"[causal-lm] {args.teacher_model_name_or_path} has no weight files to check the cache against: "
                "trusting the cache's teacher name"
            )
            teacher = None
        return load_teacher_cache(
            lm.teacher_cache_dir,
            temperature=args.temperature,
            dataset=train,
            teacher_name=args.teacher_model_name_or_path,
            teacher=teacher,
            tokenizers=tokenizers,
        )
    across = " across tokenizers" if tokenizers else ""
    print(f"[causal-lm] caching the teacher's top-{lm.teacher_cache_k} log-probs{across} in {lm.teacher_cache_dir}")
    name = args.teacher_model_name_or_path
    cached = build_teacher_cache(
        CrossTokenizerTeacher(teacher, *tokenizers, name=name) if tokenizers else teacher,
        train,
        k=lm.teacher_cache_k,
        temperature=args.temperature,
        output_dir=lm.teacher_cache_dir,
        teacher_name=name,
        pad_token_id=tokenizer.pad_token_id,
    )
    return cached, read_meta(lm.teacher_cache_dir, meta_path)
