"""The GLUE recipe end to end on a tiny BERT and real SST-2 rows; every shipped YAML config parses."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_bert, word_tokenizer
from numerics import assert_fp32_close, forward_chain
from transformers import AutoModelForSequenceClassification, DistilBertConfig

from hf_distill import DistillationConfig
from hf_distill.cli import parse_with_config
from hf_distill.models import dropout_overrides
from hf_distill.recipes.glue import GlueArguments, make_student, run
from hf_distill.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared/data/glue/SST-2"
CONFIGS = sorted((ROOT / "examples/glue/configs").glob("*.yaml"))  # causal-LM configs: test_causal_lm_recipe.py


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses_and_says_how_to_run_it(path):
    text = path.read_text()
    assert text.startswith("#") and "hf-distill" in text.split("\n\n")[0], "open with a comment giving the run command"
    # bf16 recipes are for GPUs: TrainingArguments refuses bf16 on a CPU-only machine, so parse them with it off
    cpu_only = [] if torch.cuda.is_available() or "bf16: true" not in text else ["--bf16", "false"]
    parsed = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(path), *cpu_only], "test")
    assert isinstance(parsed[1], DistillationConfig)


MODE_CONFIGS = [p for p in CONFIGS if p.name.split("-")[0] != "kd"]  # <distill_mode>-<student>-<task>.yaml


def test_there_is_a_recipe_per_mode():
    from hf_distill.distillation_config import DISTILL_MODES

    assert sorted(p.name.split("-")[0] for p in MODE_CONFIGS) == sorted(set(DISTILL_MODES) - {"frozen"})


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
@pytest.mark.parametrize("path", MODE_CONFIGS, ids=lambda p: p.name)
def test_every_mode_recipe_passes_the_jobs_checks(path, tmp_path):
    """Each mode's recipe as the job checks it before loading anything (validate_glue_job: the mode's models, layers,
    layer maps, data), with all-MiniLM-L6-v2 replaced by a tiny 6-layer BERT folder (no network)."""
    from hf_distill.recipes.glue_checks import validate_glue_job

    model = tmp_path / "minilm"
    tiny_bert(num_layers=6).save_pretrained(model)
    word_tokenizer([f"w{i}" for i in range(94)]).save_pretrained(model)
    glue_args, args = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(path)], "test")
    assert args.distill_mode == path.name.split("-")[0] and glue_args.student_layers == "1,3,5"
    names = {"student_model_name_or_path": str(model)} if glue_args.student_model_name_or_path else {}
    glue_args = dataclasses.replace(glue_args, **names)
    teacher = {"teacher_model_name_or_path": str(model)} if args.teacher_model_name_or_path else {}
    args = dataclasses.replace(args, output_dir=str(tmp_path / "out"), **teacher)
    assert validate_glue_job(glue_args, args) is not None  # the tokenizer; a bad recipe raises ValueError


def test_flags_override_the_config(tmp_path):
    config = ROOT / "examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml"
    glue_args, args = parse_with_config(
        [GlueArguments, DistillationConfig],
        ["--config", str(config), "--temperature", "7", "--task_name", "cola"],
        "t",
    )
    assert args.temperature == 7.0 and glue_args.task_name == "cola"
    bad = tmp_path / "bad.yaml"
    bad.write_text("task_name: sst2\ntemprature: 3\n")
    with pytest.raises(ValueError, match="unknown keys \\['temprature'\\]"):
        parse_with_config([GlueArguments, DistillationConfig], ["--config", str(bad)], "t")


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_recipe_runs_end_to_end_on_tiny_models(tiny_teacher_dir, tmp_path):
    out = tmp_path / "out"
    glue_args = GlueArguments(
        task_name="sst2",
        data_dir=str(SST2),
        finetune_teacher=True,
        student_layers="1,3",
        max_seq_length=32,
        max_train_samples=64,
        max_eval_samples=48,
        baseline_no_kd=True,
        speed_batch_size=4,
        speed_seq_len=16,
    )
    args = DistillationConfig(
        output_dir=str(out),
        teacher_model_name_or_path=tiny_teacher_dir,
        max_steps=3,
        per_device_train_batch_size=16,
        alpha_hidden=1.0,
        alpha_attention=1.0,
        attention_loss="relation",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    results = run(glue_args, args)
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    for key in ("task", "metric", "teacher", "student", "retention", "speedup", "student_no_kd", "kd_gain"):
        assert key in saved, key
    assert saved["task"] == "sst2" and saved["metric"] == "accuracy"
    for who in ("teacher", "student"):
        for key in ("accuracy", "num_parameters", "size_mb", "latency_ms", "throughput"):
            assert saved[who][key] > 0, (who, key)
    assert saved["student"]["num_parameters"] < saved["teacher"]["num_parameters"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "model.safetensors").exists() and (out / "distillation_config.json").exists()
    assert (out / "tokenizer.json").exists() or (out / "vocab.txt").exists()
    assert (out / "teacher" / "model.safetensors").exists() and (out / "student_no_kd" / "model.safetensors").exists()


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_compare_scores_and_times_two_saved_models(tiny_teacher_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_distill.cli import main
    from hf_distill.models import build_student

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    student_dir = tmp_path / "student"
    build_student(teacher, layers=[1, 3]).save_pretrained(student_dir)
    AutoTokenizer.from_pretrained(tiny_teacher_dir).save_pretrained(student_dir)
    out = tmp_path / "cmp"
    code = main(
        [
            "compare",
            "--teacher_model_name_or_path",
            tiny_teacher_dir,
            "--student_model_name_or_path",
            str(student_dir),
            "--data_dir",
            str(SST2),
            "--max_eval_samples",
            "40",
            "--output_dir",
            str(out),
            "--speed_batch_size",
            "4",
            "--speed_seq_len",
            "16",
        ]
    )
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "sst2" and 0 <= results["student"]["accuracy"] <= 1
    assert results["student"]["num_parameters"] < results["teacher"]["num_parameters"] and results["speedup"] > 0
    assert main(["compare", "--teacher_model_name_or_path", tiny_teacher_dir]) == 2  # no student: clear error


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_augmentation_rewrites_part_of_the_training_set_only(tiny_teacher_dir, tmp_path, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from hf_distill.recipes.glue import augment_train, prepare_data

    glue_args = GlueArguments(data_dir=str(SST2), max_train_samples=200, max_eval_samples=20, augment_prob=0.5)
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    _, data = prepare_data(glue_args, tokenizer, seed=0)
    args = DistillationConfig(output_dir=str(tmp_path), report_to="none", alpha_logits=1.0)
    out = augment_train(glue_args, args, teacher, tokenizer, data)
    unlabelled = [i for i, label in enumerate(out["train"]["labels"]) if label == -100]
    assert 60 < len(unlabelled) < 140 and f"{len(unlabelled)} of 200 training examples" in capsys.readouterr().out
    assert sum(out["train"][i]["input_ids"] != data["train"][i]["input_ids"] for i in unlabelled) > 30
    assert out["validation"] is data["validation"]  # evaluation data is never augmented
    no_kd = DistillationConfig(output_dir=str(tmp_path), report_to="none", alpha_task=1.0, alpha_logits=0.0)
    with pytest.raises(ValueError, match="augment_prob=0.5 needs a KD term"):
        augment_train(glue_args, no_kd, teacher, tokenizer, data)
    with pytest.raises(ValueError, match="augment_replace_prob=2"):
        GlueArguments(augment_replace_prob=2)


def test_student_dropout_sets_every_dropout_of_the_student_only(tmp_path):
    teacher = tiny_bert(num_layers=4, classifier_dropout=0.3)
    task = get_task("sst2")
    glue_args = GlueArguments(student_layers="1,3", student_dropout=0.0)
    args = DistillationConfig(output_dir=str(tmp_path), report_to="none")
    student = make_student(glue_args, args, teacher, task)
    assert student.config.hidden_dropout_prob == 0.0 and student.config.attention_probs_dropout_prob == 0.0
    assert all(m.p == 0.0 for m in student.modules() if isinstance(m, torch.nn.Dropout))
    assert any(m.p > 0.0 for m in teacher.modules() if isinstance(m, torch.nn.Dropout))
    # unset: the teacher's dropout, and the student is the same model either way in eval mode
    default = make_student(GlueArguments(student_layers="1,3"), args, teacher, task)
    assert default.config.hidden_dropout_prob == teacher.config.hidden_dropout_prob
    ids = torch.randint(0, teacher.config.vocab_size, (2, 7))
    want = default.eval()(input_ids=ids).logits
    assert_fp32_close(student.eval()(input_ids=ids).logits, want, n=forward_chain(default.config, 7))
    assert dropout_overrides(glue_args.student_dropout, teacher.config) == {
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout": 0.0,
    }
    # a saved student keeps its dropout
    student.save_pretrained(tmp_path / "s")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s")
    assert reloaded.config.classifier_dropout == 0.0
    assert all(m.p == 0.0 for m in reloaded.modules() if isinstance(m, torch.nn.Dropout))
    # DistilBERT names its dropouts differently, its classification head's included
    distil = DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=2, hidden_dim=32, seq_classif_dropout=0.2)
    assert set(dropout_overrides(glue_args.student_dropout, distil)) == {
        "dropout",
        "attention_dropout",
        "seq_classif_dropout",
        "qa_dropout",
    }


def test_student_dropout_is_checked():
    with pytest.raises(ValueError, match="student_dropout=1.0"):
        GlueArguments(student_dropout=1.0)
    with pytest.raises(ValueError, match="none of the dropout fields"):
        dropout_overrides(0.0, object())


def test_a_base_teachers_new_head_is_seeded(tmp_path):
    """A base model gets a newly initialised classification head: with one seed, every run gets the same teacher,
    whatever the global RNG held before (the demo's teacher, and so its students, differed run to run)."""
    from transformers import BertModel

    from hf_distill.recipes.glue import load_teacher

    base = tmp_path / "base"
    BertModel(tiny_bert(num_layers=2).config).save_pretrained(base)
    glue_args = GlueArguments(task_name="sst2", finetune_teacher=False)
    heads = []
    for seed, noise in [(3, 0), (3, 1), (4, 0)]:
        torch.manual_seed(noise)  # what ran before the job
        args = DistillationConfig(output_dir=str(tmp_path / "out"), teacher_model_name_or_path=str(base), seed=seed)
        teacher = load_teacher(glue_args, args, get_task("sst2"), None, None, None)
        heads.append(teacher.classifier.weight.detach().clone())
    assert torch.equal(heads[0], heads[1])
    assert not torch.equal(heads[0], heads[2])
