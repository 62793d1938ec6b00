"""distill_mode noisy_student (hf_distill.generations.train_noisy_student): generations of the same student, each
taught by the one before, each on its own noised draw of labelled and unlabelled text, the student with dropout on;
the GLUE job runs and reports them."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from conftest import NO_DROPOUT, classification_dataset, sst2_job_argv, tiny_bert, trainer_config

from hf_distill.generations import dropout_rate, train_noisy_student
from hf_distill.teachers import Teacher


def config(out, **kw):
    return trainer_config(out, **{"learning_rate": 1e-2, "distill_mode": "noisy_student", "generations": 2, **kw})


def unlabelled(dataset):
    """``dataset`` with every label dropped (-100): text the teacher alone labels."""
    return dataset.map(lambda row: {"labels": -100})


def test_each_generation_trains_on_its_own_noised_data_and_learns_from_the_one_before(tmp_out):
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    initial = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, hidden_dropout_prob=0.1)
    draws = {g: unlabelled(classification_dataset(n=32, seed=g)) for g in (1, 2, 3)}
    asked = []

    def noised(g):
        asked.append(g)
        return draws[g]

    trainers = train_noisy_student(
        lambda: copy.deepcopy(initial), teacher, config(tmp_out, generations=3), noised, train_dataset=draws[1]
    )
    assert asked == [1, 2, 3]
    assert [t.train_dataset for t in trainers] == [draws[1], draws[2], draws[3]]
    assert trainers[0].teachers[0].model is teacher
    for g in (1, 2):
        assert trainers[g].teachers[0].model is trainers[g - 1].student
    # on unlabelled text only the teacher's soft targets teach: the task term is absent from the logs
    rows = [row for row in trainers[0].state.log_history if "loss/logits" in row]
    assert rows and all(row["loss/task"] == 0 and row["loss/logits"] > 0 for row in rows)
    for g in (1, 2, 3):
        record = json.load(open(os.path.join(tmp_out, f"generation_{g}", "distillation_config.json")))
        assert record["distill_mode"] == "noisy_student"


def test_the_student_trains_with_its_dropout_on_and_the_teacher_without(tmp_out):
    """The model noise: the student's dropout is active in its training forwards, the frozen teacher runs in eval."""
    teacher = tiny_bert(seed=1, hidden_dropout_prob=0.5)
    initial = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, hidden_dropout_prob=0.1)
    modes = {"student": set(), "teacher": set()}
    teacher.register_forward_hook(lambda m, i, o: modes["teacher"].add(m.training))

    def make():
        student = copy.deepcopy(initial)
        student.register_forward_hook(lambda m, i, o: modes["student"].add(m.training))
        return student

    data = classification_dataset(n=16)
    train_noisy_student(make, teacher, config(tmp_out, generations=1), lambda g: data, train_dataset=data)
    assert modes == {"student": {True}, "teacher": {False}}


def test_the_teacher_reads_the_same_noised_inputs_as_the_student(tmp_out):
    """What docs/modes.md and the model card say: one input_ids column, so a rewritten example reaches the teacher
    rewritten too (it labels it as such); only dropout is on the student alone."""
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    initial = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, hidden_dropout_prob=0.1)
    seen = {"student": [], "teacher": []}
    teacher.register_forward_pre_hook(
        lambda m, a, kw: seen["teacher"].append(kw["input_ids"].clone()), with_kwargs=True
    )

    def make():
        student = copy.deepcopy(initial)
        student.register_forward_pre_hook(
            lambda m, a, kw: seen["student"].append(kw["input_ids"].clone()), with_kwargs=True
        )
        return student

    noised = unlabelled(classification_dataset(n=16, seed=5))
    args = config(tmp_out, generations=1, teacher_length_groups=1)  # one teacher forward per batch
    train_noisy_student(make, teacher, args, lambda g: noised, train_dataset=None)
    assert len(seen["teacher"]) == len(seen["student"]) == 3
    for t, st in zip(seen["teacher"], seen["student"]):
        assert torch.equal(t, st)


@pytest.mark.parametrize(
    "student_kw, kw, message",
    [
        (NO_DROPOUT, {}, "The BertForSequenceClassification student has no dropout, the noisy student's model noise"),
        ({}, {"alpha_logits": 0.0, "alpha_task": 1.0}, "alpha_logits 0.0: a noisy student learns the teacher's"),
        ({}, {"distill_mode": "born_again"}, "train_noisy_student needs distill_mode noisy_student, got 'born_again'"),
    ],
)
def test_a_noisy_student_it_cannot_train_is_refused_before_training(tmp_out, student_kw, kw, message):
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **student_kw)
    data = classification_dataset(n=16)
    with pytest.raises(ValueError, match=message):
        train_noisy_student(lambda: student, teacher, config(tmp_out, **kw), lambda g: data, train_dataset=data)
    assert not os.path.exists(tmp_out)


def test_dropout_rate_reads_modules_and_config():
    assert dropout_rate(tiny_bert(**NO_DROPOUT)) == 0
    assert dropout_rate(tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.2)) == 0.2
    assert dropout_rate(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.3))) == 0.3


# ---- the GLUE job: hf-distill glue --distill_mode noisy_student ----


def glue_argv(teacher_dir, out, *extra):
    return sst2_job_argv(
        out, "--distill_mode", "noisy_student", "--generations", "2", "--teacher_model_name_or_path", teacher_dir,
        "--finetune_teacher", "true", "--teacher_max_steps", "2", "--student_layers", "1,3", "--max_steps", "3",
        "--augment_prob", "0.5", "--augment_neighbours", "2", *extra,
    )  # fmt: skip


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_the_glue_job_noises_each_generation_afresh_and_scores_each(tiny_teacher_dir, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    import hf_distill.recipes.glue as glue
    from hf_distill.cli import main

    seeds, augment = [], glue.augment_dataset

    def recording(*args, seed, **kw):
        seeds.append(seed)
        return augment(*args, seed=seed, **kw)

    monkeypatch.setattr(glue, "augment_dataset", recording)
    tables, neighbours = [], glue.embedding_neighbours
    monkeypatch.setattr(glue, "embedding_neighbours", lambda *a, **k: tables.append(1) or neighbours(*a, **k))
    reads, teacher_inputs = [], Teacher.inputs

    def recording_inputs(self, batch):  # what each teacher reads, and what the student read beside it
        inputs = teacher_inputs(self, batch)
        reads.append((inputs["input_ids"], batch["input_ids"], batch["teacher_input_ids"]))
        return inputs

    monkeypatch.setattr(Teacher, "inputs", recording_inputs)
    out = str(tmp_path / "ns")
    argv = glue_argv(tiny_teacher_dir, out, "--unlabelled_train_samples", "16", "--student_dropout", "0.2")
    assert main(argv) == 0
    assert seeds == [42, 43]  # generation g's augmentation is drawn with seed + g - 1
    # the teacher reads the clean sentence (its copy made before the rewrite), the student the rewritten one
    assert reads and all(torch.equal(teacher, clean) for teacher, _, clean in reads)
    assert any(not torch.equal(student, clean) for _, student, clean in reads)
    assert len(tables) == 1  # the word-replacement table, computed once for every generation's draw
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["distill_mode"] == "noisy_student"
    assert results["noise"] == {"augment_prob": 0.5, "dropout": 0.2}
    assert results["unlabelled_examples"] == 16
    assert [g["generation"] for g in results["generations"]] == [1, 2]
    assert results["generations"][1]["teachers"] == ["generation 1 student"]
    assert results["generations"][1]["accuracy"] == results["student"]["accuracy"]
    for folder in (out, os.path.join(out, "generation_1"), os.path.join(out, "generation_2")):
        assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_hidden_layers == 2


@pytest.mark.usefixtures("shared_dir")
def test_the_glue_jobs_noisy_student_trains_its_baseline_without_kd(tiny_teacher_dir, tmp_path):
    """--baseline_no_kd: the same student on the labelled data alone, a frozen run of one generation whose teacher
    reads the plain batch (the clean copy, teacher_columns, is the noisy student's only)."""
    from hf_distill.cli import main

    out = str(tmp_path / "ns")
    assert main(glue_argv(tiny_teacher_dir, out, "--student_dropout", "0.2", "--baseline_no_kd", "true")) == 0
    assert os.path.isfile(os.path.join(out, "student_no_kd", "config.json"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--augment_prob", "0"], "--distill_mode noisy_student self-trains on text the teacher labels, but there is"),
        (["--student_dropout", "0"], "--student_dropout 0: a noisy student trains with dropout as its model noise"),
        (
            ["--alpha_logits", "0", "--alpha_hidden", "1"],
            "--alpha_logits 0.0: a noisy student learns the teacher's soft targets",
        ),
        (["--teacher_cache", "CACHE"], "each noisy_student generation has another"),
        (["--resume_from_checkpoint", "true"], "a noisy_student run does not resume"),
    ],
)
def test_the_glue_job_refuses_a_noisy_student_it_cannot_train(tiny_teacher_dir, tmp_path, capsys, extra, message):
    from hf_distill.cli import main

    extra = [str(tmp_path / "cache") if e == "CACHE" else e for e in extra]
    assert main(glue_argv(tiny_teacher_dir, str(tmp_path / "out"), *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.usefixtures("shared_dir")
def test_the_glue_job_refuses_a_noisy_student_whose_model_has_no_dropout(tmp_path, capsys):
    from conftest import word_tokenizer

    from hf_distill.cli import main

    folder = tmp_path / "nodrop"
    tiny_bert(num_layers=4, **NO_DROPOUT).save_pretrained(folder)
    word_tokenizer(["good", "bad"]).save_pretrained(folder)
    capsys.readouterr()
    assert main(glue_argv(str(folder), str(tmp_path / "out"))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "(BertConfig) has no dropout, a noisy student's model noise" in err[0], err
