"""The causal-LM job's table: perplexities of the teacher and of the student before and after distillation."""

from __future__ import annotations

# results.json keys of the scored models, in table order
PERPLEXITY_ROLES = ("teacher", "student_before_training", "student")


def format_perplexities(results: dict) -> str:
    """A table of perplexities (rows: models, columns: validation texts) and parameter counts."""
    roles = [r for r in PERPLEXITY_ROLES if r in results]
    names = list(results[roles[0]]["perplexity"]) if roles else []
    header = f"{'model':<26}{'params':>12}" + "".join(f"{n[:24]:>26}" for n in names)
    lines = [header, "-" * len(header)]
    for role in roles:
        r = results[role]
        lines.append(
            f"{role:<26}{r['num_parameters'] / 1e6:>11.1f}M" + "".join(f"{r['perplexity'][n]:>26.2f}" for n in names)
        )
    return "\n".join(lines)
