"""Compare a teacher with its distilled student: scores, size and latency in one results object, and a text table.

Typical use after training (:func:`hf_distill.report.write_report` writes it with the figure)::

    results = build_results("sst2", "accuracy", teacher_trainer.evaluate(), trainer.evaluate(), teacher, student)
    print(format_table(results))
"""

from __future__ import annotations

import logging
import numbers
import os
import tempfile

import torch

from ..mapping import ADAPTERS_ATTR
from .speed import check_device, measure_speeds, speedup_stats, timing_warning

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


ROLES = {"teacher": "teacher", "student": "student", "student_no_kd": "student (no KD)"}


# the CPU speed of each model copied into its results entry, and the top-level speedup fields
_LATENCY_KEYS = ("latency_ms", "latency_ms_iqr", "latency_spread", "throughput")


_SPEEDUP_KEYS = ("speedup", "speedup_iqr", "speedup_spread", "timing_rounds")


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
        check_device(device)
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
                spreads[f"{prefix}{ROLES.get(role, role)} latency"] = entry["latency_spread"]
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
    roles = [role for role in ROLES if role in results]
    size_keys = {key for key, *_ in _COLUMNS} | set(_LATENCY_KEYS)
    metrics = [metric]
    for role in roles:
        metrics += [k for k in results[role] if k not in metrics and k not in size_keys]
    rows = [["model", *metrics, *(title for _, title, _, _ in _COLUMNS)]]
    for role in roles:
        entry = results[role]
        cells = [_cell(entry.get(m), 1.0, ".4f") for m in metrics]
        cells += [_cell(entry.get(key), scale, fmt) for key, _, scale, fmt in _COLUMNS]
        rows.append([ROLES[role], *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [f"task: {results.get('task')}   metric: {metric}"]
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    return "\n".join(lines + _summary_lines(results))
