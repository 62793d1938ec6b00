"""Time models fairly on a shared machine: interleaved rounds, medians and interquartile ranges, a busy-machine warning.

Typical use::

    speeds = measure_speeds({"teacher": teacher, "student": student}, batch_size=32, seq_len=64)
    speedup_stats(speeds["teacher"], speeds["student"])["median"]
"""

from __future__ import annotations

import inspect
import statistics
import time
from collections.abc import Callable, Sequence

import torch


def check_device(device) -> torch.device:
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
    device = check_device(device)
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
