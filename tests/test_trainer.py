"""DistillationTrainer end to end on tiny models: GA exactness, training moves the right weights, save/reload,
resume, logging, checks, causal LMs, several teachers."""

from __future__ import annotations

import json
import math
import os

import pytest
import safetensors.torch
import torch
from conftest import GradCatcher, classification_dataset, lm_dataset, tiny_bert, tiny_llama, trainer_config
from numerics import assert_fp32_close, forward_chain, grad_scales
from transformers import AutoModelForSequenceClassification

from hf_distill import DISTILLATION_CONFIG_FILE, DistillationTrainer, build_student
from hf_distill.mapping import ADAPTERS_ATTR, ADAPTERS_FILE
from hf_distill.report import count_parameters
from hf_distill.schedules import intermediate_scale

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


config = trainer_config


def first_step_grads(out, batch, accum, **kw):
    teacher = tiny_bert(hidden=48, heads=4, seed=1, **NO_DROPOUT)
    student = tiny_bert(num_layers=2, hidden=32, heads=2, seed=2, **NO_DROPOUT)
    catcher = GradCatcher()
    args = config(
        out,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        max_steps=1,
        alpha_task=1.0,
        alpha_logits=1.0,
        alpha_hidden=1.0,
        alpha_attention=1.0,
        attention_loss="relation",
        temperature=3.0,
        max_grad_norm=0,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=lm_free_dataset(), callbacks=[catcher]
    )
    trainer.train()
    return catcher.grads


def lm_free_dataset():
    return classification_dataset(n=8, seq_len=12, seed=3)  # ragged lengths: token counts differ per micro-batch


def test_gradient_accumulation_matches_one_big_batch(tmp_out):
    big = first_step_grads(tmp_out + "a", batch=8, accum=1)
    accumulated = first_step_grads(tmp_out + "b", batch=2, accum=4)
    assert big.keys() == accumulated.keys()
    assert any(ADAPTERS_ATTR in n for n in big)  # widths differ (32 vs 48): projections exist and get gradients
    # micro-batches of 2 against one of 8: the teacher's forward, the student's forward and backward and the sums over
    # tokens all run in other orders (tests/numerics.py)
    teacher, student = tiny_bert(hidden=48, heads=4).config, tiny_bert(num_layers=2, hidden=32, heads=2).config
    n = forward_chain(teacher, 12) + 2 * forward_chain(student, 12) + 8 * 12
    scales = grad_scales(big)
    for name in big:
        assert_fp32_close(accumulated[name], big[name], scale=scales[name], n=n, msg=name)


def test_training_moves_student_and_adapters_not_teacher(tmp_out):
    teacher = tiny_bert(seed=1)
    with torch.no_grad():  # perturb the teacher so that the student has something to learn
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    student = build_student(teacher, layers=[1, 3], hidden_size=24, intermediate_size=30, num_attention_heads=4)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    args = config(tmp_out, alpha_hidden=1.0, alpha_attention=1.0, attention_loss="kl", max_steps=4)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset()
    )
    adapters_before = {k: v.clone() for k, v in trainer.adapters.state_dict().items()}
    assert len(adapters_before) == 6  # three hidden pairs (0:0, 1:2, 2:4), weight + bias each
    trainer.train()
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_before.items())
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training
    changed = [k for k, v in student_before.items() if not torch.equal(student.state_dict()[k], v)]
    assert len(changed) > len(student_before) // 2
    assert all(not torch.equal(trainer.adapters.state_dict()[k], v) for k, v in adapters_before.items())
    history = [h for h in trainer.state.log_history if "loss" in h]
    for key in ("loss/task", "loss/logits", "loss/hidden", "loss/attention"):
        assert all(key in h and h[key] >= 0 for h in history), key


def test_save_writes_the_student_alone_and_reloads(tmp_out):
    teacher = tiny_bert(seed=1)
    student = build_student(teacher, layers=[0, 2], hidden_size=16, intermediate_size=20, num_attention_heads=2)
    args = config(tmp_out, alpha_hidden=1.0, teacher_model_name_or_path="my-org/teacher")
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset()
    )
    trainer.train()
    trainer.save_model()
    weights = safetensors.torch.load_file(os.path.join(tmp_out, "model.safetensors"))
    assert not any(ADAPTERS_ATTR in k for k in weights) and not any("teacher" in k for k in weights)
    assert any(ADAPTERS_ATTR in k for k in trainer.model.state_dict())
    record = json.load(open(os.path.join(tmp_out, DISTILLATION_CONFIG_FILE)))
    assert record["teachers"] == ["my-org/teacher"] and record["student_layers_from_teacher"] == [0, 2]
    assert record["alpha_hidden"] == 1.0 and record["temperature"] == 2.0 and record["layer_map"] == "uniform"
    assert [(m["student_layer"], m["teacher_layer"]) for m in record["layer_matches"]] == [(0, 0), (1, 2), (2, 4)]
    # a plain save_pretrained of the trained student leaves the training-only adapters out as well
    student.save_pretrained(tmp_out + "-plain")
    plain = safetensors.torch.load_file(os.path.join(tmp_out + "-plain", "model.safetensors"))
    assert plain.keys() == weights.keys()
    assert count_parameters(student) == sum(v.numel() for v in weights.values())
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_out).eval()
    batch = classification_dataset(n=4, seed=9)[:]
    inputs = {k: torch.tensor(batch[k]) for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        want = student.eval()(**inputs).logits
        assert_fp32_close(
            reloaded(**inputs).logits, want, n=forward_chain(student.config, inputs["input_ids"].shape[1])
        )


def test_resume_restores_adapters(tmp_out):
    def make(max_steps):
        teacher = tiny_bert(seed=1, **NO_DROPOUT)
        student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **NO_DROPOUT)
        args = config(tmp_out, alpha_hidden=1.0, max_steps=max_steps, save_strategy="steps", save_steps=2)
        return DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset(n=64)
        )

    first = make(2)
    first.train()
    checkpoint = os.path.join(tmp_out, "checkpoint-2")
    saved = safetensors.torch.load_file(os.path.join(checkpoint, ADAPTERS_FILE))
    assert saved and all(torch.equal(first.adapters.state_dict()[k], v) for k, v in saved.items())
    assert not any(
        ADAPTERS_ATTR in k for k in safetensors.torch.load_file(os.path.join(checkpoint, "model.safetensors"))
    )
    second = make(4)
    assert not all(torch.equal(second.adapters.state_dict()[k], v) for k, v in saved.items())
    second._load_from_checkpoint(checkpoint)
    assert all(torch.equal(second.adapters.state_dict()[k], v) for k, v in saved.items())
    second.train(resume_from_checkpoint=checkpoint)
    assert second.state.global_step == 4


def adapter_trainer(out, max_steps=4):
    """A student narrower than its teacher (so projection adapters exist), saving every 2 steps."""
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    student = tiny_bert(num_layers=2, hidden=16, heads=2, seed=2, **NO_DROPOUT)
    args = config(out, alpha_hidden=1.0, max_steps=max_steps, save_strategy="steps", save_steps=2)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset())


def test_resume_true_skips_a_checkpoint_a_crash_cut_short(tmp_out, monkeypatch, caplog):
    """A run killed while writing checkpoint-4 (half an optimizer.pt, no trainer_state.json) resumes from checkpoint-2
    with a warning, instead of failing on checkpoint-4 at every resume."""
    save = DistillationTrainer._save_optimizer_and_scheduler

    def crash_at_step_4(self, output_dir):
        if output_dir.endswith("checkpoint-4"):
            with open(os.path.join(output_dir, "optimizer.pt"), "wb") as f:
                f.write(b"PK\x03\x04 half an optimizer state")
            raise OSError("No space left on device")
        save(self, output_dir)

    with monkeypatch.context() as m:
        m.setattr(DistillationTrainer, "_save_optimizer_and_scheduler", crash_at_step_4)
        with pytest.raises(OSError, match="No space left"):
            adapter_trainer(tmp_out).train()
    assert {"model.safetensors", ADAPTERS_FILE, "optimizer.pt"} <= set(
        os.listdir(os.path.join(tmp_out, "checkpoint-4"))
    )
    second = adapter_trainer(tmp_out, max_steps=6)
    second.train(resume_from_checkpoint=True)
    assert second.state.global_step == 6
    assert "Skipping " + os.path.join(tmp_out, "checkpoint-4") + ", an incomplete checkpoint" in caplog.text
    assert "no trainer_state.json, which the Trainer writes last: the save did not finish" in caplog.text
    # a checkpoint damaged after it was written is skipped too; with none left whole, resuming is a clear error
    caplog.clear()
    for step in (2, 4, 6):
        weights = os.path.join(tmp_out, f"checkpoint-{step}", "model.safetensors")
        with open(weights, "r+b") as f:
            f.truncate(os.path.getsize(weights) - 10)
    with pytest.raises(
        ValueError, match=r"no checkpoint in .* is complete \(checkpoint-6, checkpoint-4, checkpoint-2"
    ):
        adapter_trainer(tmp_out).train(resume_from_checkpoint=True)
    assert "model.safetensors is truncated: its header describes" in caplog.text
    with pytest.raises(ValueError, match=r"checkpoint-4 is an incomplete checkpoint \(model.safetensors is truncated"):
        adapter_trainer(tmp_out).train(resume_from_checkpoint=os.path.join(tmp_out, "checkpoint-4"))


def test_a_checkpoint_without_the_adapters_it_should_hold_is_an_error(tmp_out):
    """Fresh adapters trained against a restored optimizer state would be silently wrong."""
    adapter_trainer(tmp_out, max_steps=2).train()
    checkpoint = os.path.join(tmp_out, "checkpoint-2")
    os.remove(os.path.join(checkpoint, ADAPTERS_FILE))
    second = adapter_trainer(tmp_out)
    with pytest.raises(
        ValueError, match=rf"checkpoint-2 is an incomplete checkpoint \(no {ADAPTERS_FILE} \(the projection"
    ):
        second.train(resume_from_checkpoint=checkpoint)
    with pytest.raises(ValueError, match=f"checkpoint-2 has no {ADAPTERS_FILE}, the weights of this run's projection"):
        second._load_from_checkpoint(checkpoint)  # whatever path leads there (a DeepSpeed or FSDP resume too)
    assert second.state.global_step == 0


def test_evaluate_logs_every_term(tmp_out):
    teacher = tiny_bert(seed=1)
    student = build_student(teacher, layers=[1, 3])
    args = config(
        tmp_out,
        alpha_hidden=1.0,
        alpha_attention=1.0,
        hidden_loss="cosine",
        attention_loss="mse",
        logit_loss="reverse_kl",
    )
    dev = classification_dataset(n=16, seed=5)

    def metrics(p):
        return {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())}

    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, eval_dataset=dev, compute_metrics=metrics
    )
    result = trainer.evaluate()
    for key in (
        "eval_loss",
        "eval_loss/task",
        "eval_loss/logits",
        "eval_loss/hidden",
        "eval_loss/attention",
        "eval_accuracy",
    ):
        assert key in result, key
    # an all-layers student built from the teacher matches it: only the task term remains
    twin = build_student(teacher, layers=[0, 1, 2, 3])
    result = DistillationTrainer(model=twin, teacher_model=teacher, args=args, eval_dataset=dev).evaluate()
    # terms that cancel, to rounding: the reverse KL's p log p of 2 labels at T = 2 (4 T^2 H(p) <= 4 T^2 log 2, see
    # divergence_scale), the cosine's 1 and cos, the MSE's squared differences of probabilities (at most 1)
    n = forward_chain(teacher.config, 12) + 16
    assert_fp32_close(result["eval_loss/logits"], 0.0, scale=4 * 2.0**2 * math.log(2), n=n, msg="logits")
    assert_fp32_close(result["eval_loss/hidden"], 0.0, scale=2.0, n=n, msg="hidden")
    assert_fp32_close(result["eval_loss/attention"], 0.0, scale=1.0, n=n, msg="attention")


def test_label_and_vocab_checks(tmp_out):
    teacher = tiny_bert(id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    swapped = tiny_bert(num_layers=2, id2label={0: "positive", 1: "negative"}, label2id={"positive": 0, "negative": 1})
    with pytest.raises(ValueError, match="different order"):
        DistillationTrainer(model=swapped, teacher_model=teacher, args=config(tmp_out))
    with pytest.raises(ValueError, match="3 labels and the teacher 2"):
        DistillationTrainer(model=tiny_bert(num_labels=3), teacher_model=teacher, args=config(tmp_out))
    small_vocab = tiny_llama(num_layers=2)
    small_vocab.resize_token_embeddings(80)
    with pytest.raises(ValueError, match="80 output rows and the teacher .* 99"):
        DistillationTrainer(model=small_vocab, teacher_model=tiny_llama(), args=config(tmp_out))
    with pytest.raises(ValueError, match="No teacher"):
        DistillationTrainer(model=tiny_bert(), args=config(tmp_out))
    with pytest.raises(ValueError, match="equal head counts"):
        trainer = DistillationTrainer(
            model=tiny_bert(num_layers=2, heads=2),
            teacher_model=teacher,
            args=config(tmp_out, alpha_attention=1.0),
            train_dataset=classification_dataset(),
        )
        trainer.train()


def test_causal_lm_with_sdpa_teacher_switched_to_eager(tmp_out):
    teacher = tiny_llama(seed=1)
    assert teacher.config._attn_implementation == "sdpa"
    student = build_student(teacher, layers=[0, 3])
    args = config(
        tmp_out,
        alpha_task=0.5,
        alpha_logits=1.0,
        logit_loss="jsd",
        alpha_hidden=1.0,
        alpha_attention=1.0,
        attention_loss="kl",
        max_steps=3,
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=lm_dataset())
    assert teacher.config._attn_implementation == "eager" and student.config._attn_implementation == "eager"
    trainer.train()
    assert trainer.task == "causal_lm"
    last = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert all(torch.isfinite(torch.tensor(last[f"loss/{k}"])) for k in ("task", "logits", "hidden", "attention"))


def test_relation_kd_with_different_head_counts_and_widths(tmp_out):
    teacher = tiny_llama(seed=1, heads=4, kv_heads=2)
    student = tiny_llama(num_layers=2, hidden=16, heads=2, kv_heads=1, seed=3)
    args = config(tmp_out, alpha_attention=1.0, attention_loss="relation", layer_map="last", max_steps=2)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=lm_dataset())
    assert student.config._attn_implementation == "sdpa"  # relation KD works with any backend
    trainer.train()
    assert trainer.plan.settings.relation_heads == (2,)
    assert [h for h in trainer.state.log_history if "loss" in h][-1]["loss/attention"] > 0


def test_several_teachers_and_adapter_learning_rate(tmp_out):
    teachers = [tiny_bert(seed=1), tiny_bert(seed=4)]
    student = build_student(teachers[0], layers=[0, 2], hidden_size=16, intermediate_size=20, num_attention_heads=2)
    args = config(tmp_out, teacher_weights=[0.75, 0.25], alpha_hidden=1.0, adapter_learning_rate=5e-2)
    trainer = DistillationTrainer(
        model=student, teacher_model=teachers, args=args, train_dataset=classification_dataset()
    )
    trainer.train()
    adapter_ids = {id(p) for p in trainer.adapters.parameters()}
    groups = [g for g in trainer.optimizer.param_groups if {id(p) for p in g["params"]} == adapter_ids]
    assert len(groups) == 1 and groups[0]["initial_lr"] == 5e-2
    with pytest.raises(ValueError, match="2 entries for 1 teachers"):
        DistillationTrainer(
            model=student, teacher_model=teachers[:1], args=config(tmp_out, teacher_weights=[1.0, 1.0])
        )


def test_regression_head_uses_mse(tmp_out):
    teacher = tiny_bert(num_labels=1, seed=1)
    student = build_student(teacher, layers=[0, 2])
    data = classification_dataset().map(lambda r: {"labels": float(r["labels"]) * 2.5})
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=config(tmp_out, logit_loss="kl"), train_dataset=data
    )
    trainer.train()
    assert trainer.regression and [h for h in trainer.state.log_history if "loss" in h][-1]["loss/task"] > 0


def test_teacher_loaded_by_name_from_a_local_folder(tmp_path):
    teacher = tiny_bert(seed=1)
    teacher.save_pretrained(tmp_path / "teacher")
    student = build_student(teacher, layers=[0])
    args = config(str(tmp_path / "out"), teacher_dtype="float32")
    trainer = DistillationTrainer(
        model=student, teacher_model=str(tmp_path / "teacher"), args=args, train_dataset=classification_dataset()
    )
    assert trainer.teachers[0].model is not teacher and not trainer.teachers[0].model.training
    trainer.train()


def test_no_hooks_left_behind_and_optimizer_built_once(tmp_out):
    teacher = tiny_bert(seed=1)
    student = build_student(teacher, layers=[0, 2], hidden_size=16, intermediate_size=20, num_attention_heads=2)
    args = config(tmp_out, alpha_hidden=1.0, adapter_learning_rate=1e-2, max_steps=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset()
    )
    trainer.train()
    assert not student._forward_hooks
    first = trainer.optimizer
    assert trainer.create_optimizer() is first and len(first.param_groups) == 3  # decay, no decay, adapters
    assert all(len(g["params"]) > 0 for g in first.param_groups)


def test_label_smoothing_reaches_the_task_loss(tmp_out):
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    data = classification_dataset(n=8)
    results = []
    for smoothing in (0.0, 0.2):
        student = build_student(teacher, layers=[0, 2])
        args = config(tmp_out, label_smoothing_factor=smoothing)
        results.append(DistillationTrainer(model=student, teacher_model=teacher, args=args).evaluate(data))
    assert results[0]["eval_loss/task"] != pytest.approx(results[1]["eval_loss/task"])


def test_attention_layer_map_is_separate_from_the_hidden_map(tmp_out):
    teacher = tiny_llama(seed=1)
    student = build_student(teacher, layers=[1, 3])
    args = config(
        tmp_out, alpha_hidden=1.0, alpha_attention=1.0, attention_loss="relation", attention_layer_map="last"
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=lm_dataset())
    pairs = {
        f: [(m.student_layer, m.teacher_layer) for m in trainer.matches if m.feature == f]
        for f in ("hidden", "attention")
    }
    assert pairs == {"hidden": [(0, 0), (1, 2), (2, 4)], "attention": [(2, 4)]}
    trainer.train()
    with pytest.raises(ValueError, match="Bad layer_map entry"):
        config(tmp_out, attention_layer_map="2-4")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_intermediate_schedule_decays_the_hidden_and_attention_weights(tmp_out, schedule):
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    student = build_student(teacher, layers=[1, 3])
    alphas = {"alpha_task": 0.5, "alpha_logits": 0.7, "alpha_hidden": 2.0, "alpha_attention": 3.0}
    args = config(tmp_out, max_steps=4, attention_loss="relation", intermediate_schedule=schedule, **alphas)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset(n=32, seed=4)
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss/hidden" in log]
    assert len(logs) == 4
    for step, log in enumerate(logs):  # the loss of optimizer step `step` is computed before it: global_step = step
        progress = step / 3
        scale = 1 - progress if schedule == "linear" else (1 + math.cos(math.pi * progress)) / 2
        assert log["intermediate_scale"] == pytest.approx(scale)
        expected = (
            alphas["alpha_task"] * log["loss/task"]
            + alphas["alpha_logits"] * log["loss/logits"]
            + scale * (alphas["alpha_hidden"] * log["loss/hidden"] + alphas["alpha_attention"] * log["loss/attention"])
        )
        assert_fp32_close(log["loss"], expected, n=4)  # four float32 terms, weighted and summed
    assert logs[0]["intermediate_scale"] == 1.0 and logs[-1]["intermediate_scale"] == pytest.approx(0.0)
    # evaluation weighs the terms fully, whatever the step: eval_loss is the same objective before and after training
    result = trainer.evaluate(classification_dataset(n=8, seed=6))
    assert "eval_intermediate_scale" not in result
    expected = sum(alphas[f"alpha_{k}"] * result[f"eval_loss/{k}"] for k in ("task", "logits", "hidden", "attention"))
    assert_fp32_close(result["eval_loss"], expected, n=4 + 1)  # and averaged over the batches
    # with gradient accumulation the factor moves once per optimizer step, not per micro-batch
    args = config(tmp_out, max_steps=4, gradient_accumulation_steps=2, intermediate_schedule=schedule, **alphas)
    trainer = DistillationTrainer(
        model=build_student(teacher, layers=[1, 3]),
        teacher_model=teacher,
        args=args,
        train_dataset=classification_dataset(n=64, seed=4),
    )
    trainer.train()
    scales = [log["intermediate_scale"] for log in trainer.state.log_history if "intermediate_scale" in log]
    assert scales == pytest.approx([log["intermediate_scale"] for log in logs])


def test_intermediate_schedule_is_checked_and_constant_by_default(tmp_out):
    assert intermediate_scale("constant", 3, 4) == 1.0 and intermediate_scale("linear", 5, 0) == 1.0
    assert intermediate_scale("linear", 4, 5) == 0.0 and intermediate_scale("cosine", 2, 5) == pytest.approx(0.5)
    assert intermediate_scale("linear", 1, 5) == 0.75 and intermediate_scale("cosine", 0, 1) == 1.0
    with pytest.raises(ValueError, match="intermediate_schedule='step'"):
        config(tmp_out, intermediate_schedule="step")
    teacher = tiny_bert(seed=1, **NO_DROPOUT)
    args = config(tmp_out, max_steps=2, alpha_hidden=1.0)
    trainer = DistillationTrainer(
        model=build_student(teacher, layers=[1, 3]),
        teacher_model=teacher,
        args=args,
        train_dataset=classification_dataset(n=16, seed=4),
    )
    trainer.train()
    assert not any("intermediate_scale" in log for log in trainer.state.log_history)


def test_one_module_as_teacher_and_student_is_refused(tmp_out):
    """Training the student would move its own soft targets, and freezing the teacher would freeze the student."""
    student, other = tiny_bert(num_layers=2, seed=2), tiny_bert(seed=1)
    fix = "pass a separate copy as the teacher (copy.deepcopy(model), or load it again)."
    for teachers, index in ((student, 0), ([other, student], 1)):
        with pytest.raises(ValueError) as err:
            DistillationTrainer(model=student, teacher_model=teachers, args=config(tmp_out))
        assert str(err.value) == f"teacher_model[{index}] is the student model itself; {fix}"
    shares_a_module = tiny_bert(seed=1)
    shares_a_module.bert.embeddings = student.bert.embeddings  # the same Parameter objects
    shares_storage = tiny_bert(seed=1)
    shares_storage.classifier.weight = torch.nn.Parameter(
        student.classifier.weight.data
    )  # a new Parameter, same memory
    for teacher, count, name in ((shares_a_module, 5, "bert.embeddings"), (shares_storage, 1, "classifier.weight")):
        with pytest.raises(ValueError) as err:
            DistillationTrainer(model=student, teacher_model=teacher, args=config(tmp_out))
        assert str(err.value).startswith(
            f"teacher_model[0] shares {count} parameter tensor(s) with the student (e.g. "
        )
        assert name in str(err.value) and str(err.value).endswith(fix)
    assert all(p.requires_grad for p in student.parameters())  # refused before the teacher was frozen


def with_label(dataset, row, column, value):
    labels = [list(x) if isinstance(x, list) else x for x in dataset["labels"]]  # a Column copies rows on access
    if column is None:
        labels[row] = value
    else:
        labels[row][column] = value
    return dataset.remove_columns("labels").add_column("labels", labels)


@pytest.mark.parametrize("kd_chunk_size", [256, 0])  # the chunked (fused) causal-LM loss, and full logits
@pytest.mark.parametrize("alpha_task", [0.5, 0.0])
@pytest.mark.parametrize("bad", [-1, 99])
def test_causal_lm_labels_outside_the_vocabulary_are_refused(tmp_out, kd_chunk_size, alpha_task, bad):
    """The chunked path trained a -1 label as token 0; a label >= V was an IndexError (a device assert on a GPU)."""
    teacher = tiny_llama(seed=1)
    student = build_student(teacher, layers=[0, 3])
    data = with_label(lm_dataset(n=8), 1, 5, bad)  # row 1 is at least 5 tokens long: position 5 is a target
    args = config(tmp_out, alpha_task=alpha_task, alpha_logits=1.0, kd_chunk_size=kd_chunk_size, max_steps=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    assert trainer._fused == (kd_chunk_size > 0)
    with pytest.raises(ValueError) as err:
        trainer.train()
    assert str(err.value) == (
        f"label {bad} at 1 position(s) is outside [0, 99) (vocab_size = 99); a label must lie in that range, or be "
        "-100 (ignored)."
    )


@pytest.mark.parametrize("alpha_task", [0.5, 0.0])
@pytest.mark.parametrize("bad", [-1, 2])
def test_class_labels_outside_num_labels_are_refused(tmp_out, alpha_task, bad):
    teacher, student = tiny_bert(seed=1), tiny_bert(num_layers=2, seed=2)
    data = with_label(classification_dataset(n=8), 3, None, bad)
    args = config(tmp_out, alpha_task=alpha_task, alpha_logits=1.0, max_steps=1)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    with pytest.raises(ValueError) as err:
        trainer.train()
    assert str(err.value) == (
        f"label {bad} at 1 position(s) is outside [0, 2) (num_labels = 2); a label must lie in that range, or be "
        "-100 (ignored)."
    )
