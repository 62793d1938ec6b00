"""report: parameter counts, on-disk size, latency measurement, results.json, the text table and the figure."""

from __future__ import annotations

import json
import logging
import os
import statistics

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2, tiny_llama

from hf_distill.report import (
    build_results,
    count_parameters,
    format_table,
    measure_speed,
    measure_speeds,
    size_on_disk_mb,
    speed,
    speedup_stats,
    spread_stats,
    time_interleaved,
    timing_warning,
    write_report,
    write_results,
)

TEACHER_SCORES = {
    "eval_loss": 0.31,
    "eval_accuracy": 0.90,
    "eval_f1": 0.88,
    "eval_runtime": 1.5,
    "eval_samples_per_second": 600.0,
    "eval_steps_per_second": 5.0,
    "eval_loss/task": 0.2,
    "epoch": 3.0,
}
STUDENT_SCORES = {"eval_loss": 0.4, "eval_accuracy": 0.855, "eval_f1": 0.80, "eval_runtime": 0.7, "epoch": 3.0}
BASELINE_SCORES = {"eval_accuracy": 0.81, "eval_f1": 0.75, "eval_loss": 0.5}
SMALL = {"batch_size": 4, "seq_len": 16, "devices": ["cpu"]}


def _log_history(steps=8):
    """What DistillationTrainer logs: per-term train losses with a step, plus an eval entry."""
    log = [
        {"loss": 2.0 / s, "loss/task": 0.7 / s, "loss/logits": 1.0 / s, "loss/hidden": 0.3 / s, "step": 5 * s}
        for s in range(1, steps + 1)
    ]
    return log + [{"eval_loss": 0.4, "eval_loss/task": 0.3, "eval_accuracy": 0.8, "step": 5 * steps}]


@pytest.fixture(scope="module")
def models():
    return tiny_bert(num_layers=4), tiny_bert(num_layers=2, seed=1), tiny_bert(num_layers=2, seed=2)


@pytest.fixture(scope="module")
def results(models):
    teacher, student, baseline = models
    return build_results(
        "sst2",
        "accuracy",
        TEACHER_SCORES,
        STUDENT_SCORES,
        teacher,
        student,
        baseline_scores=BASELINE_SCORES,
        baseline_model=baseline,
        extra={"teacher_name": "tiny-bert-4l"},
        rounds=3,
        **SMALL,
    )


# ---- size ----


@pytest.mark.parametrize("factory", [tiny_bert, tiny_llama, tiny_gpt2])
def test_count_parameters_counts_every_parameter_once(factory):
    model = factory()
    model.get_input_embeddings().weight.requires_grad_(False)  # frozen parameters count too
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    assert count_parameters(model) == model.num_parameters()


def test_size_on_disk_is_four_bytes_per_fp32_parameter_and_halves_in_fp16():
    model = tiny_bert(num_layers=2, hidden=128, heads=4)
    expected = 4 * count_parameters(model) / 1e6
    fp32 = size_on_disk_mb(model)
    assert expected <= fp32 < expected * 1.03  # only the safetensors header on top
    assert size_on_disk_mb(model.half()) == pytest.approx(fp32 / 2, rel=0.03)


# ---- speed ----


class FakeClock:
    """A clock that advances only when a timed fn says so: ``clock.advance(seconds)``."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_time_interleaved_alternates_the_order_and_times_each_call_alone():
    clock, calls = FakeClock(), []

    def fn(name, seconds):
        def run():
            calls.append(name)
            clock.advance(seconds[len([c for c in calls if c == name]) - 1])

        return run

    # per call, warm-up rounds first: a warm-up of 1 s must not be counted
    fns = [fn("a", [1.0, 0.5, 0.25, 0.5]), fn("b", [1.0, 0.125, 0.125, 0.25]), fn("c", [1.0, 2.0, 3.0, 4.0])]
    times = time_interleaved(fns, rounds=3, warmup=1, clock=clock)
    assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c", "c", "b", "a"]
    assert times == [[0.5, 0.25, 0.5], [0.125, 0.125, 0.25], [2.0, 3.0, 4.0]]


def test_spread_stats_median_quartiles_and_relative_spread():
    stats = spread_stats([4.0, 1.0, 100.0, 2.0, 3.0])  # one outlier moves neither the median nor the quartiles
    assert stats == {"median": 3.0, "q1": 2.0, "q3": 4.0, "iqr": 2.0, "spread": pytest.approx(2 / 3)}
    assert spread_stats([5.0]) == {"median": 5.0, "q1": 5.0, "q3": 5.0, "iqr": 0.0, "spread": 0.0}
    with pytest.raises(ValueError, match="at least one value"):
        spread_stats([])


def test_speedup_is_the_median_of_per_round_ratios():
    teacher = {"rounds_ms": [10.0, 20.0, 30.0, 40.0, 90.0]}
    student = {"rounds_ms": [5.0, 5.0, 30.0, 10.0, 30.0]}  # ratios 2, 4, 1, 4, 3
    stats = speedup_stats(teacher, student)
    assert (stats["median"], stats["q1"], stats["q3"]) == (3.0, 2.0, 4.0)
    assert stats["spread"] == pytest.approx(2 / 3)
    # round 2 slowed the teacher alone (ratio 10): the ratio of the medians (20 / 10) would call that a 2x speedup
    one_slow_round = speedup_stats({"rounds_ms": [10.0, 20.0, 30.0]}, {"rounds_ms": [10.0, 2.0, 30.0]})
    assert one_slow_round["median"] == 1.0


def test_timing_warning_only_above_the_threshold():
    assert timing_warning({"teacher latency": 0.10, "speedup": 0.25}) is None
    message = timing_warning({"teacher latency": 0.10, "student latency": 0.40, "speedup": 0.6})
    assert message.startswith("the machine looks busy; timings are noisy")
    assert "speedup 60%, student latency 40%" in message and "teacher" not in message
    assert timing_warning({"speedup": 0.2}, threshold=0.1) is not None


def test_measure_speed_returns_positive_numbers_and_restores_the_model():
    model = tiny_bert().train()
    model.bert.pooler.eval()  # mixed modes must come back exactly as they were
    out = measure_speed(model, batch_size=4, seq_len=16, warmup=1, iters=3)
    assert set(out) == {
        "latency_ms",
        "latency_ms_iqr",
        "latency_spread",
        "throughput",
        "rounds_ms",
        "batch_size",
        "seq_len",
        "device",
    }
    assert out["latency_ms"] > 0 and out["throughput"] > 0 and len(out["rounds_ms"]) == 3
    assert out["latency_ms"] == statistics.median(out["rounds_ms"])
    assert out["latency_ms_iqr"] >= 0 and out["latency_spread"] == out["latency_ms_iqr"] / out["latency_ms"]
    assert out["throughput"] == pytest.approx(4 / (out["latency_ms"] / 1e3))
    assert (out["batch_size"], out["seq_len"], out["device"]) == (4, 16, "cpu")
    assert model.training and model.bert.encoder.training and not model.bert.pooler.training
    assert next(model.parameters()).device.type == "cpu"
    assert torch.is_grad_enabled()


def test_measure_speeds_runs_every_model_in_every_round(monkeypatch):
    teacher, student = tiny_bert(num_layers=2), tiny_llama(num_layers=1)  # different inputs: token types for BERT
    seen = []
    for name, model in (("teacher", teacher), ("student", student)):
        model.register_forward_hook(
            lambda module, args, out, name=name: seen.append((name, torch.is_inference_mode_enabled()))
        )
    out = measure_speeds({"teacher": teacher, "student": student}, batch_size=2, seq_len=8, warmup=1, rounds=4)
    assert [name for name, _ in seen] == ["teacher", "student", "student", "teacher"] * 2 + ["teacher", "student"]
    assert all(inference for _, inference in seen)
    assert len(out["teacher"]["rounds_ms"]) == len(out["student"]["rounds_ms"]) == 4


def test_measure_speed_works_without_token_type_ids():
    out = measure_speed(tiny_llama(), batch_size=2, seq_len=8, iters=2)
    assert out["latency_ms"] > 0


def test_a_much_bigger_model_is_slower():
    # timings are noisy on a shared machine, so only a gap of orders of magnitude is asserted, with a 4x margin
    big = tiny_bert(num_layers=12, hidden=256, heads=4)
    small = tiny_bert(num_layers=1, hidden=16, heads=2)
    big_ms, small_ms = float("inf"), float("inf")
    for _ in range(3):  # best of three, interleaved, so a burst of load on the shared CPU cannot decide it
        big_ms = min(big_ms, measure_speed(big, batch_size=8, seq_len=32, iters=3)["latency_ms"])
        small_ms = min(small_ms, measure_speed(small, batch_size=8, seq_len=32, iters=3)["latency_ms"])
    assert big_ms > 4 * small_ms


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"seq_len": 65}, "max_position_embeddings"),
        ({"batch_size": 0}, "batch_size"),
        ({"iters": 0}, "iters"),
        ({"warmup": -1}, "warmup"),
        ({"warmup": 1.5}, "warmup"),
    ],
)
def test_measure_speed_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        measure_speed(tiny_bert(), **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_measure_speed_on_missing_cuda_is_a_value_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        measure_speed(tiny_bert(), device="cuda")


# ---- results ----


def test_build_results_has_every_field(results):
    assert {
        "task",
        "metric",
        "teacher",
        "student",
        "student_no_kd",
        "retention",
        "speedup",
        "speedup_iqr",
        "speedup_spread",
        "timing_rounds",
        "kd_gain",
        "speed",
    } <= set(results)
    assert results["task"] == "sst2" and results["metric"] == "accuracy"
    assert results["teacher_name"] == "tiny-bert-4l"  # extra is merged at the top level
    speed_keys = ("latency_ms", "latency_ms_iqr", "latency_spread", "throughput")
    for role in ("teacher", "student", "student_no_kd"):
        assert set(results[role]) == {"accuracy", "f1", "num_parameters", "size_mb", *speed_keys}
        cpu = results["speed"]["cpu"][role]
        assert all(results[role][key] == cpu[key] for key in speed_keys)
        assert len(cpu["rounds_ms"]) == results["timing_rounds"] == 3
    assert results["speed"]["batch_size"] == 4 and results["speed"]["seq_len"] == 16
    assert "cuda" not in results["speed"]


def test_build_results_strips_eval_prefixes_and_bookkeeping(results):
    assert results["teacher"]["accuracy"] == 0.90 and results["teacher"]["f1"] == 0.88
    assert not any(k.startswith(("eval_", "loss", "epoch", "runtime")) for k in results["teacher"])


def test_build_results_arithmetic(results, models):
    teacher, student = results["teacher"], results["student"]
    assert results["retention"] == pytest.approx(0.855 / 0.90)
    cpu = results["speed"]["cpu"]
    ratios = [t / s for t, s in zip(cpu["teacher"]["rounds_ms"], cpu["student"]["rounds_ms"])]
    assert results["speedup"] == statistics.median(ratios)
    assert results["speedup_spread"] == results["speedup_iqr"] / results["speedup"] >= 0
    assert teacher["latency_ms"] == statistics.median(cpu["teacher"]["rounds_ms"])
    assert results["kd_gain"] == pytest.approx(0.855 - 0.81)
    assert teacher["num_parameters"] == count_parameters(models[0]) > student["num_parameters"]
    assert teacher["size_mb"] > student["size_mb"] > 0


def test_build_results_without_baseline_and_with_eval_prefixed_metric(models):
    teacher, student, _ = models
    out = build_results("sst2", "eval_f1", TEACHER_SCORES, STUDENT_SCORES, teacher, student, **SMALL)
    assert out["metric"] == "f1" and out["retention"] == pytest.approx(0.80 / 0.88)
    assert "student_no_kd" not in out and "kd_gain" not in out


def test_baseline_scores_alone_reuse_the_student_size_and_speed(models):
    teacher, student, _ = models
    out = build_results(
        "sst2", "accuracy", TEACHER_SCORES, STUDENT_SCORES, teacher, student, baseline_scores=BASELINE_SCORES, **SMALL
    )
    for key in ("num_parameters", "size_mb", "latency_ms", "latency_ms_iqr", "latency_spread", "throughput"):
        assert out["student_no_kd"][key] == out["student"][key]


def _fake_timings(times):
    """A ``time_interleaved`` that runs nothing and returns ``times`` (ms per role in the order measured)."""

    def fake(fns, *, rounds, warmup):
        assert len(fns) == len(times) and all(len(t) == rounds for t in times)
        return [[ms / 1e3 for ms in row] for row in times]

    return fake


def test_build_results_reports_medians_spreads_and_the_busy_machine_warning(models, monkeypatch, caplog):
    teacher, student, baseline = models
    quiet = [[40.0, 41.0, 39.0, 40.0, 40.0], [10.0, 10.0, 10.0, 11.0, 9.0], [10.0] * 5]
    monkeypatch.setattr(speed, "time_interleaved", _fake_timings(quiet))
    kwargs = {"baseline_scores": BASELINE_SCORES, "baseline_model": baseline, "rounds": 5, **SMALL}
    with caplog.at_level(logging.WARNING, logger="hf_distill.report"):
        out = build_results("sst2", "accuracy", TEACHER_SCORES, STUDENT_SCORES, teacher, student, **kwargs)
    assert out["teacher"]["latency_ms"] == pytest.approx(40.0) and out["student_no_kd"]["latency_ms"] == 10.0
    assert out["teacher"]["latency_ms_iqr"] == pytest.approx(0.0) and out["student"]["latency_ms_iqr"] == 0.0
    assert out["teacher"]["throughput"] == pytest.approx(4 / 0.040)
    assert out["speedup"] == pytest.approx(4.0)  # ratios 4, 4.1, 3.9, 3.64, 4.44
    assert out["speedup_iqr"] == pytest.approx(4.1 - 3.9) and out["timing_rounds"] == 5
    assert not caplog.records and "warning" not in format_table(out)

    # a student slowed 8x in two rounds out of five: its median holds, its spread and the speedup's do not
    busy = [[40.0, 41.0, 39.0, 40.0, 40.0], [10.0, 80.0, 10.0, 80.0, 9.0], [10.0] * 5]
    monkeypatch.setattr(speed, "time_interleaved", _fake_timings(busy))
    with caplog.at_level(logging.WARNING, logger="hf_distill.report"):
        out = build_results("sst2", "accuracy", TEACHER_SCORES, STUDENT_SCORES, teacher, student, **kwargs)
    assert out["student"]["latency_ms"] == 10.0 and out["student"]["latency_spread"] == pytest.approx(7.0)
    assert out["speedup"] == pytest.approx(3.9)  # ratios 4, 0.5125, 3.9, 0.5, 4.44
    assert out["speedup_spread"] == pytest.approx((4.0 - 0.5125) / 3.9)
    assert [r.getMessage() for r in caplog.records] == [timing_warning({"student latency": 7.0, "speedup": 0.894})]
    table = format_table(out)
    assert "warning: the machine looks busy; timings are noisy" in table and "student latency 700%" in table


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"metric": "matthews_correlation"}, "not among the teacher scores"),
        ({"devices": ["cuda"]}, "must include 'cpu'"),
        ({"extra": {"speedup": 2.0}}, "would overwrite"),
        ({"baseline_model": "student"}, "without baseline_scores"),
    ],
)
def test_build_results_rejects_bad_input(models, kwargs, match):
    teacher, student, _ = models
    kwargs = {"metric": "accuracy", "devices": ["cpu"], **kwargs}
    if kwargs.get("baseline_model") == "student":
        kwargs["baseline_model"] = student
    with pytest.raises(ValueError, match=match):
        build_results(
            "sst2",
            teacher_scores=TEACHER_SCORES,
            student_scores=STUDENT_SCORES,
            teacher_model=teacher,
            student_model=student,
            batch_size=2,
            seq_len=8,
            **kwargs,
        )


# ---- table and files ----


def test_format_table_shows_metrics_rows_and_summary(results):
    table = format_table(results)
    for text in (
        "accuracy",
        "f1",
        "teacher",
        "student",
        "student (no KD)",
        "params (M)",
        "retention",
        "speedup",
        "kd_gain",
    ):
        assert text in table
    assert "95.0 %" in table  # 0.855 / 0.90
    assert "+0.0450" in table
    assert "IQR/median" in table and f"{results['student']['latency_spread']:.0%}" in table
    assert (
        f"speedup: {results['speedup']:.2f}x (median of 3 interleaved rounds, IQR {results['speedup_iqr']:.2f}x"
        in table
    )
    rows = [line for line in table.splitlines() if line.startswith(("model", "teacher", "student"))]
    assert len({len(line) for line in rows}) == 1  # fixed width


def _check_png(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(path) > 20_000


def test_write_report_writes_json_and_png(results, tmp_out, capsys):
    paths = write_report(results, tmp_out, log_history=_log_history(), title="tiny BERT 4L -> 2L")
    assert paths == {"results": os.path.join(tmp_out, "results.json"), "figure": os.path.join(tmp_out, "report.png")}
    with open(paths["results"]) as f:
        assert json.load(f) == json.loads(json.dumps(results))
    _check_png(paths["figure"])
    assert "retention" in capsys.readouterr().out


def test_write_results_writes_plain_json_and_refuses_other_objects(tmp_out):
    import numpy as np

    values = {"task": "causal_lm", "loss": torch.tensor(0.5), "ppl": np.float32(3.0), "rows": torch.arange(3)}
    path = write_results(values, tmp_out)
    assert path == os.path.join(tmp_out, "results.json")
    with open(path) as f:
        assert json.load(f) == {"task": "causal_lm", "loss": 0.5, "ppl": 3.0, "rows": [0, 1, 2]}
    with pytest.raises(ValueError, match="cannot be written to JSON; pass plain numbers"):
        write_results({"model": object()}, tmp_out)


def test_write_report_without_log_history(results, tmp_out):
    paths = write_report(results, tmp_out)
    _check_png(paths["figure"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="times the CUDA path, which needs a GPU")
def test_build_results_times_teacher_and_student_on_cuda_too(models):
    teacher, student, _ = models
    out = build_results(
        "sst2", "accuracy", TEACHER_SCORES, STUDENT_SCORES, teacher, student, batch_size=4, seq_len=16,
        devices=["cpu", "cuda"], rounds=3,
    )  # fmt: skip
    cuda = out["speed"]["cuda"]
    assert cuda["teacher"]["device"] == "cuda" and len(cuda["student"]["rounds_ms"]) == 3
    assert cuda["speedup"]["median"] > 0 and "speedup on cuda" in format_table(out)
    assert next(teacher.parameters()).device.type == next(student.parameters()).device.type == "cpu"
