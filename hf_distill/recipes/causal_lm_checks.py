"""The causal-LM job's input checks (``hf-distill causal-lm``), run before the teacher is loaded; each refusal is one
line (``ValueError``) naming the bad value and the fix. The checks they gather are in :mod:`hf_distill.validation`."""

from __future__ import annotations

import os

from ..file_checks import check_model_path, looks_local
from ..validation import (
    check_dataset_name,
    check_layer_maps,
    check_layers,
    check_lm_file_type,
    check_no_column_maps,
    check_output_and_resume,
    check_overwrite_keeps_inputs,
    check_text_file,
    check_train_budget,
    load_model_config,
    load_tokenizer,
    num_layers,
    parse_layers,
    student_depth,
)
from .glue_checks import OWN_TEACHER, check_noisy_student

# the modes of the causal-LM job (every one)
CAUSAL_LM_MODES = ("frozen", "ema", "born_again", "noisy_student", "mutual", "cotrain")


def validate_causal_lm_job(lm, args):
    """Check every input of the causal-LM job (``CausalLMArguments``, ``DistillationConfig``) before the teacher is
    loaded; returns ``(tokenizer, teacher_tokenizer)``: the tokenizer of the data (the teacher's; the student's in
    the modes without a teacher, and when the student's tokenizer differs from the teacher's) and, in that last case,
    the teacher's (else ``None``)."""
    check_no_column_maps(args, "causal-lm")
    mode = args.distill_mode
    if mode not in CAUSAL_LM_MODES:
        raise ValueError(
            f"--distill_mode {mode}: the causal-LM job runs {', '.join(CAUSAL_LM_MODES)}; pick one of them (or run "
            f"{mode} with hf-distill glue)."
        )
    if lm.teacher_learning_rate is not None and mode != "cotrain":
        raise ValueError(
            f"--teacher_learning_rate {lm.teacher_learning_rate} sets the learning rate of a teacher trained beside the "
            f"student, but --distill_mode is {mode}: set --distill_mode cotrain, or drop it."
        )
    if mode in OWN_TEACHER:
        return _validate_causal_lm_own_student(lm, args), None
    if args.teacher_model_name_or_path is None:
        raise ValueError("Set --teacher_model_name_or_path (a causal LM: Hub name or local folder).")
    if lm.teacher_cache_dir is not None and mode in ("cotrain", "born_again", "noisy_student"):
        why = (
            "the teacher is trained in the same loop as the student and changes every step"
            if mode == "cotrain"
            else f"each {mode} generation has another teacher (the one before it)"
        )
        raise ValueError(
            f"--teacher_cache_dir {lm.teacher_cache_dir} caches one fixed teacher's log-probs, but with --distill_mode "
            f"{mode} {why}: drop --teacher_cache_dir."
        )
    check_train_budget(args.max_steps, args.num_train_epochs)
    check_output_and_resume(args)
    layers = parse_layers(lm.student_layers)
    check_model_path(lm.student_model_name_or_path, "--student_model_name_or_path")
    files = _check_lm_data(lm)
    check_overwrite_keeps_inputs(
        args.output_dir,
        args.overwrite_output_dir,
        [("--teacher_model_name_or_path", args.teacher_model_name_or_path),
         ("--student_model_name_or_path", lm.student_model_name_or_path), ("--dataset_name", lm.dataset_name),
         *[("--train_file", path) for path in files], *[("--validation_files", path) for path in lm.validation_files],
         ("--teacher_cache_dir", lm.teacher_cache_dir)],
    )  # fmt: skip
    teacher = load_model_config(
        args.teacher_model_name_or_path,
        "--teacher_model_name_or_path",
        args.trust_remote_code,
        weights="; to ".join(teacher_weight_uses(lm, args)) or False,
    )
    tokenizer = load_tokenizer(args.teacher_model_name_or_path, "--teacher_model_name_or_path", teacher)
    student, student_tokenizer = None, None
    if lm.student_model_name_or_path:
        student, student_tokenizer = check_lm_student(lm.student_model_name_or_path, tokenizer, args.trust_remote_code)
    if student_tokenizer is not None:  # another tokenizer: distilled across tokenizers, on the student's tokens
        check_cross_tokenizer_job(lm, args, tokenizer, student_tokenizer)
        check_layers(layers, num_layers(student))  # the student's own layers
        return student_tokenizer, tokenizer
    if layers is not None and lm.student_model_name_or_path:
        raise ValueError("--student_layers and --student_model_name_or_path are both set; pass one of them.")
    check_layers(layers, num_layers(teacher))
    depth, built_from = student_depth(layers, student, num_layers(teacher))
    check_layer_maps(args, depth, num_layers(teacher), built_from)
    if mode == "noisy_student":
        check_noisy_student(lm.student_dropout, student or teacher, args)
    if (
        mode in ("born_again", "noisy_student") and args.generations > 1
    ):  # later ones learn from a `depth`-layer student
        if (args.alpha_hidden > 0 or args.alpha_attention > 0) and "init" in (
            args.layer_map,
            args.attention_layer_map,
        ):
            raise ValueError(
                f"--layer_map init pairs the student with the teacher blocks it was built from, but {mode} "
                f"generations after the first learn from a student of {depth} blocks: set --layer_map uniform (the "
                "job's default with --generations > 1), or --alpha_hidden 0."
            )
        check_layer_maps(args, depth, depth)
    return tokenizer, None


def check_cross_tokenizer_job(lm, args, teacher_tokenizer, student_tokenizer) -> None:
    """A student whose tokenizer differs from the teacher's: frozen KD of the logits, aligned by text
    (:class:`hf_distill.teachers.CrossTokenizerTeacher`); what it cannot do yet is refused in one line, and so is a
    finished ``--teacher_cache_dir`` built for another pair of tokenizers."""
    from ..cross_tokenizer.spans import check_normalisation, check_offsets  # here: it imports torch
    from ..data.teacher_cache import CACHE_META_FILE, check_cache_tokenizers, read_meta

    check_offsets(teacher_tokenizer, "teacher")
    check_offsets(student_tokenizer, "student")
    check_normalisation(teacher_tokenizer, student_tokenizer)
    meta_path = os.path.join(lm.teacher_cache_dir or "", CACHE_META_FILE)
    if lm.teacher_cache_dir is not None and os.path.isfile(meta_path):
        check_cache_tokenizers(
            lm.teacher_cache_dir, read_meta(lm.teacher_cache_dir, meta_path), (teacher_tokenizer, student_tokenizer)
        )
    what = (
        f"--student_model_name_or_path {lm.student_model_name_or_path} has another tokenizer than the teacher "
        "(the job distils across tokenizers)"
    )
    refused = [
        (args.distill_mode != "frozen", f"--distill_mode {args.distill_mode}", "use --distill_mode frozen"),
        (args.alpha_hidden > 0, f"--alpha_hidden {args.alpha_hidden}", "the positions differ: set --alpha_hidden 0"),
        (args.alpha_attention > 0, f"--alpha_attention {args.alpha_attention}", "set --alpha_attention 0"),
        (args.seq_kd, "--seq_kd", "the teacher would write its own tokens: drop --seq_kd"),
        (
            lm.train_file is None and lm.dataset_name is None,
            f"--data_free_samples {lm.data_free_samples}",
            "the teacher's samples are in its own tokens: give --train_file or --dataset_name",
        ),
    ]
    for bad, flag, fix in refused:
        if bad:
            raise ValueError(f"{what}, which does not support {flag} yet; {fix}.")


def _check_lm_data(lm) -> list[str]:
    """The causal-LM job's data flags: one source of training data (or ``--data_free_samples``), files of a kind it
    reads, with text. Returns the training files."""
    if lm.train_file is not None and lm.dataset_name is not None:
        raise ValueError("--train_file and --dataset_name are both set; pass one of them.")
    check_dataset_name(lm.dataset_name)
    files = [lm.train_file] if isinstance(lm.train_file, str) else list(lm.train_file or [])
    for path in files:
        check_lm_file_type(path, "--train_file")
        check_text_file(path, "--train_file")
    if lm.train_file is None and lm.dataset_name is None and lm.data_free_samples < 1:
        raise ValueError("No training data: set --train_file or --dataset_name, or --data_free_samples N.")
    if lm.validation_split_percentage and not (len(files) == 1 and files[0].endswith(".txt")):
        raise ValueError(
            f"--validation_split_percentage {lm.validation_split_percentage} needs one .txt --train_file to hold "
            "out; drop it, or give a .txt file."
        )
    if not 0 <= lm.validation_split_percentage < 100:
        raise ValueError(
            f"--validation_split_percentage {lm.validation_split_percentage}: give a percentage from 0 to 99."
        )
    for entry in lm.validation_files:
        if os.path.exists(entry) or looks_local(entry) or not lm.dataset_name:
            check_text_file(entry, "--validation_files")
    if (
        lm.teacher_cache_dir is not None
        and os.path.exists(lm.teacher_cache_dir)
        and not os.path.isdir(lm.teacher_cache_dir)
    ):
        raise ValueError(f"--teacher_cache_dir {lm.teacher_cache_dir} is a file; pass a folder (created if missing).")
    return files


# what teaches the student in place of a teacher model, why a next-token loss must stay beside it
_OWN_STUDENT_TASK_LOSS = {
    "ema": "the average starts as the student, so the KD term alone gives it no gradient and nothing trains",
    "mutual": "the peers would only learn to agree with each other, never the text",
}


def _validate_causal_lm_own_student(lm, args):
    """``--distill_mode ema`` or ``mutual`` in the causal-LM job: no teacher to load; ``--student_model_name_or_path``
    (cut to ``--student_layers`` when given) is trained, and its moving average or its peers teach it. Returns its
    tokenizer."""
    mode, what = args.distill_mode, OWN_TEACHER[args.distill_mode]
    if args.teacher_model_name_or_path is not None:
        raise ValueError(
            f"--distill_mode {mode} takes no teacher (--teacher_model_name_or_path {args.teacher_model_name_or_path}):"
            f" its teacher is {what}. Drop it, or use --distill_mode frozen."
        )
    name, flag = lm.student_model_name_or_path, "--student_model_name_or_path"
    if not name:
        raise ValueError(
            f"Set --student_model_name_or_path: with --distill_mode {mode} that model is trained and {what} teaches "
            "it (--student_layers keeps some of its layers)."
        )
    if lm.teacher_cache_dir is not None:
        raise ValueError(
            f"--teacher_cache_dir {lm.teacher_cache_dir} caches a fixed teacher's log-probs, but with --distill_mode "
            f"{mode} the teacher is {what}: drop --teacher_cache_dir."
        )
    if lm.train_file is None and lm.dataset_name is None:
        raise ValueError(
            f"No training data: with --distill_mode {mode} there is no teacher to sample it from "
            "(--data_free_samples); set --train_file or --dataset_name."
        )
    if args.alpha_task == 0:
        raise ValueError(
            f"--alpha_task 0 with --distill_mode {mode}: {_OWN_STUDENT_TASK_LOSS[mode]}; set --alpha_task > 0 (the "
            "job's default in this mode is 0.5)."
        )
    if mode == "mutual" and lm.num_peers < 2:
        raise ValueError(
            f"--num_peers {lm.num_peers}: mutual learning needs at least 2 peers (the student and one more)."
        )
    if mode == "mutual" and lm.use_peft:
        raise ValueError(
            "--use_peft with --distill_mode mutual: the peers are trained whole, not as LoRA adapters; drop --use_peft."
        )
    check_train_budget(args.max_steps, args.num_train_epochs)
    check_output_and_resume(args)
    _check_lm_data(lm)
    check_overwrite_keeps_inputs(
        args.output_dir,
        args.overwrite_output_dir,
        [(flag, name), ("--dataset_name", lm.dataset_name), *[("--train_file", p) for p in [lm.train_file] if p],
         *[("--validation_files", path) for path in lm.validation_files]],
    )  # fmt: skip
    from ..models import config_dropout  # here: it imports torch

    config = load_model_config(name, flag, args.trust_remote_code)
    dropout = config_dropout(config) if lm.student_dropout is None else lm.student_dropout
    if mode == "mutual" and not dropout:
        raise ValueError(
            f"--distill_mode mutual: {name} has no dropout, so its copies (the peers) would see the same batches and "
            "stay equal; set --student_dropout, e.g. 0.1."
        )
    layers = parse_layers(lm.student_layers)
    check_layers(layers, num_layers(config))
    depth = len(layers) if layers is not None else num_layers(config)
    check_layer_maps(args, depth, depth)  # the average and the peers have the student's own layers
    return load_tokenizer(name, flag, config)


def teacher_weight_uses(lm, args) -> list[str]:
    """What the causal-LM job needs the teacher's weights for; empty when it trains from a finished top-k cache
    (``--teacher_cache_dir``) with a separate student and without scoring the teacher: its config and tokenizer are
    then all it reads of the teacher."""
    from ..data.teacher_cache import CACHE_META_FILE  # here: it imports torch

    cache = lm.teacher_cache_dir
    uses = []
    if lm.train_file is None and lm.dataset_name is None:
        uses.append("sample the training data from it (--data_free_samples)")
    if cache is not None and not os.path.isfile(os.path.join(cache, CACHE_META_FILE)):
        uses.append(f"build the top-k cache in {cache}")
    if args.distill_mode == "cotrain":
        uses.append("train it beside the student (--distill_mode cotrain)")
    if not lm.student_model_name_or_path:
        uses.append("build the student from its layers (--student_model_name_or_path takes a separate one)")
    if needs := args.live_teacher_needs(cached=cache is not None):
        uses.append(f"run it live, as {' and '.join(needs)} needs more than a top-k cache holds")
    if lm.eval_teacher:
        uses.append("score its perplexities (--eval_teacher false skips that)")
    return uses


def check_lm_student(name: str, teacher_tokenizer, trust_remote_code: bool = False):
    """``(config, tokenizer)`` of a causal-LM student (``--student_model_name_or_path``): its config, and its
    tokenizer when it differs from the teacher's (``None`` when it is the teacher's: the job then feeds both models
    the teacher's token ids, so the student needs as many embedding rows as the teacher has tokens). Refused when its
    config or tokenizer does not load."""
    from ..models import first_vocab_difference  # here: it imports torch

    flag = "--student_model_name_or_path"
    config = load_model_config(name, flag, trust_remote_code)
    tokenizer = load_tokenizer(name, flag, config)
    if first_vocab_difference(tokenizer, teacher_tokenizer) is not None:
        return config, tokenizer
    rows = getattr(config.get_text_config(), "vocab_size", None)
    if isinstance(rows, int) and rows < len(teacher_tokenizer):
        raise ValueError(
            f"{flag} {name} has {rows} embedding rows, fewer than the teacher's {len(teacher_tokenizer)} tokens; pass "
            "a student with the teacher's vocabulary."
        )
    return config, None
