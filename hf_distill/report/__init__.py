"""The report of every job: ``results.json`` (through :func:`write_results`), a text table, and for a teacher-student
comparison (the GLUE job, ``hf-distill compare``, the quickstart) scores, size, latency and ``report.png``.

Typical use after training::

    results = build_results("sst2", "accuracy", teacher_trainer.evaluate(), trainer.evaluate(), teacher, student)
    write_report(results, "out/report", log_history=trainer.state.log_history)
"""

from .perplexity import format_perplexities
from .results import build_results, count_parameters, format_table, size_on_disk_mb
from .speed import (
    NOISY_SPREAD,
    measure_speed,
    measure_speeds,
    speedup_stats,
    spread_stats,
    time_interleaved,
    timing_warning,
)
from .write import write_report, write_results

__all__ = [
    "NOISY_SPREAD",
    "build_results",
    "count_parameters",
    "format_perplexities",
    "format_table",
    "measure_speed",
    "measure_speeds",
    "size_on_disk_mb",
    "speedup_stats",
    "spread_stats",
    "time_interleaved",
    "timing_warning",
    "write_report",
    "write_results",
]
