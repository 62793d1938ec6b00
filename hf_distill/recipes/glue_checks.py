"""The GLUE job's input checks (``hf-distill glue``, ``hf-distill compare``), run before any model is loaded or
trained; each refusal is one line (``ValueError``) naming the bad value and the fix. The checks they gather are in
:mod:`hf_distill.validation`."""

from __future__ import annotations

from ..validation import (
    check_glue_data_dir,
    check_label_head,
    check_layer_maps,
    check_layers,
    check_no_column_maps,
    check_output_and_resume,
    check_output_dir,
    check_overwrite_keeps_inputs,
    check_teacher_budget,
    check_train_budget,
    load_model_config,
    load_tokenizer,
    num_layers,
    parse_layers,
    student_depth,
)


def validate_glue_job(glue_args, args):
    """Check every input of the GLUE job (``GlueArguments``, ``DistillationConfig``) before anything is trained;
    returns the teacher's tokenizer, checked against its embedding rows."""
    from ..tasks import get_task

    check_no_column_maps(args, "glue")
    if args.distill_mode in OWN_TEACHER:
        return _validate_glue_own_student(glue_args, args, get_task(glue_args.task_name))
    if args.distill_mode == "cotrain":
        _refuse_teacher_flags(
            glue_args, "with --distill_mode cotrain: the teacher is fine-tuned in the same loop as the student and "
            "changes every step"
        )  # fmt: skip
    if args.teacher_model_name_or_path is None:
        raise ValueError(
            "Set --teacher_model_name_or_path (a fine-tuned teacher, or a base model with --finetune_teacher)."
        )
    task = get_task(glue_args.task_name)
    check_train_budget(args.max_steps, args.num_train_epochs)
    if glue_args.finetune_teacher:
        check_teacher_budget(glue_args.teacher_max_steps, glue_args.teacher_num_train_epochs)
    check_output_and_resume(args)
    generations = args.distill_mode in ("born_again", "noisy_student")
    if generations:
        _check_generations(glue_args, args)
    layers = parse_layers(glue_args.student_layers)
    own = layers is not None and glue_args.student_model_name_or_path  # generations: the student's own layers
    if own and not generations:
        raise ValueError("--student_layers and --student_model_name_or_path are both set; pass one of them.")
    # the job loads its teacher with use_safetensors=True
    teacher = _load_config(
        args.teacher_model_name_or_path, "--teacher_model_name_or_path", args, safetensors_only=True
    )
    check_label_head(teacher, task, args.teacher_model_name_or_path, "--teacher_model_name_or_path",
                     trained=glue_args.finetune_teacher or args.distill_mode == "cotrain")  # fmt: skip
    student = None
    if glue_args.student_model_name_or_path:
        flag = "--student_model_name_or_path"
        student = _load_config(glue_args.student_model_name_or_path, flag, args)
        check_label_head(student, task, glue_args.student_model_name_or_path, flag, trained=True)
    if args.distill_mode == "noisy_student":
        check_noisy_student(glue_args.student_dropout, student or teacher, args)
    check_layers(layers, num_layers(student if own else teacher))
    depth, built_from = (len(layers), None) if own else student_depth(layers, student, num_layers(teacher))
    check_layer_maps(args, depth, num_layers(teacher), built_from)
    check_glue_data_dir(glue_args.data_dir, task)
    check_overwrite_keeps_inputs(
        args.output_dir,
        args.overwrite_output_dir,
        [("--teacher_model_name_or_path", args.teacher_model_name_or_path),
         ("--student_model_name_or_path", glue_args.student_model_name_or_path),
         ("--data_dir", glue_args.data_dir), ("--cache_dir", glue_args.cache_dir)],
    )  # fmt: skip
    tokenizer = load_tokenizer(args.teacher_model_name_or_path, "--teacher_model_name_or_path", teacher)
    if glue_args.student_model_name_or_path:  # it reads the teacher's token ids
        rows = getattr(student.get_text_config(), "vocab_size", None)
        if isinstance(rows, int) and rows < len(tokenizer):
            raise ValueError(
                f"--student_model_name_or_path {glue_args.student_model_name_or_path} has {rows} embedding rows, "
                f"fewer than the teacher's {len(tokenizer)} tokens; pass a student with the teacher's vocabulary."
            )
    return tokenizer


def _check_generations(glue_args, args) -> None:
    """``--distill_mode born_again`` or ``noisy_student`` trains generations one after another, each with another
    teacher (a resumed run is refused by ``DistillationConfig``); a noisy student self-trains on text the teacher
    labels."""
    if glue_args.teacher_cache:
        raise ValueError(
            f"--teacher_cache {glue_args.teacher_cache} caches one teacher, but each {args.distill_mode} generation "
            "has another (the one before it): drop --teacher_cache."
        )
    if args.distill_mode != "noisy_student":
        return
    if not (glue_args.unlabelled_train_samples or glue_args.augment_prob):
        raise ValueError(
            "--distill_mode noisy_student self-trains on text the teacher labels, but there is none: set "
            "--unlabelled_train_samples N (unlabelled sentences) and/or --augment_prob p (noised copies)."
        )


def check_noisy_student(student_dropout, source, args) -> None:
    """``--distill_mode noisy_student``: the student learns the teacher's soft targets (``--alpha_logits`` > 0) with
    dropout as its model noise: ``--student_dropout`` > 0, or unset on a ``source`` config that has some."""
    from ..models import config_dropout  # here: it imports torch

    if args.alpha_logits <= 0:
        raise ValueError(
            f"--alpha_logits {args.alpha_logits}: a noisy student learns the teacher's soft targets on unlabelled "
            "text; set --alpha_logits > 0."
        )
    if student_dropout == 0:
        raise ValueError(
            "--student_dropout 0: a noisy student trains with dropout as its model noise; set --student_dropout > 0 "
            "(e.g. 0.1), or leave it unset for the model's own."
        )
    if student_dropout is None and config_dropout(source) == 0:
        raise ValueError(
            f"The student's config ({type(source).__name__}) has no dropout, a noisy student's model noise: set "
            "--student_dropout > 0 (e.g. 0.1)."
        )


# the modes of the GLUE job without a teacher model: what teaches the student instead
OWN_TEACHER = {
    "ema": "the moving average of the student's own weights, which changes every step",
    "mutual": "the other peers, copies of the student trained with it",
}


def _refuse_teacher_flags(glue_args, why: str) -> None:
    """One line on ``--finetune_teacher`` or ``--teacher_cache``, set where a mode has no fixed teacher: ``<flag>
    <value> <why>; drop <flag>.``"""
    for flag, value in (
        ("--finetune_teacher", glue_args.finetune_teacher),
        ("--teacher_cache", glue_args.teacher_cache),
    ):
        if value:
            raise ValueError(f"{flag} {value} {why}: drop {flag}.")


def _validate_glue_own_student(glue_args, args, task):
    """``--distill_mode ema`` or ``mutual``: no teacher to load or fine-tune; the student
    (``--student_model_name_or_path``, cut to ``--student_layers`` when given) is trained, and its moving average or
    its peers teach it. Returns its tokenizer."""
    mode, what = args.distill_mode, OWN_TEACHER[args.distill_mode]
    if args.teacher_model_name_or_path is not None:
        raise ValueError(
            f"--distill_mode {mode} takes no teacher (--teacher_model_name_or_path {args.teacher_model_name_or_path}):"
            f" its teacher is {what}. Drop it, or use --distill_mode frozen."
        )
    if not glue_args.student_model_name_or_path:
        raise ValueError(
            f"Set --student_model_name_or_path: with --distill_mode {mode} that model is trained and {what} teaches "
            "it (--student_layers keeps some of its layers)."
        )
    _refuse_teacher_flags(glue_args, f"has no teacher to act on with --distill_mode {mode} (the teacher is {what})")
    if mode == "mutual" and glue_args.num_peers < 2:
        raise ValueError(
            f"--num_peers {glue_args.num_peers}: mutual learning needs at least 2 peers (the student and one more)."
        )
    check_train_budget(args.max_steps, args.num_train_epochs)
    check_output_and_resume(args)
    name, flag = glue_args.student_model_name_or_path, "--student_model_name_or_path"
    student = _load_config(name, flag, args)
    check_label_head(student, task, name, flag, trained=True)
    layers = parse_layers(glue_args.student_layers)
    check_layers(layers, num_layers(student))
    depth = len(layers) if layers is not None else num_layers(student)
    check_layer_maps(args, depth, depth)  # the average and the peers have the student's own layers
    check_glue_data_dir(glue_args.data_dir, task)
    check_overwrite_keeps_inputs(
        args.output_dir,
        args.overwrite_output_dir,
        [(flag, name), ("--data_dir", glue_args.data_dir), ("--cache_dir", glue_args.cache_dir)],
    )
    return load_tokenizer(name, flag, student)


def _load_config(name: str, flag: str, args, safetensors_only: bool = False):
    return load_model_config(name, flag, getattr(args, "trust_remote_code", False), safetensors_only)


def validate_compare_job(cmp):
    """Check the inputs of ``hf-distill compare`` (``CompareArguments``); returns the student's tokenizer."""
    from ..tasks import get_task

    for name in ("teacher_model_name_or_path", "student_model_name_or_path"):
        if not getattr(cmp, name):
            raise ValueError(f"Set --{name}.")
    task = get_task(cmp.task_name)
    check_output_dir(cmp.output_dir, cmp.overwrite_output_dir, resume=None, resumable=False)
    configs = {}
    for role in ("teacher", "student"):
        name, flag = getattr(cmp, f"{role}_model_name_or_path"), f"--{role}_model_name_or_path"
        configs[role] = load_model_config(name, flag, safetensors_only=True)  # loaded with use_safetensors=True
        check_label_head(configs[role], task, name, flag, trained=False, can_finetune=False)
    check_glue_data_dir(cmp.data_dir, task)
    check_overwrite_keeps_inputs(
        cmp.output_dir,
        cmp.overwrite_output_dir,
        [(f"--{name}", getattr(cmp, name)) for name in ("teacher_model_name_or_path", "student_model_name_or_path",
                                                         "data_dir")],
    )  # fmt: skip
    return load_tokenizer(cmp.student_model_name_or_path, "--student_model_name_or_path", configs["student"])
