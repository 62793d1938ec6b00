"""The GLUE quality benchmark's results file: old variant names are renamed on load, and the summary is computed."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
glue_quality = pytest.importorskip("glue_quality")


def _run(task, scores, step_ms, teacher=0.8):
    return {
        "task": task,
        "metric": "accuracy",
        "seed": 42,
        "epochs": 1.0,
        "scores": {"teacher": teacher, **scores},
        "all_scores": {},
        "step_ms": step_ms,
        "teacher_forward_ms": 50.0,
    }


def test_format_1_names_are_renamed_and_summarised(tmp_path):
    path = tmp_path / "glue_quality.json"
    old = _run("sst2", {"no_kd": 0.70, "kd": 0.72, "kd_att5": 0.76}, {"no_kd": 100.0, "kd": 200.0, "kd_att5": 150.0})
    path.write_text(json.dumps({"runs": [old]}))  # format 1: no "format" key
    (run,) = glue_quality.load_runs(str(path))
    assert run["scores"] == {"teacher": 0.8, "no_kd": 0.70, "kd_att1": 0.72, "kd": 0.76}
    assert run["step_ms"] == {"no_kd": 100.0, "kd_att1": 200.0, "kd": 150.0}
    table = glue_quality.summarise([run])
    # kd: 76.00, +6.00 over no KD, retention 0.76 / 0.8 = 95.0%, step 1.50x; bound (100 + 50) / 100
    assert "kd              42          76.00     +6.00     95.0%        1.50x" in table
    assert "bound on a KD step (student + teacher forward) 1.50x" in table

    path.write_text(json.dumps({"format": glue_quality.FORMAT, "runs": [old]}))  # current format: kept as written
    assert glue_quality.load_runs(str(path))[0]["scores"]["kd_att5"] == 0.76


def test_teacher_scoring_zero_has_no_retention():
    run = _run("cola", {"no_kd": 0.05, "kd": 0.07}, {"no_kd": 100.0, "kd": 160.0}, teacher=0.0)
    assert "nan%" in glue_quality.summarise([run])


def test_every_variant_sets_known_fields():
    known = glue_quality.GLUE_FIELDS | set(glue_quality.DistillationConfig.__dataclass_fields__)
    for name, overrides in glue_quality.VARIANTS.items():
        assert set(overrides) <= known, name
    assert set(glue_quality.RENAMED.values()) <= set(glue_quality.VARIANTS)


def test_a_retrained_teacher_keeps_earlier_variants_only_when_it_reproduces_the_scores():
    recorded = {"eval_loss": 0.313, "eval_accuracy": 0.8704, "eval_runtime": 13.3, "eval_samples_per_second": 65.0}
    same = {**recorded, "eval_runtime": 20.1, "eval_samples_per_second": 40.0}  # timings may differ
    assert glue_quality._same_scores(same, recorded)
    assert not glue_quality._same_scores({**same, "eval_accuracy": 0.8635}, recorded)
    assert not glue_quality._same_scores({**same, "eval_loss": 0.33}, recorded)
    assert not glue_quality._same_scores(same, None)


def test_parallel_runs_of_one_seed_keep_each_others_variants_on_the_same_teacher():
    teacher = {"eval_loss": 0.31, "eval_accuracy": 0.87}
    other_task = {**_run("cola", {"no_kd": 0.05}, {}), "all_scores": {"teacher": teacher}}
    on_disk = {**_run("sst2", {"no_kd": 0.85, "kd": 0.86}, {"kd": 200.0}), "all_scores": {"teacher": teacher}}
    ours = {**_run("sst2", {"kd_decay": 0.865}, {"kd_decay": 210.0}), "all_scores": {"teacher": teacher}}
    runs = glue_quality.merge_result([other_task, on_disk], ours)
    assert [r["task"] for r in runs] == ["cola", "sst2"] and ours["scores"] == {"teacher": 0.8, "kd_decay": 0.865}
    assert runs[1]["scores"] == {"teacher": 0.8, "no_kd": 0.85, "kd": 0.86, "kd_decay": 0.865}
    assert runs[1]["step_ms"] == {"kd_decay": 210.0, "kd": 200.0}
    # variants of another teacher (a retrained one that differs) are not mixed in
    retrained = {**_run("sst2", {"kd_decay": 0.85}, {}), "all_scores": {"teacher": {**teacher, "eval_loss": 0.29}}}
    (_, run) = glue_quality.merge_result([other_task, on_disk], retrained)
    assert run["scores"] == {"teacher": 0.8, "kd_decay": 0.85}
    assert run["superseded"] == [{k: on_disk[k] for k in ("scores", "step_ms", "teacher_forward_ms")}]
    # ... once: a retrained teacher's run has put them there already
    (_, again) = glue_quality.merge_result([other_task, on_disk], run)
    assert again["superseded"] == run["superseded"]
