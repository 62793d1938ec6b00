"""The GLUE quality benchmark's results file: old variant names are renamed on load, and the summary is computed."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import glue_quality  # noqa: E402 (an import error fails the module, it never skips it)


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


def _row(table: str, variant: str) -> list[str]:
    """The summary's columns for ``variant``: seeds, score, gain over no KD, retention, step / student step."""
    (row,) = [line.split()[1:] for line in table.splitlines() if line.split()[:1] == [variant]]
    return row


def test_format_1_names_are_renamed_and_summarised(tmp_path):
    path = tmp_path / "glue_quality.json"
    old = _run("sst2", {"no_kd": 0.70, "kd": 0.72, "kd_att5": 0.76}, {"no_kd": 100.0, "kd": 200.0, "kd_att5": 150.0})
    path.write_text(json.dumps({"runs": [old]}))  # format 1: no "format" key; its students had dropout
    (run,) = glue_quality.load_runs(str(path))
    assert run["scores"] == {"teacher": 0.8, "no_kd_drop": 0.70, "kd_att1_drop": 0.72, "kd_drop": 0.76}
    assert run["step_ms"] == {"no_kd_drop": 100.0, "kd_att1_drop": 200.0, "kd_drop": 150.0}
    table = glue_quality.summarise([run])
    # kd_drop: 76.00, +6.00 over no_kd_drop, retention 0.76 / 0.8 = 95.0%, step 1.50x; bound (100 + 50) / 100
    assert _row(table, "kd_drop") == ["42", "76.00", "+6.00", "95.0%", "1.50x"]
    assert "bound on a KD step (student + teacher forward) 1.50x on no_kd_drop" in table

    path.write_text(json.dumps({"format": glue_quality.FORMAT, "runs": [old]}))  # current format: kept as written
    assert glue_quality.load_runs(str(path))[0]["scores"]["kd_att5"] == 0.76


def test_format_2_nodrop_variants_become_the_recipe_and_the_others_keep_dropout_in_their_name(tmp_path):
    path = tmp_path / "glue_quality.json"
    old = _run(
        "sst2",
        {"no_kd": 0.70, "kd": 0.72, "no_kd_nodrop": 0.71, "kd_nodrop": 0.78},
        {"no_kd": 100.0, "no_kd_nodrop": 90.0, "kd_nodrop": 126.0},
    )
    old["superseded"] = [{"scores": {"teacher": 0.81, "kd": 0.73}, "step_ms": {"kd": 190.0}}]
    old["all_scores"] = {"teacher": {"eval_accuracy": 0.8}, "kd": {"eval_accuracy": 0.72}, "kd_nodrop": {}}
    path.write_text(json.dumps({"format": 2, "runs": [old]}))
    (run,) = glue_quality.load_runs(str(path))
    assert run["scores"] == {"teacher": 0.8, "no_kd_drop": 0.70, "kd_drop": 0.72, "no_kd": 0.71, "kd": 0.78}
    assert run["superseded"] == [{"scores": {"teacher": 0.81, "kd_drop": 0.73}, "step_ms": {"kd_drop": 190.0}}]
    table = glue_quality.summarise([run])
    # each variant against the no-KD student with its own dropout: kd 78 - 71, kd_drop 72 - 70; kd's step 126 / 90
    assert _row(table, "kd") == ["42", "78.00", "+7.00", "97.5%", "1.40x"]
    assert _row(table, "kd_drop") == ["42", "72.00", "+2.00", "90.0%", "nanx"]
    # one bound per no-KD student: (90 + 50) / 90 and (100 + 50) / 100
    assert "bound on a KD step (student + teacher forward) 1.56x on no_kd, 1.50x on no_kd_drop" in table
    assert run["all_scores"] == {"teacher": {"eval_accuracy": 0.8}, "kd_drop": {"eval_accuracy": 0.72}, "kd": {}}


def test_results_of_a_newer_format_or_mislabelled_ones_are_refused(tmp_path):
    path = tmp_path / "glue_quality.json"
    path.write_text(json.dumps({"format": glue_quality.FORMAT + 1, "runs": []}))
    with pytest.raises(ValueError, match=f"format {glue_quality.FORMAT + 1}"):
        glue_quality.load_runs(str(path))
    # a format-3 file that an older copy of the script saved as format 2: renaming again would make "kd_drop_drop"
    path.write_text(json.dumps({"format": 2, "runs": [_run("sst2", {"kd_drop": 0.72}, {})]}))
    with pytest.raises(ValueError, match="'kd_drop'"):
        glue_quality.load_runs(str(path))


def test_teacher_scoring_zero_has_no_retention():
    run = _run("cola", {"no_kd": 0.05, "kd": 0.07}, {"no_kd": 100.0, "kd": 160.0}, teacher=0.0)
    assert "nan%" in glue_quality.summarise([run])


def test_every_variant_sets_known_fields():
    known = glue_quality.GLUE_FIELDS | set(glue_quality.DistillationConfig.__dataclass_fields__)
    for name, overrides in glue_quality.VARIANTS.items():
        assert set(overrides) <= known, name
    assert set(glue_quality.RENAMED.values()) <= set(glue_quality.VARIANTS)
    assert set(glue_quality.NODROP_RENAMED.values()) <= set(glue_quality.VARIANTS)
    # "_drop" twins keep the teacher's dropout; the others, the recipe's
    for name, overrides in glue_quality.VARIANTS.items():
        assert ("student_dropout" in overrides) == name.endswith("_drop"), name


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


def test_variant_arguments_put_each_override_on_the_dataclass_that_has_it():
    recipe = str(glue_quality.RECIPE)
    glue_args, args = glue_quality.parse_with_config(
        [glue_quality.GlueArguments, glue_quality.DistillationConfig], ["--config", recipe], "test"
    )
    assert glue_args.student_dropout == 0.0 and args.alpha_attention == 5.0  # the recipe as shipped
    glue, cfg = glue_quality.variant_arguments("no_kd_drop", glue_args, args, output_dir="out/x")
    assert glue.student_dropout is None and glue.student_layers == glue_args.student_layers
    assert (cfg.alpha_task, cfg.alpha_logits, cfg.alpha_hidden, cfg.alpha_attention) == (1.0, 0.0, 0.0, 0.0)
    assert cfg.output_dir == "out/x" and cfg.temperature == args.temperature
    glue, cfg = glue_quality.variant_arguments("kd_decay", glue_args, args)
    assert glue == glue_args and cfg.intermediate_schedule == "linear" and cfg.output_dir == args.output_dir
