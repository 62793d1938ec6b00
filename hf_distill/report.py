"""Compare a teacher with its distilled student: scores, size and latency, written as results.json, a table and a figure.

Typical use after training::

    results = build_results("sst2", "accuracy", teacher_trainer.evaluate(), trainer.evaluate(), teacher, student)
    write_report(results, "out/report", log_history=trainer.state.log_history)
"""

from __future__ import annotations

import inspect
import json
import numbers
import os
import statistics
import tempfile
import time

import torch

from .mapping import ADAPTERS_ATTR

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


def _timed_forward(model, batch: dict, device: torch.device) -> float:
    """Seconds for one forward pass; CUDA is synchronised on both sides so queued kernels are counted."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    model(**batch)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


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
    """Inference latency of one batch of random token ids, in eval mode under ``torch.inference_mode``.

    ``warmup`` untimed passes are followed by ``iters`` timed ones; the median is reported, which shrugs off the odd
    slow pass on a busy machine. The model's device and the training flag of every submodule are restored afterwards.

    Returns:
        ``{"latency_ms": median ms per batch, "throughput": samples per second (batch_size / median seconds),
        "batch_size", "seq_len", "device"}``.
    """
    for name, value, low in (
        ("batch_size", batch_size, 1),
        ("seq_len", seq_len, 1),
        ("iters", iters, 1),
        ("warmup", warmup, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r} must be an integer >= {low}.")
    device = _check_device(device)
    batch = {key: t.to(device) for key, t in _random_batch(model, batch_size, seq_len, vocab_size, seed).items()}
    first = next(model.parameters(), None)
    original_device = first.device if first is not None else None
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    model.to(device)
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                _timed_forward(model, batch, device)
            times = [_timed_forward(model, batch, device) for _ in range(iters)]
    finally:
        if original_device is not None:
            model.to(original_device)
        for module, training in modes:
            module.training = training
    median = statistics.median(times)
    return {
        "latency_ms": median * 1e3,
        "throughput": batch_size / median,
        "batch_size": batch_size,
        "seq_len": seq_len,
        "device": str(device),
    }


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
    extra: dict | None = None,
) -> dict:
    """Assemble the results.json object comparing teacher, student and optionally a student trained without KD.

    Each model entry holds its metrics (``eval_`` prefixes stripped), ``num_parameters``, ``size_mb`` and its CPU
    ``latency_ms`` / ``throughput``; ``speed`` holds the full :func:`measure_speed` output for every device.
    ``retention`` is ``student[metric] / teacher[metric]`` (``None`` when the teacher scores 0; above 1 means worse
    for lower-is-better metrics such as perplexity), ``speedup`` is teacher over student CPU latency and ``kd_gain``
    is ``student[metric] - student_no_kd[metric]``. Without ``baseline_model`` the no-KD student is taken to share
    the student's architecture, so its size and speed are the student's.
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
    clash = sorted(set(extra or {}) & {"task", "metric", "speed", "retention", "speedup", "kd_gain", *scores})
    if clash:
        raise ValueError(f"extra keys {clash} would overwrite report fields; rename them.")

    speed = {"batch_size": batch_size, "seq_len": seq_len}
    for device in devices:
        speed[device] = {}
        for role, model in models.items():
            if role == "student_no_kd" and baseline_model is None:
                speed[device][role] = speed[device]["student"]
            else:
                speed[device][role] = measure_speed(model, batch_size=batch_size, seq_len=seq_len, device=device)

    results = {"task": task, "metric": metric}
    for role, model in models.items():
        cpu = speed["cpu"][role]
        results[role] = {
            **scores[role],
            "num_parameters": count_parameters(model),
            "size_mb": size_on_disk_mb(model),
            "latency_ms": cpu["latency_ms"],
            "throughput": cpu["throughput"],
        }
    teacher, student = results["teacher"], results["student"]
    results["retention"] = student[metric] / teacher[metric] if teacher[metric] else None
    results["speedup"] = teacher["latency_ms"] / student["latency_ms"]
    if "student_no_kd" in results:
        results["kd_gain"] = student[metric] - results["student_no_kd"][metric]
    results["speed"] = speed
    results.update(extra or {})
    return results


# the size and speed columns of the table: results key, column title, scale, format
_COLUMNS = (
    ("num_parameters", "params (M)", 1e-6, ".2f"),
    ("size_mb", "size MB", 1.0, ".2f"),
    ("latency_ms", "latency ms", 1.0, ".2f"),
    ("throughput", "throughput/s", 1.0, ".1f"),
)


def _cell(value, scale: float, fmt: str) -> str:
    return "-" if value is None else format(value * scale, fmt)


def _summary_lines(results: dict) -> list[str]:
    metric, retention, speed = results["metric"], results.get("retention"), results.get("speed", {})
    lines = [f"retention: {'n/a' if retention is None else f'{retention * 100:.1f} %'} of the teacher's {metric}"]
    shape = f"batch {speed.get('batch_size')} x {speed.get('seq_len')} tokens"
    lines.append(f"speedup: {results['speedup']:.2f}x (CPU, {shape})")
    for device, by_role in speed.items():
        if device not in ("cpu", "batch_size", "seq_len"):
            t, s = by_role["teacher"]["latency_ms"], by_role["student"]["latency_ms"]
            lines.append(f"speedup on {device}: {t / s:.2f}x (teacher {t:.2f} ms, student {s:.2f} ms per batch)")
    if "kd_gain" in results:
        lines.append(f"kd_gain: {results['kd_gain']:+.4f} {metric} over the student trained without KD")
    return lines


def format_table(results: dict) -> str:
    """A fixed-width text table, one row per model and one column per metric, size and CPU speed; then
    retention, speedup (and kd_gain) lines."""
    metric = results["metric"]
    roles = [role for role in _ROLES if role in results]
    size_keys = {key for key, *_ in _COLUMNS}
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
    """Score versus CPU latency, one labelled marker per model."""
    metric = results["metric"]
    for role, label in _ROLES.items():
        if role not in results:
            continue
        entry = results[role]
        marker, color = _MARKERS[role]
        x, y = entry["latency_ms"], entry[metric]
        ax.scatter([x], [y], marker=marker, color=color, s=90, label=label, zorder=3)
        text = f"{label}\n{y:.3f}, {_human_count(entry['num_parameters'])} params"
        ax.annotate(text, (x, y), xytext=(8, 6), textcoords="offset points", fontsize=8)
    latencies = [results[role]["latency_ms"] for role in _ROLES if role in results]
    if max(latencies) > 10 * min(latencies):  # a 100x faster student would sit on the y axis of a linear plot
        ax.set_xscale("log")
    speed = results.get("speed", {})
    scale = ", log scale" if ax.get_xscale() == "log" else ""
    ax.set_xlabel(f"CPU latency (ms per batch of {speed.get('batch_size')} x {speed.get('seq_len')} tokens{scale})")
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
