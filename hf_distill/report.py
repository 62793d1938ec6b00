"""Compare a teacher with its distilled student: scores, size and latency, written as results.json, a table and a figure.

Typical use after training::

    results = build_results("sst2", "accuracy", teacher_trainer.evaluate(), trainer.evaluate(), teacher, student)
    write_report(results, "out/report", log_history=trainer.state.log_history)
"""

from __future__ import annotations

import inspect
import json
import logging
import numbers
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

import torch

from .mapping import ADAPTERS_ATTR

logger = logging.getLogger(__name__)

# Trainer.evaluate() bookkeeping that is not a quality metric (after the "eval_" prefix is removed)
_NON_METRICS = {
    "loss",
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "model_preparation_time",
    "epoch",
    "step",
    "total_flos",
}
_ROLES = {"teacher": "teacher", "student": "student", "student_no_kd": "student (no KD)"}
# the CPU speed of each model copied into its results entry, and the top-level speedup fields
_LATENCY_KEYS = ("latency_ms", "latency_ms_iqr", "latency_spread", "throughput")
_SPEEDUP_KEYS = ("speedup", "speedup_iqr", "speedup_spread", "timing_rounds")
_MARKERS = {"teacher": ("s", "tab:blue"), "student": ("o", "tab:orange"), "student_no_kd": ("^", "tab:gray")}


def count_parameters(model) -> int:
    """Number of parameters of ``model``, all of them (trainable or not); tied weights are counted once.

    The projection adapters a DistillationTrainer attaches for training are not part of the student: not counted.
    """
    return sum(p.numel() for name, p in model.named_parameters() if ADAPTERS_ATTR not in name)


def size_on_disk_mb(model) -> float:
    """Size of the saved weights in MB (1 MB = 1e6 bytes).

    The model is written with ``save_pretrained`` (safetensors, the only format transformers 5 writes) into a
    temporary directory and the ``*.safetensors`` files are summed, so config and tokenizer files are left out, the
    dtype counts (fp16 is half of fp32) and tied weights are stored once. A plain ``nn.Module`` without
    ``save_pretrained`` is written with ``safetensors.torch.save_model``.
    """
    with tempfile.TemporaryDirectory() as tmp:
        if hasattr(model, "save_pretrained"):
            model.save_pretrained(tmp)
        else:
            from safetensors.torch import save_model

            save_model(model, os.path.join(tmp, "model.safetensors"))
        total = sum(
            os.path.getsize(os.path.join(root, name))
            for root, _, names in os.walk(tmp)
            for name in names
            if name.endswith(".safetensors")
        )
    return total / 1e6


def _check_device(device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} but CUDA is not available here; use device='cpu'.")
    return device


def _random_batch(model, batch_size: int, seq_len: int, vocab_size: int | None, seed: int) -> dict:
    """Random token ids ``(batch_size, seq_len)``, an all-ones attention mask and, for BERT-like models, zero token types."""
    config = getattr(model, "config", None)
    vocab_size = vocab_size or getattr(config, "vocab_size", None)
    if not vocab_size:
        raise ValueError("The model has no config.vocab_size to draw token ids from; pass vocab_size=.")
    max_positions = getattr(config, "max_position_embeddings", None)
    if max_positions and seq_len > max_positions:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's max_position_embeddings={max_positions}; pass a smaller seq_len."
        )
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    accepts = inspect.signature(model.forward).parameters
    if getattr(config, "type_vocab_size", None) and "token_type_ids" in accepts:
        batch["token_type_ids"] = torch.zeros_like(input_ids)
    return batch


# a spread (interquartile range over median) above this means the timings say more about the machine's load than
# about the models: the report says so
NOISY_SPREAD = 0.25


def time_interleaved(
    fns: Sequence[Callable[[], object]],
    *,
    rounds: int = 11,
    warmup: int = 2,
    clock: Callable[[], float] = time.perf_counter,
) -> list[list[float]]:
    """Time ``fns`` interleaved: ``warmup`` untimed rounds, then ``rounds`` timed ones, each calling every fn once.

    Even rounds call ``fns`` in the given order and odd rounds in reverse, so a burst of load on a shared machine
    falls on every fn alike instead of on whichever ran during it, and no fn always follows the same other one.
    Each fn must block until its work is done (a CUDA forward ends with ``torch.cuda.synchronize``); ``clock`` is
    read before and after each call.

    Returns:
        ``times[i][r]``: seconds of ``fns[i]`` in timed round ``r``, shape ``(len(fns), rounds)``.
    """
    times = [[] for _ in fns]
    for r in range(warmup + rounds):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            start = clock()
            fns[i]()
            if r >= warmup:
                times[i].append(clock() - start)
    return times


def spread_stats(values: Sequence[float]) -> dict:
    """Median and spread of repeated measurements: ``{"median", "q1", "q3", "iqr": q3 - q1, "spread": iqr / median}``.

    Quartiles are ``statistics.quantiles(method="inclusive")``; one value has no spread (``iqr = 0``).
    """
    if not values:
        raise ValueError("spread_stats() needs at least one value; time at least one round.")
    median = statistics.median(values)
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else (median, 0, median)
    return {"median": median, "q1": q1, "q3": q3, "iqr": q3 - q1, "spread": (q3 - q1) / median if median else 0.0}


def timing_warning(spreads: dict[str, float], threshold: float = NOISY_SPREAD) -> str | None:
    """The warning to show when any timing's spread (IQR / median, by name) exceeds ``threshold``; ``None`` if none.

    ``{"teacher latency": 0.4, "student latency": 0.05} -> "the machine looks busy; timings are noisy (...)"``.
    """
    noisy = {name: value for name, value in spreads.items() if value > threshold}
    if not noisy:
        return None
    listed = ", ".join(f"{name} {value:.0%}" for name, value in sorted(noisy.items(), key=lambda kv: -kv[1]))
    return (
        f"the machine looks busy; timings are noisy (interquartile range over the median: {listed}, above "
        f"{threshold:.0%}); rerun on an idle machine before quoting latency or speedup."
    )


def _forward_fn(model, batch: dict, device: torch.device) -> Callable[[], None]:
    """One forward pass of ``batch``; on CUDA it waits for the queued kernels, so they are counted."""

    def forward():
        model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    return forward


def _latency_entry(seconds: list[float], batch_size: int, seq_len: int, device: torch.device) -> dict:
    stats = spread_stats([s * 1e3 for s in seconds])
    return {
        "latency_ms": stats["median"],
        "latency_ms_iqr": stats["iqr"],
        "latency_spread": stats["spread"],
        "throughput": batch_size / (stats["median"] / 1e3),
        "rounds_ms": [s * 1e3 for s in seconds],
        "batch_size": batch_size,
        "seq_len": seq_len,
        "device": str(device),
    }


def measure_speeds(
    models: dict,
    *,
    batch_size: int = 32,
    seq_len: int = 64,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    rounds: int = 11,
    vocab_size: int | None = None,
    seed: int = 0,
) -> dict[str, dict]:
    """Inference latency of several models on one batch of random token ids each, timed interleaved.

    Every model is put on ``device`` in eval mode under ``torch.inference_mode``; then :func:`time_interleaved` runs
    ``warmup`` untimed and ``rounds`` timed rounds of one forward per model, so load on the machine hits them all
    alike. The models' devices and every submodule's training flag are restored afterwards.

    Returns:
        by the keys of ``models``: ``{"latency_ms": median ms per batch, "latency_ms_iqr": interquartile range in ms,
        "latency_spread": iqr / median, "throughput": samples per second at the median, "rounds_ms": the ms of each
        timed round (round r of every model ran in the same round), "batch_size", "seq_len", "device"}``.
    """
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("seq_len", seq_len, 1),
        ("rounds", rounds, 1),
        ("warmup", warmup, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}.")
    device = _check_device(device)
    batches = {
        role: {key: t.to(device) for key, t in _random_batch(model, batch_size, seq_len, vocab_size, seed).items()}
        for role, model in models.items()
    }
    unique = list({id(model): model for model in models.values()}.values())  # one model may fill two roles
    placed = [(model, getattr(next(model.parameters(), None), "device", None)) for model in unique]
    modes = [(module, module.training) for model in unique for module in model.modules()]
    try:
        for model in unique:
            model.eval().to(device)
        fns = [_forward_fn(model, batches[role], device) for role, model in models.items()]
        if device.type == "cuda":  # the copies above finish before the first call is timed
            torch.cuda.synchronize(device)
        with torch.inference_mode():
            times = time_interleaved(fns, rounds=rounds, warmup=warmup)
    finally:
        for model, original_device in placed:
            if original_device is not None:
                model.to(original_device)
        for module, training in modes:
            module.training = training
    return {role: _latency_entry(seconds, batch_size, seq_len, device) for role, seconds in zip(models, times)}


def measure_speed(
    model,
    *,
    batch_size: int = 32,
    seq_len: int = 64,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    iters: int = 10,
    vocab_size: int | None = None,
    seed: int = 0,
) -> dict:
    """Inference latency of one model: :func:`measure_speeds` with ``rounds=iters`` (median and spread of ``iters``
    timed passes after ``warmup`` untimed ones). To compare models, time them together with :func:`measure_speeds`.
    """
    if not isinstance(iters, int) or isinstance(iters, bool) or iters < 1:
        raise ValueError(f"iters={iters!r} must be an integer >= 1.")
    return measure_speeds(
        {"model": model},
        batch_size=batch_size,
        seq_len=seq_len,
        device=device,
        warmup=warmup,
        rounds=iters,
        vocab_size=vocab_size,
        seed=seed,
    )["model"]


def speedup_stats(teacher: dict, student: dict) -> dict:
    """The teacher's latency over the student's, per timed round, summarised by :func:`spread_stats`.

    ``teacher`` and ``student`` are :func:`measure_speeds` entries of one call, so round ``r`` of both ran together.
    """
    ratios = [t / s for t, s in zip(teacher["rounds_ms"], student["rounds_ms"])]
    return spread_stats(ratios)


def _clean_scores(scores: dict, role: str) -> dict:
    """``Trainer.evaluate()`` output -> metrics by their usual name: ``eval_`` removed, runtime/loss/epoch dropped."""
    if not isinstance(scores, dict):
        raise ValueError(
            f"{role} scores must be a dict such as Trainer.evaluate() returns, got {type(scores).__name__}."
        )
    cleaned = {}
    for key, value in scores.items():
        name = key.removeprefix("eval_")
        if name in _NON_METRICS or name.startswith("loss/"):
            continue
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        cleaned[name] = float(value)
    return cleaned


def _check_devices(devices) -> list[str]:
    if devices is None:
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = [str(d) for d in devices]
    if "cpu" not in devices:
        raise ValueError(f"devices={devices} must include 'cpu': latency_ms and speedup are reported on CPU.")
    for device in devices:
        _check_device(device)
    return devices


def build_results(
    task: str,
    metric: str,
    teacher_scores: dict,
    student_scores: dict,
    teacher_model,
    student_model,
    *,
    baseline_scores: dict | None = None,
    baseline_model=None,
    batch_size: int = 32,
    seq_len: int = 64,
    devices: list[str] | None = None,
    rounds: int = 11,
    warmup: int = 2,
    extra: dict | None = None,
) -> dict:
    """Assemble the results.json object comparing teacher, student and optionally a student trained without KD.

    Each model entry holds its metrics (``eval_`` prefixes stripped), ``num_parameters``, ``size_mb`` and its CPU
    speed: ``latency_ms`` (median), ``latency_ms_iqr``, ``latency_spread`` (IQR / median) and ``throughput``. The
    models are timed together, interleaved over ``rounds`` rounds (:func:`measure_speeds`); ``speed`` holds every
    device's full measurement, each round's ms included. ``retention`` is ``student[metric] / teacher[metric]``
    (``None`` when the teacher scores 0; above 1 means worse for lower-is-better metrics such as perplexity);
    ``speedup`` is the median over rounds of the teacher's CPU latency over the student's in the same round, with
    ``speedup_iqr`` and ``speedup_spread``; ``timing_rounds`` is ``rounds``; ``kd_gain`` is
    ``student[metric] - student_no_kd[metric]``. Without ``baseline_model`` the no-KD student is taken to share the
    student's architecture, so its size and speed are the student's. A wide spread (a busy machine) is logged as a
    warning, and :func:`format_table` repeats it.
    """
    metric = metric.removeprefix("eval_")
    devices = _check_devices(devices)
    scores = {"teacher": _clean_scores(teacher_scores, "teacher"), "student": _clean_scores(student_scores, "student")}
    models = {"teacher": teacher_model, "student": student_model}
    if baseline_scores is not None:
        scores["student_no_kd"] = _clean_scores(baseline_scores, "baseline")
        models["student_no_kd"] = baseline_model if baseline_model is not None else student_model
    elif baseline_model is not None:
        raise ValueError("baseline_model was given without baseline_scores; pass the no-KD student's scores too.")
    for role, role_scores in scores.items():
        if metric not in role_scores:
            raise ValueError(
                f"metric={metric!r} is not among the {role} scores {sorted(role_scores)}; pass one of those."
            )
    reserved = {"task", "metric", "speed", "retention", "kd_gain", *_SPEEDUP_KEYS, *scores}
    clash = sorted(set(extra or {}) & reserved)
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite report fields; rename them.")

    timed = {role: model for role, model in models.items() if role != "student_no_kd" or baseline_model is not None}
    speed = {"batch_size": batch_size, "seq_len": seq_len, "rounds": rounds, "warmup": warmup}
    for device in devices:
        by_role = measure_speeds(
            timed, batch_size=batch_size, seq_len=seq_len, device=device, rounds=rounds, warmup=warmup
        )
        if "student_no_kd" in models and "student_no_kd" not in by_role:
            by_role["student_no_kd"] = by_role["student"]
        by_role["speedup"] = speedup_stats(by_role["teacher"], by_role["student"])
        speed[device] = by_role

    results = {"task": task, "metric": metric}
    for role, model in models.items():
        cpu = speed["cpu"][role]
        results[role] = {
            **scores[role],
            "num_parameters": count_parameters(model),
            "size_mb": size_on_disk_mb(model),
            **{key: cpu[key] for key in _LATENCY_KEYS},
        }
    teacher, student = results["teacher"], results["student"]
    results["retention"] = student[metric] / teacher[metric] if teacher[metric] else None
    ratio = speed["cpu"]["speedup"]
    results.update(speedup=ratio["median"], speedup_iqr=ratio["iqr"], speedup_spread=ratio["spread"])
    results["timing_rounds"] = rounds
    if "student_no_kd" in results:
        results["kd_gain"] = student[metric] - results["student_no_kd"][metric]
    results["speed"] = speed
    results.update(extra or {})
    warning = timing_warning(_timing_spreads(results))
    if warning:
        logger.warning(warning)
    return results


def _timing_spreads(results: dict) -> dict[str, float]:
    """Every spread (IQR / median) in a results object, by a readable name such as ``"cuda teacher latency"``."""
    spreads = {}
    for device, by_role in results.get("speed", {}).items():
        if not isinstance(by_role, dict):
            continue
        prefix = "" if device == "cpu" else f"{device} "
        for role, entry in by_role.items():
            if role == "speedup":
                spreads[f"{prefix}speedup"] = entry["spread"]
            elif "latency_spread" in entry:
                spreads[f"{prefix}{_ROLES.get(role, role)} latency"] = entry["latency_spread"]
    return spreads


# the size and speed columns of the table: results key, column title, scale, format
_COLUMNS = (
    ("num_parameters", "params (M)", 1e-6, ".2f"),
    ("size_mb", "size MB", 1.0, ".2f"),
    ("latency_ms", "latency ms", 1.0, ".2f"),
    ("latency_spread", "IQR/median", 1.0, ".0%"),
    ("throughput", "throughput/s", 1.0, ".1f"),
)


def _cell(value, scale: float, fmt: str) -> str:
    return "-" if value is None else format(value * scale, fmt)


def _speedup_text(speedup: float, iqr: float | None, rounds: int | None) -> str:
    if iqr is None:  # a results file from before interleaved timing
        return f"{speedup:.2f}x"
    return f"{speedup:.2f}x (median of {rounds} interleaved rounds, IQR {iqr:.2f}x = {iqr / speedup:.0%})"


def _summary_lines(results: dict) -> list[str]:
    metric, retention, speed = results["metric"], results.get("retention"), results.get("speed", {})
    lines = [f"retention: {'n/a' if retention is None else f'{retention * 100:.1f} %'} of the teacher's {metric}"]
    shape = f"batch {speed.get('batch_size')} x {speed.get('seq_len')} tokens"
    rounds = results.get("timing_rounds")
    speedup = _speedup_text(results["speedup"], results.get("speedup_iqr"), rounds)
    lines.append(f"speedup: {speedup}, CPU, {shape}")
    for device, by_role in speed.items():
        if isinstance(by_role, dict) and device != "cpu":
            t, s = by_role["teacher"]["latency_ms"], by_role["student"]["latency_ms"]
            ratio = by_role.get("speedup") or {"median": t / s, "iqr": None}
            lines.append(
                f"speedup on {device}: {_speedup_text(ratio['median'], ratio['iqr'], rounds)} "
                f"(teacher {t:.2f} ms, student {s:.2f} ms per batch)"
            )
    if "kd_gain" in results:
        lines.append(f"kd_gain: {results['kd_gain']:+.4f} {metric} over the student trained without KD")
    warning = timing_warning(_timing_spreads(results))
    if warning:
        lines.append(f"warning: {warning}")
    return lines


def format_table(results: dict) -> str:
    """A fixed-width text table, one row per model and one column per metric, size and CPU speed; then
    retention, speedup (and kd_gain) lines."""
    metric = results["metric"]
    roles = [role for role in _ROLES if role in results]
    size_keys = {key for key, *_ in _COLUMNS} | set(_LATENCY_KEYS)
    metrics = [metric]
    for role in roles:
        metrics += [k for k in results[role] if k not in metrics and k not in size_keys]
    rows = [["model", *metrics, *(title for _, title, _, _ in _COLUMNS)]]
    for role in roles:
        entry = results[role]
        cells = [_cell(entry.get(m), 1.0, ".4f") for m in metrics]
        cells += [_cell(entry.get(key), scale, fmt) for key, _, scale, fmt in _COLUMNS]
        rows.append([_ROLES[role], *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"task: {results.get('task')}   metric: {metric}"]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines + _summary_lines(results))


def _human_count(n: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(n)


def _plot_tradeoff(ax, results: dict) -> None:
    """Score versus median CPU latency, one labelled marker per model, a bar over its interquartile range."""
    metric = results["metric"]
    cpu = results.get("speed", {}).get("cpu", {})
    for role, label in _ROLES.items():
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
    latencies = [results[role]["latency_ms"] for role in _ROLES if role in results]
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


def _draw_figure(results: dict, log_history: list[dict] | None, title: str | None, path: str) -> None:
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


def _to_json(value):
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    raise ValueError(
        f"results value {value!r} ({type(value).__name__}) cannot be written to JSON; pass plain numbers."
    )


def write_report(
    results: dict, output_dir: str, log_history: list[dict] | None = None, title: str | None = None
) -> dict:
    """Write ``results.json`` and ``report.png`` into ``output_dir``, print :func:`format_table`, return both paths.

    ``log_history`` is ``trainer.state.log_history``; its ``loss/...`` terms become the training curves.
    """
    text = json.dumps(results, indent=2, default=_to_json)
    os.makedirs(output_dir, exist_ok=True)
    results_path = os.path.join(output_dir, "results.json")
    with open(results_path, "w") as f:
        f.write(text + "\n")
    figure_path = os.path.join(output_dir, "report.png")
    _draw_figure(results, log_history, title, figure_path)
    print(format_table(results))
    return {"results": results_path, "figure": figure_path}
