"""distill_mode ema (hf_distill.teachers.EMATeacher): the teacher is the moving average of the student's own weights,
updated after each optimizer step, never trained, saved and resumed with the checkpoint, published with save_ema."""

from __future__ import annotations

import os

import pytest
import safetensors.torch
import torch
from conftest import NO_DROPOUT, classification_dataset, sst2_job_argv, tiny_bert, trainer_config
from numerics import assert_fp32_close
from transformers import TrainerCallback

from hf_distill import DistillationTrainer
from hf_distill.checkpoints import TEACHER_STATE_FILE
from hf_distill.teachers import EMATeacher


def config(out, **kw):
    return trainer_config(
        out, **{"max_steps": 4, "learning_rate": 1e-2, "distill_mode": "ema", "ema_decay": 0.6, **kw}
    )


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


class Snapshots(TrainerCallback):
    """The student's weights after each optimizer step (before the EMA update reads them: the same values)."""

    def __init__(self):
        self.after_step = []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.after_step.append(weights(model))


def load_weights(model, folder: str) -> None:
    """The student's weights from a checkpoint, and nothing else (what DeepSpeed's own loader restores)."""
    model.load_state_dict(safetensors.torch.load_file(os.path.join(folder, "model.safetensors")), strict=False)


def reference_ema(start: dict, steps: list[dict], decay: float, warmup: int = 0) -> dict:
    """``ema_0 = start``; ``ema_{t+1} = d_t ema_t + (1 - d_t) s_{t+1}``, ``d_t = decay * min(1, t / warmup)``."""
    ema = {k: v.double() for k, v in start.items()}
    for t, student in enumerate(steps):
        d = decay if warmup == 0 else decay * min(1.0, t / warmup)
        ema = {k: d * ema[k] + (1 - d) * student[k].double() for k in ema}
    return ema


def test_the_update_rule_and_its_warm_up():
    student = tiny_bert(seed=1)
    teacher = EMATeacher(student, decay=0.9, warmup_steps=4)
    assert teacher.model is not student and all(not p.requires_grad for p in teacher.model.parameters())
    assert [teacher.decay_at(t) for t in range(6)] == pytest.approx([0.0, 0.225, 0.45, 0.675, 0.9, 0.9])
    start = weights(student)
    steps = []
    for _ in range(6):
        with torch.no_grad():
            for p in student.parameters():
                p.add_(torch.randn_like(p))
        steps.append(weights(student))
        teacher.on_optimizer_step(student)
    want = reference_ema(start, steps, 0.9, warmup=4)
    got = dict(teacher.model.named_parameters())
    for k, v in want.items():
        assert_fp32_close(got[k], v.float(), n=6)
    assert teacher.updates == 6
    # no warm-up: the first update already keeps 90% of the start
    plain = EMATeacher(tiny_bert(seed=1), decay=0.9)
    assert plain.decay_at(0) == 0.9


def test_a_16_bit_student_is_averaged_in_float32():
    """In bf16 ``ema + 0.01 * (student - ema)`` rounds back to ``ema`` unless they differ by a quarter of ``ema``: the
    average of a 16-bit student is kept in float32, its 16-bit copy (the teacher) within one rounding of it."""
    student = tiny_bert(seed=1).to(torch.bfloat16)
    teacher = EMATeacher(student, decay=0.99)
    start, steps = weights(student), []
    for _ in range(20):  # each step moves every weight by 2**-7 of itself (exact in bf16)
        with torch.no_grad():
            for p in student.parameters():
                p.mul_(1 + 2**-7)
        steps.append(weights(student))
        teacher.on_optimizer_step(student)
    want = reference_ema(start, steps, 0.99)
    got = dict(teacher.model.named_parameters())
    for k, v in want.items():
        assert got[k].dtype == torch.bfloat16
        torch.testing.assert_close(got[k].double(), v, rtol=2**-8, atol=0)  # one bf16 rounding
        torch.testing.assert_close(teacher.master[k].double(), v, rtol=1e-6, atol=0)
    # the checkpoint holds the float32 average, and a restored teacher continues it
    state = teacher.state_dict()
    assert all(state[f"model.{k}"].dtype == torch.float32 for k in want)
    restored = EMATeacher(tiny_bert(seed=3).to(torch.bfloat16), decay=0.99)
    restored.load_state_dict(state)
    assert restored.updates == 20
    assert all(torch.equal(restored.master[k], teacher.master[k]) for k in want)


def test_the_average_may_live_on_another_device_than_the_student():
    """prepare puts the average on the run's device; a student under a device map has weights on several
    devices. Here the average is on ``meta`` (no data: a stand-in for a second device) and the student on the CPU."""
    student = tiny_bert(seed=1)
    for kind in (torch.float32, torch.bfloat16):
        teacher = EMATeacher(student.to(kind), decay=0.9)
        teacher.model.to("meta")
        teacher.master = {k: v.to("meta") for k, v in teacher.master.items()}
        teacher.on_optimizer_step(student)
        assert teacher.updates == 1 and all(p.device.type == "meta" for p in teacher.model.parameters())


def train(out, **kw):
    student = tiny_bert(seed=2, **NO_DROPOUT)
    start = weights(student)
    snapshots = Snapshots()
    trainer = DistillationTrainer(
        model=student, args=config(out, **kw), train_dataset=classification_dataset(n=64), callbacks=[snapshots]
    )
    trainer.train()
    return trainer, start, snapshots.after_step


def test_ema_mode_follows_the_student_step_by_step_and_is_never_trained(tmp_out):
    trainer, start, steps = train(tmp_out, ema_warmup_steps=2)
    (teacher,) = trainer.teachers
    assert isinstance(teacher, EMATeacher) and teacher.updates == len(steps) == 4
    want = reference_ema(start, steps, 0.6, warmup=2)
    got = dict(teacher.model.named_parameters())
    for k, v in want.items():
        assert_fp32_close(got[k], v.float(), n=4)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.model.parameters()}
    history = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["loss/logits"] >= 0 for h in history)
    # the student moved away from its average (4 steps at lr 1e-2), and was not replaced by it (no save_ema)
    student = dict(trainer.model.named_parameters())
    assert any(not torch.equal(student[k], got[k]) for k in got)


def test_a_skipped_optimizer_step_does_not_move_the_average(tmp_out, monkeypatch):
    """A mixed-precision overflow skips the optimizer step (and the schedule): the student is unchanged, and the
    average must not count it as an update nor be pulled towards the same weights again."""
    from accelerate.optimizer import AcceleratedOptimizer

    step, calls = AcceleratedOptimizer.step, []

    def overflow_on_second(self, closure=None):
        calls.append(1)
        self._is_overflow = len(calls) == 2  # what the gradient scaler reports on inf gradients, without stepping
        return None if self._is_overflow else step(self, closure)

    monkeypatch.setattr(AcceleratedOptimizer, "step", overflow_on_second)
    trainer, start, steps = train(tmp_out, ema_warmup_steps=2)
    assert len(steps) == 4 and all(torch.equal(steps[0][k], steps[1][k]) for k in start)  # step 2 was skipped
    assert trainer.teachers[0].updates == 3
    want = reference_ema(start, [steps[0], *steps[2:]], 0.6, warmup=2)
    got = dict(trainer.teachers[0].model.named_parameters())
    for k, v in want.items():
        assert_fp32_close(got[k], v.float(), n=4)


def test_under_gradient_accumulation_the_average_is_the_same(tmp_out):
    whole, _, _ = train(tmp_out + "-whole", per_device_train_batch_size=8)
    split, _, _ = train(tmp_out + "-split", per_device_train_batch_size=4, gradient_accumulation_steps=2)
    assert whole.teachers[0].updates == split.teachers[0].updates == 4
    a, b = dict(whole.teachers[0].model.named_parameters()), dict(split.teachers[0].model.named_parameters())
    for k in a:  # 4 Adam steps on gradients summed in another order
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_a_resumed_run_continues_the_average(tmp_out, monkeypatch):
    constant = dict(lr_scheduler_type="constant")  # the first 2 steps of a 2-step run are those of a 4-step run
    straight, _, _ = train(tmp_out + "-straight", **constant)
    first, _, _ = train(tmp_out, max_steps=2, save_strategy="steps", save_steps=2, **constant)
    checkpoint = os.path.join(tmp_out, "checkpoint-2")
    state = safetensors.torch.load_file(os.path.join(checkpoint, TEACHER_STATE_FILE.format(0)))
    assert int(state["updates"]) == 2
    # a fresh student under the same config, resumed: the EMA comes back from the checkpoint, not from the student
    student = tiny_bert(seed=5, **NO_DROPOUT)
    second = DistillationTrainer(
        model=student,
        args=config(tmp_out, max_steps=4, save_strategy="steps", save_steps=2, **constant),
        train_dataset=classification_dataset(n=64),
    )
    second.train(resume_from_checkpoint=checkpoint)
    assert second.teachers[0].updates == 4
    # under DeepSpeed the Trainer loads the student itself and never calls _load_from_checkpoint: same average
    third = DistillationTrainer(
        model=tiny_bert(seed=5, **NO_DROPOUT),
        args=config(tmp_out + "-ds", max_steps=4, **constant),
        train_dataset=classification_dataset(n=64),
    )
    monkeypatch.setattr(third, "_load_from_checkpoint", lambda folder, model=None: load_weights(third.model, folder))
    third.train(resume_from_checkpoint=checkpoint)
    assert third.teachers[0].updates == 4
    a = dict(straight.teachers[0].model.named_parameters())
    for resumed in (second, third):
        b = dict(resumed.teachers[0].model.named_parameters())
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
    # a checkpoint without the teacher's state is not whole
    os.remove(os.path.join(checkpoint, TEACHER_STATE_FILE.format(0)))
    assert any(TEACHER_STATE_FILE.format(0) in p for p in second.checkpoint_problems(checkpoint))


def test_a_model_only_checkpoint_holds_the_average_too(tmp_out):
    """save_only_model drops the optimizer state, not the teacher's: a checkpoint without it would never count as
    whole, and a resumed run could not continue the average."""
    first, _, _ = train(tmp_out, max_steps=2, save_strategy="steps", save_steps=2, save_only_model=True)
    checkpoint = os.path.join(tmp_out, "checkpoint-2")
    assert not os.path.exists(os.path.join(checkpoint, "optimizer.pt"))
    assert first.checkpoint_problems(checkpoint) == []
    second = DistillationTrainer(
        model=tiny_bert(seed=5, **NO_DROPOUT),
        args=config(tmp_out, max_steps=3, save_only_model=True),
        train_dataset=classification_dataset(n=64),
    )
    second.train(resume_from_checkpoint=True)
    assert second.teachers[0].updates == 3


def test_save_ema_ends_training_with_the_average_in_the_student(tmp_out):
    trainer, _, _ = train(tmp_out, save_ema=True)
    ema = dict(trainer.teachers[0].model.named_parameters())
    student = dict(trainer.model.named_parameters())
    assert all(torch.equal(student[k], v) for k, v in ema.items())
    trainer.save_model()
    saved = safetensors.torch.load_file(os.path.join(tmp_out, "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in ema.items())


def test_load_best_model_at_end_brings_back_the_best_checkpoints_average(tmp_out):
    """The run ends in its best checkpoint's state: the student's weights and the average's, so save_ema publishes
    the average of that step, not the last one over the best student."""
    scores = iter([0.1, 0.9, 0.2, 0.3])  # step 2 is the best
    trainer = DistillationTrainer(
        model=tiny_bert(seed=2, **NO_DROPOUT),
        args=config(
            tmp_out,
            save_ema=True,
            eval_strategy="steps",
            eval_steps=1,
            save_strategy="steps",
            save_steps=1,
            load_best_model_at_end=True,
            metric_for_best_model="score",
        ),
        train_dataset=classification_dataset(n=64),
        eval_dataset=classification_dataset(n=8, seed=1),
        compute_metrics=lambda _: {"score": next(scores)},
    )
    trainer.train()
    assert trainer.state.best_model_checkpoint.endswith("checkpoint-2")
    (teacher,) = trainer.teachers
    best = safetensors.torch.load_file(os.path.join(tmp_out, "checkpoint-2", TEACHER_STATE_FILE.format(0)))
    assert teacher.updates == 2
    student = dict(trainer.model.named_parameters())
    for k, v in teacher.model.named_parameters():
        assert torch.equal(v, best[f"model.{k}"]) and torch.equal(student[k], v)


@pytest.mark.parametrize("mode", ["ema", "frozen"])
def test_an_ema_teacher_given_by_the_user_is_recorded_as_it_ran(tmp_out, mode):
    """teacher_model=EMATeacher(...) (docs/modes.md) carries its own decay, warm-up and publish: those, not the
    config's defaults, are what distillation_config.json and the model card report."""
    import json

    from hf_distill.publish import render_model_card

    student = tiny_bert(seed=2, **NO_DROPOUT)
    teacher = EMATeacher(student, decay=0.3, warmup_steps=1, publish=True)
    args = config(tmp_out, distill_mode=mode, ema_decay=0.999)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset()
    )
    trainer.train()
    trainer.save_model()
    record = json.load(open(os.path.join(tmp_out, "distillation_config.json")))
    assert (record["distill_mode"], record["ema_decay"], record["ema_warmup_steps"]) == ("ema", 0.3, 1)
    assert record["save_ema"] is True
    assert "(a mean teacher, decay 0.3); these weights are that average" in render_model_card(tmp_out)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(save_ema=True, distill_mode="frozen"), "save_ema saves the student's moving average"),
        (dict(ema_decay=1.0), "ema_decay must be a finite number in [0, 1), got 1.0"),
        (dict(ema_warmup_steps=-1), "ema_warmup_steps must be >= 0"),
        (
            dict(distill_mode="mean"),
            "distill_mode must be one of frozen, ema, born_again, noisy_student, mutual, cotrain, got 'mean'",
        ),
    ],
)
def test_bad_ema_settings_are_refused(tmp_out, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        config(tmp_out, **kwargs)


@pytest.mark.parametrize(
    "mode, why",
    [
        ("ema", "the teacher is the moving average of the student's own weights, kept in the student's dtype"),
        ("mutual", "the peers are trained like the student, each in the dtype it is loaded in"),
    ],
)
def test_teacher_dtype_is_refused_where_no_teacher_is_cast(tmp_out, mode, why, capsys):
    """teacher_dtype casts a frozen teacher; an EMA teacher or a peer is never cast, so it would be silently ignored.
    Refused by the config, before any model is loaded (here: the CLI's one line)."""
    message = f"teacher_dtype bfloat16 with distill_mode {mode}: {why}, so teacher_dtype would be ignored; drop it"
    with pytest.raises(ValueError) as refused:
        config(tmp_out, distill_mode=mode, teacher_dtype="bfloat16")
    assert str(refused.value) == message.removesuffix("drop it") + "drop teacher_dtype."
    assert config(tmp_out, distill_mode="frozen", teacher_dtype="bfloat16").teacher_dtype == "bfloat16"
    from hf_distill.cli import main

    argv = sst2_job_argv(tmp_out, "--distill_mode", mode, "--teacher_dtype", "bfloat16")
    argv += ["--student_model_name_or_path", "./no/such/model"]  # never reached: the config is refused first
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"with distill_mode {mode}: " in err[0], err


@pytest.mark.parametrize("where", ["model", "config"])
def test_a_quantized_student_without_adapters_is_refused_before_it_is_copied(tmp_out, where, monkeypatch):
    """The average is of the weights the student trains; a quantized student without adapters trains none (its
    weights are integers). Refused with one line before the EMA copies it (not by the Trainer, after the copy)."""
    from hf_distill import distillation_plan

    student = tiny_bert(num_layers=2, hidden=16, heads=2)
    if where == "model":
        student.is_quantized = True
        student.quantization_config = {"quant_method": "bitsandbytes"}
    else:
        student.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    data, args = classification_dataset(n=16), config(tmp_out)

    class Copying(EMATeacher):
        def __init__(self, *args, **kwargs):
            pytest.fail("the student was copied")

    monkeypatch.setattr(distillation_plan, "EMATeacher", Copying)
    with pytest.raises(ValueError) as refused:
        DistillationTrainer(model=student, args=args, train_dataset=data)
    assert str(refused.value) == (
        "distill_mode ema averages the student's weights, but BertForSequenceClassification is quantized "
        "(bitsandbytes) without adapters: its weights are not trained and cannot be averaged; attach LoRA adapters "
        "(peft) to it, or load it unquantized."
    )


def test_a_quantized_student_with_lora_adapters_is_averaged_on_its_adapters(tmp_out):
    from peft import LoraConfig, get_peft_model

    base = tiny_bert(num_layers=2, hidden=16, heads=2)
    base.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_8bit": True}
    student = get_peft_model(base, LoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    trainer = DistillationTrainer(model=student, args=config(tmp_out), train_dataset=classification_dataset(n=16))
    ema = trainer.teachers[0]
    assert ema.trained and all("lora" in name or "classifier" in name for name in ema.trained)


def test_ema_mode_with_a_teacher_is_refused(tmp_out):
    with pytest.raises(ValueError, match="distill_mode ema takes no teacher"):
        DistillationTrainer(
            model=tiny_bert(seed=2),
            teacher_model=tiny_bert(seed=1),
            args=config(tmp_out),
            train_dataset=classification_dataset(),
        )
    with pytest.raises(ValueError, match="distill_mode ema takes no teacher \\(given: org/big\\)"):
        DistillationTrainer(
            model=tiny_bert(seed=2),
            args=config(tmp_out, teacher_model_name_or_path="org/big"),
            train_dataset=classification_dataset(),
        )


# ---- the GLUE job: hf-distill glue --distill_mode ema ----


def glue_argv(model_dir, out, *extra):
    return sst2_job_argv(
        out, "--distill_mode", "ema", "--ema_decay", "0.5", "--student_model_name_or_path", model_dir,
        "--student_layers", "1,3", "--max_steps", "4", "--logging_steps", "1", *extra,
    )  # fmt: skip


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_the_glue_job_trains_with_the_moving_average_and_saves_it(tiny_teacher_dir, tmp_path):
    import json

    from transformers import AutoModelForSequenceClassification

    from hf_distill.cli import main

    out = str(tmp_path / "ema")
    assert main(glue_argv(tiny_teacher_dir, out, "--save_ema", "true", "--baseline_no_kd", "true")) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["distill_mode"] == "ema" and results["saved"] == "ema" and results["ema_decay"] == 0.5
    assert results["teacher_model"].startswith("EMA of ") and results["max_steps"] == 4
    # the saved student is the average: it scores as the teacher, and its raw self is kept beside it
    assert results["student"]["accuracy"] == results["teacher"]["accuracy"]
    assert 0 <= results["student_before_ema"]["accuracy"] <= 1 and "kd_gain" in results
    saved = AutoModelForSequenceClassification.from_pretrained(out)
    assert saved.config.num_hidden_layers == 2
    record = json.load(open(os.path.join(out, "distillation_config.json")))
    assert record["distill_mode"] == "ema" and record["teachers"] == [results["teacher_model"]]
    assert record["save_ema"] is True  # the saved weights are the average, whatever the job told its trainer
    # the model card says how it was trained, and names no teacher as its base model
    from hf_distill.publish import render_model_card

    card = render_model_card(out)
    assert "with the exponential moving average of its own weights as its teacher" in card
    assert "decay 0.5); these weights are that average" in card and "base_model" not in card
    # ...and compares it with the raw student, not with a teacher it would keep a share of or outrun
    before = f"{results['student_before_ema']['accuracy']:.4f}"
    assert f"against {before} for the raw student." in card and f"| the raw student | {before} |" in card
    assert "| this model (the moving average) |" in card and "| teacher |" not in card
    assert "of the teacher's parameters" not in card and "Retention" not in card and "Speedup" not in card
    assert "keeps layers 1, 3 (0-based) of the model it started from" in card and "teacher layers" not in card


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--teacher_model_name_or_path", "org/big"], "--distill_mode ema takes no teacher"),
        (["--finetune_teacher", "true"], "--finetune_teacher True has no teacher to act on"),
        (["--layer_map", "0:5", "--alpha_hidden", "1"], "0:5"),
    ],
)
def test_the_glue_job_refuses_an_ema_run_it_cannot_do(tiny_teacher_dir, tmp_path, capsys, extra, message):
    from hf_distill.cli import main

    assert main(glue_argv(tiny_teacher_dir, str(tmp_path / "out"), *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_an_ema_teacher_of_another_student_is_refused_before_training(tmp_out):
    """An EMATeacher built from one model and given with another student: one line, not a KeyError at step 1."""
    other = EMATeacher(tiny_bert(num_layers=2, hidden=16, heads=2, seed=1))
    with pytest.raises(
        ValueError, match=r"\(99, 16\), but the student has \(99, 32\): build the EMATeacher from the student"
    ):
        DistillationTrainer(
            model=tiny_bert(seed=2), teacher_model=other, args=config(tmp_out), train_dataset=classification_dataset()
        )


def test_only_the_weights_the_student_trains_are_averaged():
    """A frozen weight (a LoRA student's base) equals the student's and is not updated every step."""
    student = tiny_bert(seed=1)
    student.bert.embeddings.requires_grad_(False)
    teacher = EMATeacher(student, decay=0.5)
    frozen = "bert.embeddings.word_embeddings.weight"
    assert frozen not in teacher.trained and "classifier.weight" in teacher.trained
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # (moving a frozen weight too, which an optimizer never would: it shows what is read)
    before = dict(teacher.model.named_parameters())[frozen].clone()
    teacher.on_optimizer_step(student)
    got = dict(teacher.model.named_parameters())
    assert torch.equal(got[frozen], before)
    assert_fp32_close(got["classifier.weight"], dict(student.named_parameters())["classifier.weight"] - 0.5, n=2)
