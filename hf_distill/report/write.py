"""Write a job's report into its output folder: ``results.json`` for every job, ``report.png`` where there is a
teacher-student comparison."""

from __future__ import annotations

import json
import os

from ..constants import RESULTS_FILE
from .figure import draw_figure
from .results import format_table


def _to_json(value):
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    raise ValueError(
        f"results value {value!r} ({type(value).__name__}) cannot be written to JSON; pass plain numbers."
    )


def write_results(results: dict, output_dir: str) -> str:
    """Write ``results`` as ``output_dir/results.json`` (indented; numpy and torch values as plain numbers and lists);
    returns its path. Every job writes its results through here."""
    text = json.dumps(results, indent=2, default=_to_json)
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_FILE)
    with open(path, "w") as f:
        f.write(text + "\n")
    return path


def write_report(
    results: dict, output_dir: str, log_history: list[dict] | None = None, title: str | None = None
) -> dict:
    """Write ``results.json`` and ``report.png`` into ``output_dir``, print :func:`format_table`, return both paths.

    ``log_history`` is ``trainer.state.log_history``; its ``loss/...`` terms become the training curves.
    """
    results_path = write_results(results, output_dir)
    figure_path = os.path.join(output_dir, "report.png")
    draw_figure(results, log_history, title, figure_path)
    print(format_table(results))
    return {"results": results_path, "figure": figure_path}
