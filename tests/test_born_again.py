"""distill_mode born_again (hf_distill.generations): generations of the same student from the same initial weights,
each taught by the one before, or the last by the ensemble of all; the GLUE job runs and reports them."""

from __future__ import annotations

import copy
import json
import os

import pytest
import safetensors.torch
import torch
from conftest import NO_DROPOUT, classification_dataset, sst2_job_argv, tiny_bert, trainer_config

from hf_distill.generations import train_born_again


def config(out, **kw):
    return trainer_config(out, **{"learning_rate": 1e-2, "distill_mode": "born_again", "generations": 2, **kw})


def test_each_generation_restarts_from_the_same_weights_and_learns_from_the_one_before(tmp_out):
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    initial = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **NO_DROPOUT)
    start = {k: v.clone() for k, v in initial.state_dict().items()}
    made = []

    def make():
        made.append(copy.deepcopy(initial))
        made[-1].load_state_dict(start)
        return made[-1]

    scored = []
    trainers = train_born_again(
        make,
        teacher,
        config(tmp_out, generations=3, teacher_model_name_or_path="org/teacher"),
        on_generation=lambda g, t: scored.append(g),
        train_dataset=classification_dataset(n=32),
    )
    assert scored == [1, 2, 3] and len(made) == 3
    # generation 1 learns from the teacher, generation g from the trained student of generation g - 1
    assert trainers[0].teachers[0].model is teacher
    for g in (1, 2):
        assert trainers[g].teachers[0].model is trainers[g - 1].student and len(trainers[g].teachers) == 1
    # each started from the initial weights (the ones the first generation had before training) and moved away
    for trainer in trainers:
        assert any(not torch.equal(trainer.student.state_dict()[k], v) for k, v in start.items())
    assert all(
        not torch.equal(a, b) for a, b in zip(trainers[1].student.parameters(), trainers[2].student.parameters())
    )
    for g, trainer in enumerate(trainers, start=1):
        folder = os.path.join(tmp_out, f"generation_{g}")
        saved = safetensors.torch.load_file(os.path.join(folder, "model.safetensors"))
        assert all(torch.equal(saved[k], v) for k, v in trainer.student.state_dict().items() if k in saved)
        record = json.load(open(os.path.join(folder, "distillation_config.json")))
        assert record["distill_mode"] == "born_again"
        assert record["teachers"] == (["org/teacher"] if g == 1 else [f"generation {g - 1} student"])


def test_the_last_generation_can_learn_from_the_ensemble_of_all(tmp_out):
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    initial = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **NO_DROPOUT)
    trainers = train_born_again(
        lambda: copy.deepcopy(initial),
        teacher,
        config(tmp_out, generations=3, ensemble_generations=True),
        train_dataset=classification_dataset(n=32),
    )
    last = trainers[-1]
    assert [t.model for t in last.teachers] == [teacher, trainers[0].student, trainers[1].student]
    assert [t.name for t in last.teachers][1:] == ["generation 1 student", "generation 2 student"]
    assert len(trainers[1].teachers) == 1  # only the last generation learns from the ensemble
    assert last.plan.settings.shares(3) == pytest.approx([1 / 3] * 3)  # their soft targets averaged


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(distill_mode="frozen"), "generations 2 chains generations of students, but distill_mode is 'frozen'"),
        (dict(generations=0), "generations must be >= 1, got 0"),
        (dict(generations=1, ensemble_generations=True), "ensemble_generations needs generations >= 2"),
    ],
)
def test_bad_generation_settings_are_refused(tmp_out, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config(tmp_out, **kwargs)


# ---- the GLUE job: hf-distill glue --distill_mode born_again ----


def glue_argv(teacher_dir, out, *extra):
    return sst2_job_argv(
        out, "--distill_mode", "born_again", "--generations", "2", "--teacher_model_name_or_path", teacher_dir,
        "--finetune_teacher", "true", "--teacher_max_steps", "2", "--student_layers", "1,3", "--max_steps", "3",
        *extra,
    )  # fmt: skip


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_the_glue_job_trains_and_scores_each_generation(tiny_teacher_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from hf_distill.cli import main

    out = str(tmp_path / "ban")
    assert main(glue_argv(tiny_teacher_dir, out, "--ensemble_generations", "true")) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["distill_mode"] == "born_again" and results["ensemble_generations"] is True
    first, second = results["generations"]
    assert (first["generation"], second["generation"]) == (1, 2)
    assert len(first["teachers"]) == 1 and second["teachers"][1:] == ["generation 1 student"]
    assert 0 <= first["accuracy"] <= 1 and second["accuracy"] == results["student"]["accuracy"]
    for folder in (out, os.path.join(out, "generation_1"), os.path.join(out, "generation_2")):
        assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--teacher_cache", "CACHE"], "each born_again generation has another"),
        (["--resume_from_checkpoint", "true"], "resume_from_checkpoint true: a born_again run does not resume"),
    ],
)
def test_the_glue_job_refuses_a_born_again_run_it_cannot_do(tiny_teacher_dir, tmp_path, capsys, extra, message):
    from hf_distill.cli import main

    extra = [str(tmp_path / "cache") if e == "CACHE" else e for e in extra]
    assert main(glue_argv(tiny_teacher_dir, str(tmp_path / "out"), *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
