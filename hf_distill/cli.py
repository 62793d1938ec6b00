"""The ``hf-distill`` command line: one subcommand per job, each with ``--config file.yaml`` and flag overrides."""

from __future__ import annotations

import sys

from transformers import HfArgumentParser

from .file_checks import error_line
from .launch import LAUNCH_FLAGS, add_launch_arguments, launch_if_asked
from .validation import load_config_file
from .version import __version__


def parse_with_config(
    dataclass_types, argv: list[str], prog: str, launch_flags: bool = False, defaults: dict | None = None
):
    """Parse ``argv`` into the dataclasses; ``--config file.yaml`` supplies defaults that flags override.

    Every dataclass field is a flag (``--help`` shows each with its help text); a YAML key that is no field is an
    error naming it. Local paths in the YAML file (``data_dir``, ``train_file``, ``validation_files``, model
    folders...) are relative to the YAML file's folder; those on the command line, and ``output_dir`` wherever it is
    given, are relative to the working directory (a job writes where it is run). ``launch_flags``: ``--help`` also
    lists ``--accelerate_config`` and ``--num_processes``, which `launch_if_asked` has taken out of ``argv`` before
    (command line only, no YAML keys). A parse error is a ``ValueError`` (one line), not argparse's usage text.
    ``defaults``: the job's own defaults of some fields, below the YAML file and the flags.
    """
    parser = HfArgumentParser(dataclass_types, prog=prog)
    parser.error = _parse_error  # one line instead of argparse's usage of every flag
    parser.add_argument("--config", default=None, help="YAML file of flag values; flags on the command line win.")
    if launch_flags:
        add_launch_arguments(parser)
    if defaults:
        parser.set_defaults(**defaults)
    config_path = None
    if "--config" in argv:
        i = argv.index("--config")
        if i + 1 >= len(argv):
            raise ValueError("--config needs a YAML file path.")
        config_path = argv[i + 1]
    elif any(a.startswith("--config=") for a in argv):
        config_path = next(a for a in argv if a.startswith("--config="))[len("--config=") :]
    if config_path:
        values = load_config_file(config_path)  # its local paths resolved against its own folder
        known = {action.dest for action in parser._actions} - set(LAUNCH_FLAGS.values())
        unknown = sorted(set(values) - known)
        launch_keys = sorted(set(unknown) & set(LAUNCH_FLAGS.values())) if launch_flags else []
        if launch_keys:
            raise ValueError(
                f"{config_path}: {launch_keys} are command-line flags only: pass --accelerate_config NAME_OR_PATH "
                "and/or --num_processes N on the command line."
            )
        if unknown:
            raise ValueError(f"{config_path}: unknown keys {unknown}; run with --help for the valid flags.")
        parser.set_defaults(**values)
    *parsed, rest = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if rest:
        raise ValueError(f"Unrecognised arguments {rest}; run with --help for the valid flags.")
    extra = parsed[len(dataclass_types)]  # a trailing namespace holds --config (and the launch flags' slots)
    given = [flag for flag, dest in LAUNCH_FLAGS.items() if getattr(extra, dest, None) is not None]
    if given:
        # `launch_if_asked` takes out only the full spellings; argparse would take `--num_proc 2` for
        # --num_processes here and drop it: the job would silently run on one process
        raise ValueError(f"Spell {', '.join(given)} out in full: an abbreviated launch flag starts no processes.")
    return parsed[: len(dataclass_types)]


def _parse_error(message: str):
    raise ValueError(f"{message}; run with --help for the valid flags.")


def _quickstart(argv: list[str]) -> int:
    from .recipes.quickstart import QuickstartArguments, run

    (args,) = parse_with_config([QuickstartArguments], argv, "hf-distill quickstart")
    run(
        output_dir=args.output_dir,
        steps=args.max_steps,
        seed=args.seed,
        overwrite_output_dir=args.overwrite_output_dir,
    )
    return 0


def _glue(argv: list[str]) -> int:
    code, argv = launch_if_asked("glue", argv)
    if code is not None:
        return code
    from .distillation_config import DistillationConfig
    from .recipes.glue import GlueArguments, run

    glue_args, args = parse_with_config(
        [GlueArguments, DistillationConfig], argv, "hf-distill glue", launch_flags=True
    )
    run(glue_args, args)
    return 0


def parse_causal_lm(argv: list[str]):
    """``(CausalLMArguments, DistillationConfig)`` of the causal-LM job, with the job's defaults (``JOB_DEFAULTS``)."""
    from .distillation_config import DistillationConfig
    from .recipes.causal_lm import JOB_DEFAULTS, OWN_STUDENT_DEFAULTS, SEPARATE_STUDENT_DEFAULTS, CausalLMArguments

    types, prog = [CausalLMArguments, DistillationConfig], "hf-distill causal-lm"
    # a first parse reads the mode and the student, which pick the defaults of the final parse; its next-token weight
    # is ema's and mutual's, so that no check on the other modes' alpha_task 0 (kd_delay_steps) refuses those two
    probe = {**JOB_DEFAULTS, "alpha_task": OWN_STUDENT_DEFAULTS["alpha_task"]}
    lm_args, args = parse_with_config(types, argv, prog, launch_flags=True, defaults=probe)
    # a student trained with its own average or peers needs the next-token loss beside theirs
    if args.distill_mode in ("ema", "mutual"):
        return parse_with_config(types, argv, prog, launch_flags=True, defaults=OWN_STUDENT_DEFAULTS)
    # a separate student has no teacher layers to match hidden states with; a cache run should not need the teacher
    defaults = JOB_DEFAULTS
    if lm_args.student_model_name_or_path or lm_args.teacher_cache_dir:
        defaults = SEPARATE_STUDENT_DEFAULTS
    # generations after the first learn from a student, not from the teacher it was built from
    if args.distill_mode in ("born_again", "noisy_student") and args.generations > 1:
        defaults = {**defaults, "layer_map": "uniform"}
    return parse_with_config(types, argv, prog, launch_flags=True, defaults=defaults)


def _causal_lm(argv: list[str]) -> int:
    code, argv = launch_if_asked("causal-lm", argv)
    if code is not None:
        return code
    from .recipes.causal_lm_job import run

    run(*parse_causal_lm(argv))
    return 0


def _push(argv: list[str]) -> int:
    from .publish import (
        PushArguments,
        check_files,
        check_student_folder,
        push_student,
        render_model_card,
        student_files,
    )

    if argv and not argv[0].startswith("-"):  # `hf-distill push out/sst2 --repo_id ...`
        argv = ["--folder", argv[0], *argv[1:]]
    (args,) = parse_with_config([PushArguments], argv, "hf-distill push")
    if args.folder is None or (args.repo_id is None and not args.dry_run):
        raise ValueError("usage: hf-distill push FOLDER --repo_id NAMESPACE/NAME [--private] [--revision BRANCH]")
    card = {"license": args.license} if args.license else {}
    if args.dry_run:
        check_student_folder(args.folder)
        files = student_files(args.folder, args.include_teacher)
        check_files(args.folder, files)
        print("would upload:", ", ".join(sorted({*files, "README.md"})))
        print(render_model_card(args.folder, args.repo_id, **card))
        return 0
    try:
        info = push_student(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            commit_message=args.commit_message,
            include_teacher=args.include_teacher,
            regenerate_card=args.regenerate_card,
            **card,
        )
    except RuntimeError as err:  # the Hub refused or the connection dropped: say so without a traceback
        print(f"hf-distill push: error: {err}", file=sys.stderr)
        return 1
    print(f"pushed {args.folder} to {info.repo_url} (commit {info.oid[:8]})")
    return 0


def _compare(argv: list[str]) -> int:
    from .recipes.glue import CompareArguments, compare

    (args,) = parse_with_config([CompareArguments], argv, "hf-distill compare")
    compare(args)
    return 0


COMMANDS = {
    "quickstart": (_quickstart, "distill a tiny BERT teacher on a synthetic task, end to end (no network)"),
    "glue": (_glue, "fine-tune (optionally) and distill a BERT-family teacher on a GLUE task, with a report"),
    "causal-lm": (_causal_lm, "distill a causal LM into a smaller one (chunked token-level KD), with perplexities"),
    "compare": (_compare, "score and time a teacher and a student on a GLUE task's dev split, with a report"),
    "push": (_push, "upload a distilled student (weights, config, tokenizer, report, model card) to the Hub"),
}


def split_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """``(debug, the other arguments)``: ``--debug`` before the command, or bare after it, shows tracebacks.

    After the command, ``--debug VALUE`` stays: it is ``TrainingArguments``' own flag (``underflow_overflow``...).
    """
    debug, rest = False, []
    for i, arg in enumerate(argv):
        bare = i + 1 == len(argv) or argv[i + 1].startswith("-")
        if arg == "--debug" and (not rest or bare):
            debug = True
        else:
            rest.append(arg)
    return debug, rest


def main(argv: list[str] | None = None) -> int:
    """Run ``hf-distill <command> [flags]``. An expected error (a ``ValueError``: a bad flag, path, file or folder) is
    one line on stderr and exit code 2; ``--debug`` raises it with its traceback instead."""
    argv = sys.argv[1:] if argv is None else argv
    debug, argv = split_debug(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"hf-distill {__version__}: knowledge distillation for Hugging Face models\n")
        print(
            "usage: hf-distill [--debug] <command> [--config file.yaml] [--flag value ...]  (hf-distill <command> --help)"
        )
        print("       an error is one line (exit code 2); --debug shows its traceback\n")
        print("commands:")
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<12} {help_text}")
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    if argv[0] not in COMMANDS:
        print(f"hf-distill: unknown command {argv[0]!r}; choose one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[argv[0]][0](argv[1:])
    except ValueError as err:
        if debug:
            raise
        print(f"hf-distill {argv[0]}: error: {error_line(err, first=False)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
