"""The ``hf-distill`` command line: one subcommand per job."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _quickstart(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-distill quickstart", description="Distill a tiny BERT on a synthetic task (no network)."
    )
    parser.add_argument(
        "--output_dir", default="out/quickstart", help="Where the teacher, student and results.json go."
    )
    parser.add_argument(
        "--max_steps", type=int, default=150, help="Optimizer steps for the teacher and for the student."
    )
    parser.add_argument("--seed", type=int, default=0, help="Random seed.")
    args = parser.parse_args(argv)
    from .recipes.quickstart import run

    run(output_dir=args.output_dir, steps=args.max_steps, seed=args.seed)
    return 0


COMMANDS = {"quickstart": (_quickstart, "distill a tiny BERT teacher on a synthetic task, end to end")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(
            f"hf-distill {__version__}: knowledge distillation for Hugging Face models\n\nusage: hf-distill <command> [--help]\n\ncommands:"
        )
        for name, (_, help_text) in COMMANDS.items():
            print(f"  {name:<12} {help_text}")
        return 0
    if argv[0] == "--version":
        print(__version__)
        return 0
    if argv[0] not in COMMANDS:
        print(f"hf-distill: unknown command {argv[0]!r}; choose one of {sorted(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]][0](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
