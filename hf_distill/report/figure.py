"""The report figure: score against CPU latency for each model, and the training loss terms over the steps."""

from __future__ import annotations

import numbers

from .results import ROLES
from .speed import spread_stats

_MARKERS = {"teacher": ("s", "tab:blue"), "student": ("o", "tab:orange"), "student_no_kd": ("^", "tab:gray")}


def _human_count(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def _plot_tradeoff(ax, results: dict) -> None:
    """Score versus median CPU latency, one labelled marker per model, a bar over its interquartile range."""
    metric = results["metric"]
    cpu = results.get("speed", {}).get("cpu", {})
    for role, label in ROLES.items():
        if role not in results:
            continue
        entry = results[role]
        marker, color = _MARKERS[role]
        x, y = entry["latency_ms"], entry[metric]
        ax.scatter([x], [y], marker=marker, color=color, s=90, label=label, zorder=3)
        if cpu.get(role, {}).get("rounds_ms"):
            stats = spread_stats(cpu[role]["rounds_ms"])
            ax.errorbar([x], [y], xerr=[[x - stats["q1"]], [stats["q3"] - x]], fmt="none", color=color, capsize=3)
        text = f"{label}\n{y:.3f}, {_human_count(entry['num_parameters'])} params"
        ax.annotate(text, (x, y), xytext=(8, 6), textcoords="offset points", fontsize=8)
    latencies = [results[role]["latency_ms"] for role in ROLES if role in results]
    if max(latencies) > 10 * min(latencies):  # a 100x faster student would sit on the y axis of a linear plot
        ax.set_xscale("log")
    speed = results.get("speed", {})
    scale = ", log scale" if ax.get_xscale() == "log" else ""
    shape = f"{speed.get('batch_size')} x {speed.get('seq_len')} tokens"
    ax.set_xlabel(f"median CPU latency, bar: interquartile range (ms per batch of {shape}{scale})")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs latency")
    ax.margins(x=0.35, y=0.3)
    if ax.get_xscale() == "linear":
        ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)


def _loss_curves(log_history: list[dict] | None) -> dict[str, tuple[list, list]]:
    """Training loss terms by name -> (steps, values); the total ``loss`` only when no ``loss/...`` terms are logged."""
    entries = [e for e in log_history or [] if "step" in e]
    names = []
    for entry in entries:
        names += [k for k in entry if k.startswith("loss/") and k not in names]
    if not names and any("loss" in e for e in entries):
        names = ["loss"]
    curves = {}
    for name in names:
        points = [(e["step"], e[name]) for e in entries if isinstance(e.get(name), numbers.Real)]
        curves[name] = ([p[0] for p in points], [p[1] for p in points])
    return curves


def _plot_losses(ax, log_history: list[dict] | None) -> None:
    """One line per logged loss term over training steps; log-scale y when every value is positive."""
    ax.set_title("training losses")
    curves = _loss_curves(log_history)
    if not curves:
        ax.text(0.5, 0.5, "no training log", ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    for name, (steps, values) in curves.items():
        ax.plot(steps, values, marker=".", label=name)
    if all(v > 0 for _, values in curves.values() for v in values):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)


def draw_figure(results: dict, log_history: list[dict] | None, title: str | None, path: str) -> None:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError("write_report draws report.png with matplotlib: pip install 'hf-distill[report]'.") from err
    # Figure + Agg canvas rather than pyplot: no display needed and the global backend is left alone
    fig = Figure(figsize=(12, 4.8), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    _plot_tradeoff(left, results)
    _plot_losses(right, log_history)
    fig.suptitle(title or f"{results.get('task')}: teacher vs distilled student")
    fig.savefig(path)
