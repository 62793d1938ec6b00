"""The README quickstart runs as written; the CLI lists its commands and runs the quickstart job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from huggingface_hub import ModelCard
from transformers import AutoModelForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_runs_as_written(tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert (tmp_path / "out/quickstart-readme/model.safetensors").exists()
    assert (tmp_path / "out/quickstart-readme/distillation_config.json").exists()
    assert namespace["reloaded"].config.num_hidden_layers == 2


def test_cli_help_and_quickstart(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "hf_distill.cli", "--help"], capture_output=True, text=True, env=env, check=True
    )
    assert "quickstart" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "hf_distill.cli", "nope"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "unknown command" in bad.stderr
    subprocess.run(
        [sys.executable, "-m", "hf_distill.cli", "quickstart", "--output_dir", str(tmp_path), "--max_steps", "20"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    # the GLUE job's layout: the student in output_dir with results.json, report.png and its card; the teacher in teacher/
    results = json.loads((tmp_path / "results.json").read_text())
    assert {"task", "metric", "teacher", "student", "retention", "speedup", "speedup_spread", "timing_rounds"} <= set(
        results
    )
    assert {"train_examples", "max_steps", "teacher_model", "student_layers", "speed"} <= set(results)
    assert results["metric"] == "accuracy" and results["max_steps"] == 20 and results["student_layers"] == [1, 3]
    for role in ("teacher", "student"):
        assert {"accuracy", "num_parameters", "size_mb", "latency_ms", "latency_spread", "throughput"} <= set(
            results[role]
        )
        assert 0.0 <= results[role]["accuracy"] <= 1.0
    assert results["student"]["num_parameters"] < results["teacher"]["num_parameters"]
    teacher = AutoModelForSequenceClassification.from_pretrained(tmp_path / "teacher")
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert teacher.config.num_hidden_layers == 4 and student.config.num_hidden_layers == 2
    assert teacher.num_parameters() == results["teacher"]["num_parameters"]
    assert (tmp_path / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.eval_results[0].metric_value == round(results["student"]["accuracy"], 4)
    assert "a local teacher (`teacher`)" in card.text and "interleaved rounds" in card.text
    assert not any(name.startswith("checkpoint-") for name in os.listdir(tmp_path))


def test_losses_doc_covers_every_built_in_loss():
    from hf_distill.losses import LOSS_KINDS, available_losses, get_loss

    doc = (ROOT / "docs" / "losses.md").read_text()
    kinds = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)` \| (.*) \| `\w+_loss` \|$", doc, re.M)}
    for kind in LOSS_KINDS:
        built_in = [n for n in available_losses(kind) if get_loss(kind, n).__module__.startswith("hf_distill.")]
        for name in built_in:
            assert f"`{name}`" in kinds[kind], f"docs/losses.md lists no {kind} loss {name!r}"
    for name in available_losses("logits"):  # each logit loss has its formula row
        if get_loss("logits", name).__module__.startswith("hf_distill."):
            assert re.search(rf"^\| `{name}` \| `", doc, re.M), f"docs/losses.md gives no formula for {name!r}"
    # the skew losses: formulas, the meaning of the skew, the paper's value and the citation
    for text in ("KL(p_t ‖ β · p_t + (1-β) · p_s)", "KL(p_s ‖ β · p_s + (1-β) · p_t)", "jsd_beta: 0.1", "Ko et al."):
        assert text in doc
