"""GLUE job with unlabelled examples: KD-only rows beside the labelled ones, a no-KD baseline on the same steps."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import tiny_bert, word_tokenizer
from transformers import AutoTokenizer

from hf_distill import DistillationConfig
from hf_distill.recipes.glue import GlueArguments, prepare_data, run


@pytest.fixture
def sst2(shared_dir) -> Path:
    return shared_dir / "data" / "glue" / "SST-2"


@pytest.fixture
def tiny_teacher_dir(tmp_path, sst2):
    lines = (sst2 / "dev.tsv").read_text().splitlines()[1:]
    words = Counter(w for line in lines for w in line.split("\t")[0].split())
    folder = tmp_path / "teacher"
    tiny_bert(num_layers=4).save_pretrained(folder)
    word_tokenizer([w for w, _ in words.most_common(94)]).save_pretrained(folder)
    return str(folder)


def test_unlabelled_examples_are_further_examples_without_labels(tiny_teacher_dir, sst2):
    tokenizer = AutoTokenizer.from_pretrained(tiny_teacher_dir)
    plain = GlueArguments(data_dir=str(sst2), max_train_samples=100, max_eval_samples=10)
    _, labelled_only = prepare_data(plain, tokenizer, seed=3)
    both = GlueArguments(data_dir=str(sst2), max_train_samples=100, unlabelled_train_samples=60, max_eval_samples=10)
    _, data = prepare_data(both, tokenizer, seed=3)
    # the labelled set does not change when unlabelled examples are added
    assert data["train"]["input_ids"] == labelled_only["train"]["input_ids"]
    assert set(data["train"]["labels"]) <= {0, 1}
    assert len(data["unlabelled"]) == 60 and set(data["unlabelled"]["labels"]) == {-100}
    # the unlabelled rows are the next ones of the same shuffle: other sentences
    _, more = prepare_data(GlueArguments(data_dir=str(sst2), max_train_samples=160), tokenizer, seed=3)
    assert data["unlabelled"]["input_ids"] == more["train"]["input_ids"][100:]
    with pytest.raises(
        ValueError, match="--unlabelled_train_samples 70000 leaves no labelled example of sst2's 67349"
    ):
        prepare_data(GlueArguments(data_dir=str(sst2), unlabelled_train_samples=70000), tokenizer, seed=0)
    # max_train_samples is a cap: the labelled examples are what the unlabelled ones leave
    capped = GlueArguments(data_dir=str(sst2), max_train_samples=10**6, unlabelled_train_samples=67000)
    _, data = prepare_data(capped, tokenizer, seed=0)
    assert (len(data["train"]), len(data["unlabelled"])) == (349, 67000)
    with pytest.raises(ValueError, match="unlabelled_train_samples=-1"):
        GlueArguments(unlabelled_train_samples=-1)


def test_job_distills_on_unlabelled_examples_and_gives_the_baseline_as_many_steps(tiny_teacher_dir, tmp_path, sst2):
    glue_args = GlueArguments(
        data_dir=str(sst2),
        student_layers="1,3",
        max_seq_length=32,
        max_train_samples=32,
        unlabelled_train_samples=64,
        max_eval_samples=16,
        baseline_no_kd=True,
        speed_batch_size=2,
        speed_seq_len=8,
    )
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"),
        teacher_model_name_or_path=tiny_teacher_dir,
        per_device_train_batch_size=16,
        num_train_epochs=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
    )
    results = run(glue_args, args)
    assert results["train_examples"] == 32 and results["unlabelled_examples"] == 64
    assert results["max_steps"] == 6 and results["no_kd_max_steps"] == 6  # (32 + 64) / 16 steps each
    assert json.loads((tmp_path / "out" / "results.json").read_text())["no_kd_max_steps"] == 6
    no_kd = dataclasses.replace(args, alpha_task=1.0, alpha_logits=0.0)
    with pytest.raises(ValueError, match="unlabelled_train_samples=64 needs a KD term"):
        run(glue_args, no_kd)
