"""Teachers trained beside the student (hf_distill.teachers.TrainedTeacher): distill_mode mutual (peers that learn
from each other's current predictions) and cotrain (a teacher fine-tuned on the task while it teaches). Gradients of
the first step against the definitions, gradient accumulation, saving, resuming and the errors."""

from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F
from conftest import NO_DROPOUT, classification_dataset, sst2_job_argv, tiny_bert, trainer_config
from numerics import assert_fp32_close, forward_chain, grad_scales
from transformers import AutoModelForSequenceClassification, TrainerCallback

from hf_distill import DistillationTrainer
from hf_distill.teachers import ModelTeacher, TrainedTeacher

T = 2.0
# the first step's raw gradients (no clipping) on the first rows, in order
EXACT = dict(max_steps=2, learning_rate=1e-2, temperature=T, max_grad_norm=0, train_sampling_strategy="sequential")


def config(out, **kw):
    return trainer_config(out, **{**EXACT, "alpha_task": 0.5, "alpha_logits": 0.5, **kw})


class FirstGrads(TrainerCallback):
    """The gradients of the first optimizer step, of the student and of each trained teacher."""

    def __init__(self, teachers):
        self.teachers, self.student, self.peers = teachers, None, None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.student is None:
            self.student = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            self.peers = [{n: p.grad.clone() for n, p in t.inner.named_parameters()} for t in self.teachers]


def kl(target_logits, logits):
    """``T^2 KL(softmax(target / T) || softmax(logits / T))``, mean over rows."""
    p = F.softmax(target_logits / T, -1)
    return (p * (F.log_softmax(target_logits / T, -1) - F.log_softmax(logits / T, -1))).sum(-1).mean() * T**2


def reference_grads(model, loss_fn):
    model = copy.deepcopy(model).train()
    model.zero_grad()
    loss_fn(model).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def train_pair(tmp_out, mode, save_dir="peer_1", **kw):
    """A student and a mutual peer / co-trained teacher (tiny BERTs without dropout) trained in ``mode``; returns
    ``(trainer, FirstGrads, student and other as they started, the first batch's inputs and labels)``."""
    student = tiny_bert(seed=2, **NO_DROPOUT)
    other = tiny_bert(seed=3, **NO_DROPOUT)
    s0, o0 = copy.deepcopy(student), copy.deepcopy(other)
    data = classification_dataset(n=32)
    trained = TrainedTeacher(other, learns_from_peers=mode == "mutual", save_dir=save_dir)
    grads = FirstGrads([trained])
    trainer = DistillationTrainer(
        model=student,
        teacher_model=trained,
        args=config(tmp_out, distill_mode=mode, **kw),
        train_dataset=data,
        callbacks=[grads],
    )
    trainer.train()
    rows = data[:8]
    inputs = {k: torch.tensor(rows[k]) for k in ("input_ids", "attention_mask")}
    return trainer, grads, s0, o0, inputs, torch.tensor(rows["labels"])


@pytest.mark.parametrize("mode", ["mutual", "cotrain"])
def test_first_step_gradients_are_those_of_each_models_own_objective(tmp_out, mode):
    """Student: task + KD to the other model (detached). Mutual peer: task + KD to the student (detached);
    co-trained teacher: its task loss alone. Neither gradient leaks into the other model."""
    trainer, grads, s0, o0, inputs, labels = train_pair(tmp_out, mode, max_steps=1)
    student, other = trainer.model, trainer.teachers[0].inner
    with torch.no_grad():
        s_logits, o_logits = s0(**inputs).logits, o0(**inputs).logits

    def student_loss(m):
        z = m(**inputs).logits
        return 0.5 * F.cross_entropy(z, labels) + 0.5 * kl(o_logits, z)

    def other_loss(m):
        z = m(**inputs).logits
        if mode == "cotrain":
            return F.cross_entropy(z, labels)
        return 0.5 * F.cross_entropy(z, labels) + 0.5 * kl(s_logits, z)

    n = 2 * forward_chain(student.config, 12) + 8  # forward and backward through a model, a batch of 8
    for got, model, fn in ((grads.student, s0, student_loss), (grads.peers[0], o0, other_loss)):
        want = reference_grads(model, fn)
        assert got.keys() >= want.keys()
        scales = grad_scales(want)
        for name, g in want.items():
            assert_fp32_close(got[name], g, scale=scales[name], n=n, msg=name)
    logged = [h for h in trainer.state.log_history if "loss" in h][0]
    assert "loss/peer_1/task" in logged and ("loss/peer_1/logits" in logged) == (mode == "mutual")
    # both moved, and the teacher's parameters are an optimizer group of their own
    assert any(not torch.equal(a, b) for a, b in zip(other.parameters(), o0.parameters()))
    groups = trainer.optimizer.param_groups
    assert {id(p) for p in other.parameters()} <= {id(p) for p in groups[-1]["params"]}


def test_a_kd_delay_keeps_the_student_on_its_labels_while_the_teacher_learns(tmp_out):
    """kd_delay_steps 2: the student's first steps are on its task loss alone (the KD weights at 0), the co-trained
    teacher's on its own task loss (never delayed); from step 3 the student distils."""
    trainer, grads, s0, o0, inputs, labels = train_pair(tmp_out, "cotrain", "teacher", kd_delay_steps=2, max_steps=3)
    n = 2 * forward_chain(s0.config, 12) + 8
    for got, model, weight in ((grads.student, s0, 0.5), (grads.peers[0], o0, 1.0)):
        want = reference_grads(model, lambda m, w=weight: w * F.cross_entropy(m(**inputs).logits, labels))
        scales = grad_scales(want)
        for name, g in want.items():
            assert_fp32_close(got[name], g, scale=scales[name], n=n, msg=name)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h.get("loss/logits", 0) > 0 for h in logged] == [False, False, True]
    assert all(h["loss/teacher/task"] > 0 for h in logged)


@pytest.mark.parametrize("mode", ["frozen", "cotrain"])
def test_a_kd_delay_without_a_task_loss_is_refused_before_training(tmp_out, mode):
    """kd_delay_steps with alpha_task 0 leaves the student no loss before the delay ends: a frozen run crashed at its
    first backward (a float 0 has no .backward), a cotrain run trained only the teacher. Refused by the config."""
    with pytest.raises(ValueError, match=r"^kd_delay_steps 2 with alpha_task 0\.0: .*set alpha_task > 0") as err:
        config(tmp_out, distill_mode=mode, kd_delay_steps=2, alpha_task=0.0, alpha_logits=1.0, max_steps=4)
    assert "\n" not in str(err.value)


def test_a_peer_has_its_own_learning_rate(tmp_out):
    peer = TrainedTeacher(tiny_bert(seed=3), learning_rate=5e-4, save_dir="peer_1")
    trainer = DistillationTrainer(
        model=tiny_bert(seed=2), teacher_model=peer, args=config(tmp_out, distill_mode="mutual", max_steps=1),
        train_dataset=classification_dataset(n=16),
    )  # fmt: skip
    trainer.create_optimizer()
    lrs = {id(p): g["lr"] for g in trainer.optimizer.param_groups for p in g["params"]}
    assert {lrs[id(p)] for p in peer.inner.parameters()} == {5e-4}
    assert {lrs[id(p)] for p in trainer.model.parameters()} == {1e-2}


def test_under_gradient_accumulation_each_models_first_step_is_the_same(tmp_out):
    def first(**kw):
        other = TrainedTeacher(tiny_bert(seed=3, **NO_DROPOUT), save_dir="peer_1")
        grads = FirstGrads([other])
        DistillationTrainer(
            model=tiny_bert(seed=2, **NO_DROPOUT), teacher_model=other,
            args=config(tmp_out, distill_mode="mutual", max_steps=1, **kw),
            train_dataset=classification_dataset(n=32), callbacks=[grads],
        ).train()  # fmt: skip
        return grads

    whole, split = (
        first(per_device_train_batch_size=8),
        first(per_device_train_batch_size=4, gradient_accumulation_steps=2),
    )
    n = 2 * forward_chain(tiny_bert().config, 12) + 8
    for a, b in ((whole.student, split.student), (whole.peers[0], split.peers[0])):
        scales = grad_scales(a)
        for name in a:
            assert_fp32_close(b[name], a[name], scale=scales[name], n=n, msg=name)


def test_each_peer_is_saved_in_its_own_loadable_folder_and_resumes(tmp_out):
    from conftest import tiny_tokenizer

    constant = dict(lr_scheduler_type="constant")

    def run(out, max_steps, **kw):
        peers = [TrainedTeacher(tiny_bert(seed=s, **NO_DROPOUT), save_dir=f"peer_{i}") for i, s in ((1, 3), (2, 4))]
        trainer = DistillationTrainer(
            model=tiny_bert(seed=2, **NO_DROPOUT), teacher_model=peers,
            args=config(out, distill_mode="mutual", max_steps=max_steps, **constant, **kw),
            train_dataset=classification_dataset(n=64), processing_class=tiny_tokenizer(),
        )  # fmt: skip
        return trainer, peers

    straight, peers = run(tmp_out + "-straight", 4)
    straight.train()
    straight.save_model()
    for i, peer in enumerate(peers, start=1):
        folder = os.path.join(tmp_out + "-straight", f"peer_{i}")
        loaded = AutoModelForSequenceClassification.from_pretrained(folder)
        assert all(torch.equal(a, b) for a, b in zip(loaded.parameters(), peer.inner.parameters()))
        assert os.path.isfile(os.path.join(folder, "tokenizer.json"))
    first, _ = run(tmp_out, 2, save_strategy="steps", save_steps=2)
    first.train()
    resumed, again = run(tmp_out, 4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=os.path.join(tmp_out, "checkpoint-2"))
    for a, b in zip(peers, again):
        for x, y in zip(a.inner.parameters(), b.inner.parameters()):
            torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_modes_given_the_wrong_models_are_refused(tmp_out):
    def make(mode, teacher):
        return DistillationTrainer(
            model=tiny_bert(seed=2), teacher_model=teacher, args=config(tmp_out, distill_mode=mode),
            train_dataset=classification_dataset(n=16),
        )  # fmt: skip

    with pytest.raises(ValueError, match="distill_mode mutual needs at least one peer besides the student"):
        make("mutual", None)
    with pytest.raises(ValueError, match="distill_mode cotrain trains one teacher beside the student, got 2"):
        make("cotrain", [tiny_bert(seed=3), tiny_bert(seed=4)])
    with pytest.raises(ValueError, match="which cannot be trained: pass the model itself"):
        make("cotrain", ModelTeacher(tiny_bert(seed=3)))
    # a model given as is becomes a trained teacher
    trainer = make("cotrain", tiny_bert(seed=3))
    assert isinstance(trainer.teachers[0], TrainedTeacher) and not trainer.teachers[0].learns_from_peers


def test_a_trained_teachers_gradients_are_cleared_after_every_step_even_a_skipped_one():
    """The Trainer zeroes the student's gradients alone; a step the optimizer skipped (fp16 overflow) must not leave
    a trained teacher's gradients to add into the next step."""
    from hf_distill.teachers.hooks import TeacherSteps

    peer = TrainedTeacher(tiny_bert(seed=3), save_dir="peer_1")
    for skipped in (False, True):
        for p in peer.inner.parameters():
            p.grad = torch.ones_like(p)
        TeacherSteps([peer], lambda: None, lambda s=skipped: s).on_optimizer_step(None, None, None)
        assert all(p.grad is None for p in peer.inner.parameters()), skipped


# ---- the GLUE job: hf-distill glue --distill_mode mutual / cotrain ----


def glue_argv(out, *extra):
    return sst2_job_argv(out, "--student_layers", "1,3", "--max_steps", "3", *extra)


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_the_glue_job_trains_peers_together_and_scores_each(tiny_teacher_dir, tmp_path):
    import json

    from hf_distill.cli import main

    out = str(tmp_path / "dml")
    argv = glue_argv(
        out, "--distill_mode", "mutual", "--num_peers", "3", "--student_model_name_or_path", tiny_teacher_dir
    )
    assert main(argv) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["distill_mode"] == "mutual" and [p["peer"] for p in results["peers"]] == [0, 1, 2]
    assert results["peers"][0]["accuracy"] == results["student"]["accuracy"]
    assert results["peers"][1]["accuracy"] == results["teacher"]["accuracy"]
    assert results["best_peer"] == max(range(3), key=lambda i: results["peers"][i]["accuracy"])
    for folder in (out, os.path.join(out, "peer_1"), os.path.join(out, "peer_2")):
        assert AutoModelForSequenceClassification.from_pretrained(folder).config.num_hidden_layers == 2
    # the peers started apart (their heads drawn with other seeds) and were all trained
    heads = [AutoModelForSequenceClassification.from_pretrained(os.path.join(out, f"peer_{i}")) for i in (1, 2)]
    assert not torch.equal(heads[0].classifier.weight, heads[1].classifier.weight)


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_the_glue_job_co_trains_the_teacher_and_saves_both(tiny_teacher_dir, tmp_path):
    import json

    from hf_distill.cli import main

    out = str(tmp_path / "cotrain")
    argv = glue_argv(
        out, "--distill_mode", "cotrain", "--teacher_model_name_or_path", tiny_teacher_dir,
        "--teacher_learning_rate", "1e-3", "--logging_steps", "1",
    )  # fmt: skip
    assert main(argv) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["distill_mode"] == "cotrain" and results["max_steps"] == 3
    teacher = AutoModelForSequenceClassification.from_pretrained(os.path.join(out, "teacher"))
    base = AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir)
    assert not torch.equal(teacher.bert.embeddings.word_embeddings.weight, base.bert.embeddings.word_embeddings.weight)
    assert AutoModelForSequenceClassification.from_pretrained(out).config.num_hidden_layers == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--distill_mode", "mutual", "--num_peers", "1", "--student_model_name_or_path", "MODEL"],
         "--num_peers 1: mutual learning needs at least 2 peers"),
        (["--distill_mode", "mutual", "--teacher_model_name_or_path", "MODEL", "--student_model_name_or_path", "MODEL"],
         "--distill_mode mutual takes no teacher"),
        (["--distill_mode", "mutual"], "Set --student_model_name_or_path: with --distill_mode mutual"),
        (["--distill_mode", "cotrain", "--teacher_model_name_or_path", "MODEL", "--finetune_teacher", "true"],
         "--finetune_teacher True with --distill_mode cotrain"),
    ],
)  # fmt: skip
def test_the_glue_job_refuses_a_mode_given_the_wrong_models(tiny_teacher_dir, tmp_path, capsys, extra, message):
    from hf_distill.cli import main

    extra = [tiny_teacher_dir if e == "MODEL" else e for e in extra]
    assert main(glue_argv(str(tmp_path / "out"), *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_a_co_trained_teacher_asked_nothing_is_not_run_in_evaluation(tmp_out):
    """Its forward is needed in training (its own task loss), not in evaluation when the student reads nothing of it."""
    teacher = TrainedTeacher(tiny_bert(seed=3), learns_from_peers=False, save_dir="teacher")
    calls = []
    teacher.inner.register_forward_hook(lambda *_: calls.append(1))
    trainer = DistillationTrainer(
        model=tiny_bert(seed=2), teacher_model=teacher,
        args=config(tmp_out, distill_mode="cotrain", alpha_task=1.0, alpha_logits=0.0, max_steps=1),
        train_dataset=classification_dataset(n=16), eval_dataset=classification_dataset(n=16),
    )  # fmt: skip
    trainer.train()
    assert len(calls) == 1  # the one training step
    trainer.evaluate()
    assert len(calls) == 1


def test_a_kd_delay_as_long_as_the_run_is_refused(tmp_out):
    with pytest.raises(ValueError, match="kd_delay_steps 3 >= max_steps 3: the student would never learn"):
        config(tmp_out, kd_delay_steps=3, max_steps=3)
