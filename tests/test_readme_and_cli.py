"""The README quickstart runs as written; the CLI lists its commands and runs the quickstart job."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

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
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["student_parameters"] < results["teacher_parameters"]
    assert 0.0 <= results["student_accuracy"] <= 1.0
