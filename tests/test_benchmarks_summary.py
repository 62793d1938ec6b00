"""Benchmark run files and their summariser: each run writes its own file, summarize.py prints the tables from them,
the README tables are its output, and every benchmark's --help works."""

import importlib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import common  # noqa: E402 (an import error fails the module, it never skips it)
import summarize  # noqa: E402

BENCHMARKS = [
    "glue_quality",
    "glue_step_time",
    "lm_quality",
    "lm_memory",
    "chunked_kd_memory",
    "demo_seeds",
    "glue_modes",
    "xtok_lm",
]


def _glue_run(seed, teacher, no_kd, kd, step_ms, forward_ms):
    config = {"task": "sst2", "seed": seed, "epochs": 1.0, "train_samples": 16000, "variants": ["no_kd", "kd"]}
    results = {
        "task": "sst2",
        "metric": "accuracy",
        "seed": seed,
        "epochs": 1.0,
        "train_examples": 16000,
        "scores": {"teacher": teacher, "no_kd": no_kd, "kd": kd},
        "all_scores": {},
        "step_ms": step_ms,
        "teacher_forward_ms": forward_ms,
    }
    return common.run_record("glue_quality", config, results, command=["benchmarks/glue_quality.py"])


def _write(folder: Path, name: str, record: dict) -> Path:
    path = common.new_path(folder, name)
    common.write_record(path, record)
    return path


def test_glue_quality_table_from_two_run_files(tmp_path, capsys):
    folder = tmp_path / "glue_quality"
    _write(folder, "sst2-seed43", _glue_run(43, 0.9, 0.80, 0.83, {"no_kd": 200.0, "kd": 260.0}, 100.0))
    path = _write(folder, "sst2-seed42", _glue_run(42, 0.8, 0.70, 0.76, {"no_kd": 100.0, "kd": 150.0}, 50.0))
    saved = json.loads(path.read_text())  # the provenance every run file carries
    assert set(saved) >= {"benchmark", "created", "command", "commit", "versions", "machine", "config", "results"}
    assert set(saved["versions"]) >= {"torch", "transformers", "datasets", "accelerate", "peft"}
    assert set(saved["machine"]) >= {"cpu", "cores", "threads", "gpu"} and saved["commit"]["sha"]

    assert summarize.main(["glue_quality", "--results_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    per_run = "| seed | teacher | `no_kd` | `kd` |\n| --- | ---: | ---: | ---: |\n"
    per_run += "| 42 | 80.00 | 70.00 | 76.00 |\n| 43 | 90.00 | 80.00 | 83.00 |\n"
    assert per_run in out
    # kd: mean 79.50; gain (6 + 3) / 2; retention (76/80 + 83/90) / 2 = 93.6%; steps (150/100 + 260/200) / 2
    assert "| `no_kd` | 42,43 | 75.00 |  | 88.2% | 1.00x |" in out
    assert "| `kd` | 42,43 | 79.50 | +4.50 | 93.6% | 1.40x |" in out
    assert "(student step + a teacher forward) / student step: 1.50x on `no_kd`." in out
    assert "_2 run file(s): " in out and path.name in out


def test_a_teacher_scoring_zero_has_no_retention(tmp_path, capsys):
    folder = tmp_path / "glue_quality"
    _write(folder, "cola", _glue_run(42, 0.0, 0.05, 0.07, {"no_kd": 100.0, "kd": 160.0}, 50.0))
    summarize.main(["glue_quality", "--results_dir", str(tmp_path)])
    assert "| `kd` | 42 | 7.00 | +2.00 | nan% | 1.60x |" in capsys.readouterr().out


def _demo_run(seed, teacher, no_kd, kd, minutes):
    job = {
        "metric": "accuracy",
        **{k: {"accuracy": v} for k, v in zip(("teacher", "student_no_kd", "student"), (teacher, no_kd, kd))},
    }
    return common.run_record("demo_seeds", {"seed": seed}, {"minutes": minutes, "job": job})


def test_demo_table_from_its_run_files(tmp_path):
    _write(tmp_path, "seed44", _demo_run(44, 0.85, 0.80, 0.84, 6.0))
    _write(tmp_path, "seed42", _demo_run(42, 0.80, 0.78, 0.81, 7.0))
    table = summarize.summarize(summarize.load(sorted(tmp_path.glob("*.json"))))
    assert (
        "| seed | teacher | no KD | KD | KD - no KD | retention | minutes |\n"
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n"
        "| 42 | 80.00 | 78.00 | 81.00 | +3.00 | 101.2% | 7.0 |\n"
        "| 44 | 85.00 | 80.00 | 84.00 | +4.00 | 98.8% | 6.0 |\n"
        "| mean | 82.50 | 79.00 | 82.50 | **+3.50** | 100.0% | 6.5 |\n"
    ) in table


def test_the_demo_refuses_a_job_without_its_baseline_before_running_it(tmp_path, monkeypatch, capsys):
    import demo_seeds

    def ran(opts, seed):
        raise AssertionError(f"seed {seed} ran")

    monkeypatch.setattr(demo_seeds, "run_seed", ran)
    argv = ["--seeds", "42", "--work_dir", str(tmp_path), "--results_dir", str(tmp_path)]
    assert demo_seeds.main([*argv, "--", "--baseline_no_kd", "false"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--baseline_no_kd false" in err and "--baseline_no_kd true" in err
    assert demo_seeds.no_baseline(demo_seeds.build_parser().parse_args(argv)) is None  # the demo's config has it


def test_a_run_never_takes_an_existing_file(tmp_path):
    first, second = common.new_path(tmp_path, "x"), common.new_path(tmp_path, "x")  # within one second
    assert first != second and first.exists() and second.exists()


def test_a_run_still_going_is_skipped_not_a_crash(tmp_path, capsys):
    folder = tmp_path / "glue_quality"
    _write(folder, "sst2-seed42", _glue_run(42, 0.8, 0.70, 0.76, {"no_kd": 100.0, "kd": 150.0}, 50.0))
    going = common.new_path(folder, "sst2-seed43")  # claimed (empty) until its run writes it
    assert summarize.main(["glue_quality", "--results_dir", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "| 42 | 80.00 | 70.00 | 76.00 |" in captured.out and "| 43 |" not in captured.out
    assert f"skipping {going}: empty (its run has not finished)" in captured.err
    assert summarize.main(["--files", str(going)]) == 1 and "no run files" in capsys.readouterr().err


def test_a_file_that_is_no_run_file_is_one_line(tmp_path):
    (tmp_path / "old.json").write_text(json.dumps({"format": 3, "runs": []}))
    with pytest.raises(ValueError, match=r"old\.json is not a benchmark run file"):
        summarize.load([tmp_path / "old.json"])


def test_an_unknown_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        summarize.main(["glue_qualty"])
    assert exit_info.value.code == 2 and "unknown benchmark 'glue_qualty'" in capsys.readouterr().err


def _summary_commands(text: str):
    """(arguments of `python benchmarks/summarize.py ...`, the markdown tables printed after it in ``text``)."""
    for match in re.finditer(r"```\npython benchmarks/summarize.py([^\n]*)\n```\n(.*?)(?=\n```|\n#|\Z)", text, re.S):
        tables = re.findall(r"(?:^\|.*\|\n)+", match.group(2) + "\n", re.M)
        yield match.group(1).split(), tables


def test_readme_tables_are_the_summarisers_output_of_the_committed_run_files(capsys):
    docs = [ROOT / "README.md", *ROOT.glob("examples/*/README.md"), *ROOT.glob("docs/*.md")]
    checked = set()
    for doc in docs:
        for argv, tables in _summary_commands(doc.read_text()):
            assert tables, f"{doc.relative_to(ROOT)}: no table after `summarize.py {' '.join(argv)}`"
            assert summarize.main(argv) == 0
            out = capsys.readouterr().out + "\n"
            for table in tables:
                assert table in out, (
                    f"{doc.relative_to(ROOT)}: a table after `summarize.py {' '.join(argv)}` is not its output"
                )
            checked.update(argv)
    assert {"demo_seeds", "glue_quality", "glue_step_time", "lm_quality", "lm_memory"} <= checked


@pytest.mark.parametrize("name", [*BENCHMARKS, "summarize"])
def test_every_benchmark_has_help_and_writes_where_the_summariser_reads(name, capsys):
    module = importlib.import_module(name)
    parser = module.build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0 and "usage:" in capsys.readouterr().out
    if name != "summarize":
        assert name in summarize.TABLES
        assert parser.parse_args([]).results_dir == common.default_dir(name) == str(summarize.RESULTS / name)


def _modes_run(seed, scores, minutes, modes):
    config = {"task": "sst2", "seed": seed, "modes": modes}
    results = {"task": "sst2", "metric": "accuracy", "seed": seed, "scores": scores, "minutes": minutes, "steps": {}}
    return common.run_record("glue_modes", config, results, command=["benchmarks/glue_modes.py"])


def test_glue_modes_merges_the_runs_of_a_seed(tmp_path, capsys):
    """A mode added later to a (task, seed) with --reuse_teacher: one row per seed, its gain over that seed's no-KD."""
    folder = tmp_path / "glue_modes"
    first = _modes_run(42, {"teacher": 0.9, "no_kd": 0.8, "kd": 0.85}, {"teacher": 6.0, "no_kd": 3.0, "kd": 4.0}, [])
    later = _modes_run(42, {"teacher": 0.9, "noisy_student": 0.84}, {"noisy_student": 8.0}, ["noisy_student"])
    first["created"], later["created"] = "2026-12-07T10:00:00", "2026-12-07T11:00:00"  # the later run: an hour on
    _write(folder, "sst2-seed42-later", later)
    _write(folder, "sst2-seed42", first)
    _write(folder, "sst2-seed43", _modes_run(43, {"teacher": 0.9, "no_kd": 0.7, "kd": 0.8}, {"teacher": 5.0}, []))
    assert summarize.main(["glue_modes", "--results_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 42 | 90.00 | 80.00 | 85.00 | 84.00 |\n| 43 | 90.00 | 70.00 | 80.00 |  |\n" in out
    assert "| `teacher` | 42,43 | 90.00 |  | 5.5 |" in out  # seed 42's teacher minutes from the run that trained it
    assert "| `noisy_student` | 42 | 84.00 | +4.00 | 8.0 |" in out
    _write(tmp_path / "alone" / "glue_modes", "sst2-seed44", _modes_run(44, {"teacher": 0.9, "ema": 0.8}, {}, ["ema"]))
    assert summarize.main(["glue_modes", "--results_dir", str(tmp_path / "alone")]) == 0
    assert "| `ema` | 44 | 80.00 |  |  |" in capsys.readouterr().out  # no no-KD run to compare with: no gain, not nan


def test_glue_modes_keeps_runs_of_another_budget_apart(tmp_path, capsys):
    folder = tmp_path / "glue_modes"
    full = _modes_run(42, {"teacher": 0.9, "no_kd": 0.8}, {}, [])
    smoke = _modes_run(42, {"teacher": 0.5, "no_kd": 0.5}, {}, [])
    full["config"]["train_samples"], smoke["config"]["train_samples"] = 16000, 64
    _write(folder, "full", full)
    _write(folder, "smoke", smoke)
    assert summarize.main(["glue_modes", "--results_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| 42 | 90.00 | 80.00 |" in out and "| 42 | 50.00 | 50.00 |" in out


def _xtok_run(runs, created, teachers=None):
    config = {"steps": 150, "runs": list(runs)}
    record = common.run_record("xtok_lm", config, {"runs": runs, "teachers": teachers or {}}, command=["x"])
    record["created"] = created
    return record


def test_xtok_lm_merges_the_rows_of_its_runs_and_compares_them(tmp_path, capsys):
    """Rows measured by two processes side by side: one table, each row against CE-only and same-tokenizer KD."""
    folder = tmp_path / "xtok_lm"

    def row(shakespeare, wikitext, step_s):
        return {
            "perplexity": {"shakespeare": shakespeare, "wikitext2": wikitext},
            "step_s": step_s,
            "peak_rss_gb": 2.0,
        }

    a = _xtok_run({"same_tok": row(90.0, 400.0, 10.0), "ce": row(60.0, 8000.0, 5.0)}, "2026-12-08T00:00:00")
    b = _xtok_run({"xtok_exact": row(100.0, 500.0, 15.0)}, "2026-12-08T00:00:01", {"gemma": {"wikitext2": 46.0}})
    b["results"]["runs"]["xtok_exact"]["shared_vocabulary"] = "the vocabularies share 3 tokens"
    _write(folder, "a", a)
    _write(folder, "b", b)
    assert summarize.main(["xtok_lm", "--results_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| `same_tok` | 150 | 90.0 | 400.0 | 20.00x | 1.00x | 10.00 | 1.00x | 2.00 |" in out
    assert "| `xtok_exact` | 150 | 100.0 | 500.0 | 16.00x | 1.25x | 15.00 | 1.50x | 2.00 |" in out
    assert "gemma: wikitext2 46.0." in out and "Shared vocabulary: the vocabularies share 3 tokens." in out
