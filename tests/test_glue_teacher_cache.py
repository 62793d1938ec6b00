"""``hf-distill glue --teacher_cache DIR`` on a tiny BERT and real SST-2 rows: the cache is built once after the teacher
is fine-tuned, reused by a later run, refused for other data, and the student distilled from it scores as the one
distilled from the live teacher."""

from __future__ import annotations

import ast
import dataclasses
import os
from collections import Counter
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import classification_dataset, tiny_bert, word_tokenizer

from hf_distill import DistillationConfig
from hf_distill.data import ENCODER_META_FILE
from hf_distill.recipes.glue import GlueArguments, cached_teacher, check_teacher_cache, run

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared/data/glue/SST-2"


@pytest.fixture
def teacher_dir(tmp_path, shared_dir):
    """A tiny BERT with a word-level vocabulary of the 94 most common SST-2 dev words, saved with its tokenizer."""
    lines = (SST2 / "dev.tsv").read_text().splitlines()[1:]
    words = Counter(w for line in lines for w in line.split("\t")[0].split())
    folder = tmp_path / "teacher"
    tiny_bert(num_layers=4).save_pretrained(folder)
    word_tokenizer([w for w, _ in words.most_common(94)]).save_pretrained(folder)
    return str(folder)


def job(teacher_dir, out, cache=None):
    glue_args = GlueArguments(
        task_name="sst2",
        data_dir=str(SST2),
        finetune_teacher=True,
        teacher_max_steps=2,
        student_layers="1,3",
        max_seq_length=32,
        max_train_samples=48,
        unlabelled_train_samples=16,
        max_eval_samples=48,
        speed_batch_size=4,
        speed_seq_len=16,
        teacher_cache=cache,
    )
    args = DistillationConfig(
        output_dir=str(out),
        teacher_model_name_or_path=teacher_dir,
        max_steps=4,
        per_device_train_batch_size=16,
        alpha_hidden=1.0,
        alpha_attention=1.0,
        attention_loss="relation",
        layer_map="uniform",
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        logging_steps=1,
    )
    return glue_args, args


def first_step_terms(out: str) -> dict[str, float]:
    """The loss terms the Trainer printed for the first logged step of the student's distillation in a job's stdout
    (``logging_steps=1``; the teacher's fine-tuning logs come first, without KD terms)."""
    line = next(line for line in out.splitlines() if line.startswith("{'loss'") and "'loss/logits'" in line)
    return {k: float(v) for k, v in ast.literal_eval(line).items() if k.startswith("loss")}


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_the_glue_job_builds_the_cache_once_reuses_it_and_scores_as_the_live_teacher(teacher_dir, tmp_path, capsys):
    cache = str(tmp_path / "cache")
    live = run(*job(teacher_dir, tmp_path / "live"))
    live_log = first_step_terms(capsys.readouterr().out)
    first = run(*job(teacher_dir, tmp_path / "first", cache))
    out = capsys.readouterr().out
    assert "running the teacher once over 64 examples" in out  # labelled and unlabelled rows
    built = os.path.getmtime(os.path.join(cache, ENCODER_META_FILE))
    second = run(*job(teacher_dir, tmp_path / "second", cache))
    assert "teacher cache: reusing" in capsys.readouterr().out
    assert os.path.getmtime(os.path.join(cache, ENCODER_META_FILE)) == built
    # the first step (same student, before any update) has the live teacher's loss terms, to float16 rounding of
    # the targets and the log's 4 digits; every KD term is there, and a wrong cache would move them
    cached_log = first_step_terms(out)
    assert set(cached_log) == set(live_log) == {"loss", "loss/task", "loss/logits", "loss/hidden", "loss/attention"}
    for term, value in live_log.items():
        assert cached_log[term] == pytest.approx(value, rel=2e-3, abs=1e-4), term
    # a reused cache gives the very same student
    weights = [safetensors.torch.load_file(tmp_path / name / "model.safetensors") for name in ("first", "second")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert first["student"]["accuracy"] == live["student"]["accuracy"] == second["student"]["accuracy"]
    assert first["teacher"]["accuracy"] == live["teacher"]["accuracy"]
    # fewer unlabelled rows: the same teacher (fine-tuned on the labelled rows), other KD data; refused in one line
    glue_args, args = job(teacher_dir, tmp_path / "other", cache)
    with pytest.raises(ValueError) as err:
        run(dataclasses.replace(glue_args, unlabelled_train_samples=8), args)
    assert "was built on other training data" in str(err.value) and "\n" not in str(err.value)
    # a teacher fine-tuned longer is another teacher
    glue_args, args = job(teacher_dir, tmp_path / "longer", cache)
    with pytest.raises(ValueError) as err:
        run(dataclasses.replace(glue_args, teacher_max_steps=3), args)
    assert "was built with other teacher weights" in str(err.value) and "\n" not in str(err.value)


def test_a_teacher_cache_needs_a_kd_term_and_a_folder_of_its_own(tmp_path):
    glue_args, args = job("unused", tmp_path / "out", str(tmp_path / "cache"))
    no_kd = dataclasses.replace(args, alpha_logits=0.0, alpha_hidden=0.0, alpha_attention=0.0, alpha_task=1.0)
    with pytest.raises(ValueError, match="needs a KD term to cache the teacher for"):
        check_teacher_cache(glue_args, no_kd)
    (tmp_path / "cache").mkdir()
    check_teacher_cache(glue_args, args)  # an empty folder is fine
    (tmp_path / "cache" / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="holds no finished teacher cache but other files"):
        check_teacher_cache(glue_args, args)


def test_evaluation_batches_run_the_live_teacher_as_configured(tmp_path):
    # batches without the cache index (evaluation) go to the live teacher: grouped by length as the run says
    glue_args, args = job("unused", tmp_path / "out", str(tmp_path / "cache"))
    glue_args = dataclasses.replace(glue_args, finetune_teacher=False)
    args = dataclasses.replace(args, teacher_length_groups=1)
    cache, train = cached_teacher(
        glue_args, args, tiny_bert(num_layers=4), tiny_bert(num_layers=2), classification_dataset(n=8)
    )
    assert cache.source.length_groups == 1 and len(train) == 8


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_augmented_rows_are_cached_as_rewritten(teacher_dir, tmp_path, capsys):
    # augmentation rewrites the rows once, before training (seeded), so the cache holds the rewritten rows
    glue_args, args = job(teacher_dir, tmp_path / "aug", str(tmp_path / "cache"))
    glue_args = dataclasses.replace(glue_args, augment_prob=0.5, unlabelled_train_samples=0, max_train_samples=64)
    run(glue_args, args)
    out = capsys.readouterr().out
    assert "training examples rewritten" in out and "running the teacher once over 64 examples" in out
    glue_args, args = job(teacher_dir, tmp_path / "aug_again", str(tmp_path / "cache"))
    run(dataclasses.replace(glue_args, augment_prob=0.5, unlabelled_train_samples=0, max_train_samples=64), args)
    assert "teacher cache: reusing" in capsys.readouterr().out
    glue_args, args = job(teacher_dir, tmp_path / "no_aug", str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="was built on other training data"):  # the rows without their rewrites
        run(dataclasses.replace(glue_args, unlabelled_train_samples=0, max_train_samples=64), args)
