"""Causal-LM distillation: the fused chunked loss equals the full-logits loss (values and gradients), the trainer's
chunked path equals its full path, teacher caches, padded vocabularies, on-policy / sequence-level KD."""

from __future__ import annotations

import pytest
import torch
from conftest import GradCatcher, lm_dataset, tiny_llama, tiny_qwen2, tiny_tokenizer, trainer_config
from datasets import Dataset
from numerics import assert_fp32_close, cross_entropy_scale, divergence_scale, forward_chain, grad_scales
from torch import nn

from hf_distill import DistillationTrainer, build_student
from hf_distill.data import DistillationDataCollator
from hf_distill.data.teacher_cache import build_teacher_cache
from hf_distill.losses import get_loss, task_loss
from hf_distill.losses.token import TeacherTargets, fused_causal_lm_loss
from hf_distill.losses.topk import teacher_topk, topk_token_kd
from hf_distill.mapping import ADAPTERS_ATTR
from hf_distill.teachers import CrossTokenizerTeacher, TopKCacheTeacher

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

B, T, D, V = 3, 7, 8, 23
DIVERGENCES = ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]


def inputs(seed=0, teachers=1, teacher_rows=V):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(D, V, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(V, D, generator=g))
    hidden = torch.randn(B, T, D, generator=g, requires_grad=True)
    t_heads = [nn.Linear(D + 2, teacher_rows, bias=True) for _ in range(teachers)]
    t_hidden = [torch.randn(B, T, D + 2, generator=g) for _ in range(teachers)]
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :2] = -100  # a prompt
    labels[2, 4:] = -100  # padding
    return head, hidden, t_heads, t_hidden, labels


def reference(head, hidden, t_logits, labels, alpha_task, alpha_logits, loss, temperature, rows=None, weights=None):
    """Task loss + registry divergence on full logits, written out from the unfused pieces.

    Returns ``(total, task, kd, scale)``, ``scale`` the size of the terms the total adds up (tests/numerics.py).
    """
    from hf_distill.losses import mix_teacher_logits

    logits = head(hidden)  # (B, T, V)
    padded = torch.cat([logits, logits[:, :1]], 1)  # task_loss takes unshifted causal-LM labels: shift them back
    full_labels = torch.cat([torch.full_like(labels[:, :1], -100), labels], 1)
    task = task_loss(padded[:, :-1], full_labels, task="causal_lm")
    mask = labels != -100
    rows = rows or V
    target = mix_teacher_logits([t[..., :rows] for t in t_logits], weights or [1.0] * len(t_logits), temperature, loss)
    kd = get_loss("logits", loss)(logits[..., :rows], target, mask=mask, temperature=temperature)
    scales = (
        cross_entropy_scale(logits),
        divergence_scale(logits[..., :rows], target, temperature=temperature, mask=mask),
    )
    scale = alpha_task * scales[0] + alpha_logits * scales[1]
    return alpha_task * task + alpha_logits * kd, (task, scales[0]), (kd, scales[1]), scale


# the chains of additions behind a loss over these inputs: the head's width, the vocabulary, the tokens
N_LOSS = D + V + B * T


@pytest.mark.parametrize("loss", DIVERGENCES)
@pytest.mark.parametrize("chunk_size", [1, 5, 64])
def test_fused_loss_equals_task_plus_kd_on_full_logits(loss, chunk_size):
    head, hidden, t_heads, t_hidden, labels = inputs()
    t_logits = [h(x) for h, x in zip(t_heads, t_hidden)]
    want, want_task, want_kd, scale = reference(head, hidden, t_logits, labels, 0.3, 0.7, loss, 2.0)
    got, terms = fused_causal_lm_loss(
        hidden,
        head,
        labels=labels,
        mask=labels != -100,
        teacher=TeacherTargets(hidden=t_hidden, heads=t_heads),
        alpha_task=0.3,
        alpha_logits=0.7,
        loss=loss,
        temperature=2.0,
        chunk_size=chunk_size,
    )
    assert_fp32_close(got, want, scale=scale, n=N_LOSS, msg="total")
    assert_fp32_close(terms["task"], want_task[0], scale=want_task[1], n=N_LOSS, msg="task")
    assert_fp32_close(terms["logits"], want_kd[0], scale=want_kd[1], n=N_LOSS, msg="kd")
    for g, w in zip(torch.autograd.grad(got, [hidden, head.weight]), torch.autograd.grad(want, [hidden, head.weight])):
        assert_fp32_close(g, w, n=2 * N_LOSS, msg="grad")  # the loss's chains, then back through the head


def test_fused_loss_with_two_teachers_padded_rows_and_a_normaliser():
    head, hidden, t_heads, t_hidden, labels = inputs(seed=1, teachers=2, teacher_rows=V + 5)
    t_logits = [h(x) for h, x in zip(t_heads, t_hidden)]
    want, _, _, scale = reference(
        head, hidden, t_logits, labels, 1.0, 1.0, "kl", 1.0, rows=V - 3, weights=[0.25, 0.75]
    )
    n = int((labels != -100).sum())
    got, _ = fused_causal_lm_loss(
        hidden,
        head,
        labels=labels,
        mask=labels != -100,
        teacher=TeacherTargets(logits=t_logits, weights=[0.25, 0.75]),
        alpha_task=1.0,
        alpha_logits=1.0,
        vocab_rows=V - 3,
        normalizer=2 * n,  # e.g. the count of a two-micro-batch window
        chunk_size=4,
    )
    assert_fp32_close(got, want / 2, scale=scale / 2, n=N_LOSS + 2)  # and a mixture of 2 teachers


def test_fused_loss_from_a_topk_cache_equals_topk_kd_on_full_logits():
    head, hidden, t_heads, t_hidden, labels = inputs(seed=2)
    ids, logprobs = teacher_topk(t_heads[0](t_hidden[0]).detach(), k=5, temperature=2.0)
    mask = labels != -100
    want = topk_token_kd(head(hidden), ids, logprobs, mask=mask, loss="jsd", temperature=2.0)
    got, terms = fused_causal_lm_loss(
        hidden,
        head,
        labels=labels,
        mask=mask,
        teacher=TeacherTargets(topk_ids=ids, topk_logprobs=logprobs),
        alpha_task=0.0,
        alpha_logits=1.0,
        loss="jsd",
        temperature=2.0,
        chunk_size=3,
    )
    assert set(terms) == {"logits"}
    scale = divergence_scale(head(hidden), t_heads[0](t_hidden[0]), temperature=2.0, mask=mask)
    assert_fp32_close(got, want, scale=scale, n=N_LOSS)
    assert_fp32_close(torch.autograd.grad(got, hidden)[0], torch.autograd.grad(want, hidden)[0], n=2 * N_LOSS)


def test_fused_loss_without_targets_is_zero_not_nan():
    head, hidden, *_ = inputs()
    labels = torch.full((B, T), -100)
    got, terms = fused_causal_lm_loss(
        hidden, head, labels=labels, mask=labels != -100, teacher=None, alpha_task=1.0, alpha_logits=0.0
    )
    assert got.item() == 0.0 and terms["task"].item() == 0.0


# ---- the trainer ----


def lm_config(out, **kw):
    lm = {"per_device_train_batch_size": 4, "max_steps": 2, "alpha_task": 0.5, "alpha_logits": 1.0, "temperature": 2.0}
    return trainer_config(out, **{**lm, **kw})


def first_step(out, chunk, teacher=None, student=None, data=None, **kw):
    """Loss, logged terms and gradients of one compute_loss + backward on the first 8 rows, and that batch."""
    teacher = teacher or tiny_llama(seed=1)
    student = student or build_student(teacher, layers=[0, 3])
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=lm_config(out, kd_chunk_size=chunk, **kw),
        train_dataset=data or lm_dataset(n=8),
        data_collator=DistillationDataCollator(pad_token_id=0),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    student.train()
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    logged = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    return trainer, loss.detach(), logged, grads, batch


def step_scales(trainer, batch, logged):
    """The sizes of the terms behind each logged loss of a step (tests/numerics.py): the student's cross-entropy and
    its divergence to the teacher over both models' logits; the hidden-state MSE adds squares (its own value)."""
    with torch.no_grad():
        ids, attention = batch["input_ids"], batch["attention_mask"]
        student = trainer.model(input_ids=ids, attention_mask=attention).logits[:, :-1]
        teacher = trainer.teachers[0].model(input_ids=ids, attention_mask=attention).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    temperature = trainer.args.temperature
    return {
        "loss/task": cross_entropy_scale(student),
        "loss/logits": divergence_scale(student, teacher, temperature=temperature, mask=mask),
        "loss/hidden": logged["loss/hidden"],
    }


@pytest.mark.parametrize("loss", ["kl", "jsd"])
def test_trainer_chunked_path_equals_full_logits_path(tmp_out, loss):
    chunked, loss_c, logged_c, grads_c, batch = first_step(tmp_out + "c", 5, logit_loss=loss, alpha_hidden=1.0)
    full, loss_f, logged_f, grads_f, _ = first_step(tmp_out + "f", 0, logit_loss=loss, alpha_hidden=1.0)
    assert chunked._fused and not full._fused
    assert logged_c.keys() == logged_f.keys() == {"loss/task", "loss/logits", "loss/hidden"}
    scales = step_scales(full, batch, logged_f)
    # the two paths differ in the head and the loss: its width, the vocabulary and the tokens are the chains
    config = full.model.config
    n = config.hidden_size + config.vocab_size + int(batch["attention_mask"].sum())
    for key in logged_c:
        assert_fp32_close(logged_c[key], logged_f[key], scale=scales[key], n=n, msg=key)
    total_scale = 0.5 * scales["loss/task"] + scales["loss/logits"] + scales["loss/hidden"]  # alpha_task = 0.5
    assert_fp32_close(loss_c, loss_f, scale=total_scale, n=n, msg="loss")
    assert grads_c.keys() == grads_f.keys() and len(grads_c) > 10
    scales = grad_scales(grads_f)
    for name in grads_c:  # then back through the student
        n_grad = 2 * n + config.num_hidden_layers * config.hidden_size
        assert_fp32_close(grads_c[name], grads_f[name], scale=scales[name], n=n_grad, msg=name)


def test_chunked_student_forward_computes_one_position_of_logits(tmp_out):
    trainer, *_ = first_step(tmp_out, 4)
    seen = []
    head = trainer.model.get_output_embeddings()
    handle = head.register_forward_hook(lambda m, a, out: seen.append(tuple(out.shape)))
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.compute_loss(trainer.model, batch)
    handle.remove()
    assert seen and all(shape[1] == 1 for shape in seen)  # the (B, T, V) logits are never built


def test_padded_teacher_vocabulary_is_aligned_on_the_shared_rows(tmp_out):
    tokenizer = tiny_tokenizer()
    teacher = tiny_qwen2(seed=1)
    teacher.resize_token_embeddings(112)  # the same 99-token tokenizer, embeddings padded to 112 (as Qwen2.5-7B)
    student = tiny_qwen2(num_layers=2, seed=2)
    args = lm_config(tmp_out, kd_chunk_size=4)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=lm_dataset(n=8),
        processing_class=tokenizer,
        teacher_processing_class=tokenizer,
        data_collator=DistillationDataCollator(pad_token_id=0),
    )
    assert trainer.vocab_rows == 99
    trainer.train()
    other = tiny_tokenizer(extra_words=("zebra",))  # one word swapped in: a different vocabulary
    crossed = DistillationTrainer(
        model=tiny_qwen2(num_layers=2), teacher_model=teacher, args=args, processing_class=tokenizer,
        teacher_processing_class=other,
    )  # fmt: skip
    assert isinstance(crossed.teachers[0], CrossTokenizerTeacher)  # distilled across tokenizers, aligned by text
    assert crossed.vocab_rows is None


def test_training_from_a_teacher_cache_without_the_teacher(tmp_path):
    teacher = tiny_llama(seed=1)
    data = lm_dataset(n=16)
    cache_dir = str(tmp_path / "cache")
    build_teacher_cache(teacher, data, k=8, temperature=2.0, output_dir=cache_dir, batch_size=4)
    from hf_distill.data.teacher_cache import load_teacher_cache

    cached, meta = load_teacher_cache(cache_dir, temperature=2.0)
    student = build_student(teacher, layers=[0, 3])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DistillationTrainer(
        model=student,
        teacher_model=None,
        args=lm_config(str(tmp_path / "out"), kd_chunk_size=4, max_steps=3, remove_unused_columns=True),
        train_dataset=cached,
        data_collator=DistillationDataCollator(pad_token_id=0),
    )
    # the soft targets come from the cache columns alone: no teacher model is loaded or run
    assert [type(t) for t in trainer.teachers] == [TopKCacheTeacher] and trainer.teachers[0].model is None
    seen = []
    original = trainer.compute_loss

    def spy(model, inputs, *a, **kw):
        seen.append(set(inputs))
        return original(model, inputs, *a, **kw)

    trainer.compute_loss = spy
    trainer.train()
    assert all({"teacher_topk_ids", "teacher_topk_logprobs"} <= keys for keys in seen)  # survived column removal
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in before.items())
    logged = [h for h in trainer.state.log_history if "loss/logits" in h]
    assert logged and all(h["loss/logits"] > 0 for h in logged)
    with pytest.raises(ValueError, match="teacher cache without the teacher"):
        DistillationTrainer(
            model=student, args=lm_config(str(tmp_path / "o2"), alpha_hidden=1.0), train_dataset=cached
        )


def test_cached_loss_equals_live_topk_loss(tmp_path):
    """The loss from a float32 cache equals topk_token_kd against the live teacher."""
    teacher = tiny_llama(seed=1)
    data = lm_dataset(n=8)
    cached = build_teacher_cache(teacher, data, k=6, temperature=1.0, dtype="float32", batch_size=8)
    student = build_student(teacher, layers=[1, 2])
    trainer = DistillationTrainer(
        model=student,
        args=lm_config(str(tmp_path), kd_chunk_size=3, alpha_task=0.0, temperature=1.0),
        train_dataset=cached,
        data_collator=DistillationDataCollator(pad_token_id=0),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    got = trainer.compute_loss(student, batch)
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        ids, logprobs = teacher_topk(t_logits, k=6, temperature=1.0)
        s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    mask = batch["labels"][:, 1:] != -100
    want = topk_token_kd(s_logits, ids, logprobs, mask=mask, loss="kl")
    scale = divergence_scale(s_logits, t_logits, mask=mask)
    assert_fp32_close(got, want, scale=scale, n=student.config.hidden_size + V + int(mask.sum()))


def prompt_data(n=8):
    g = torch.Generator().manual_seed(5)
    rows = {"input_ids": [], "labels": [], "prompt_length": []}
    for i in range(n):
        p, c = 2 + i % 3, 3 + i % 2
        ids = torch.randint(4, 99, (p + c,), generator=g).tolist()
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * p + ids[p:])
        rows["prompt_length"].append(p)
    return Dataset.from_dict(rows)


@pytest.mark.parametrize("mode", [{"lmbda": 1.0}, {"seq_kd": True}])
def test_on_policy_and_sequence_level_kd_train_on_generated_completions(tmp_out, mode):
    teacher = tiny_llama(seed=1)
    student = build_student(teacher, layers=[0, 3])
    generated = []
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=lm_config(tmp_out, kd_chunk_size=4, max_new_tokens=5, **mode),
        train_dataset=prompt_data(),
        processing_class=tiny_tokenizer(),
        data_collator=DistillationDataCollator(pad_token_id=0),
    )
    original = trainer._maybe_generate

    def spy(batch):
        out = original(batch)
        generated.append((batch, out))
        return out

    trainer._maybe_generate = spy
    trainer.train()
    assert generated
    for batch, out in generated:
        assert out is not batch and out["input_ids"].shape[1] > batch["prompt_input_ids"].shape[1]
        # the prompts are kept, the targets are the generated tokens only
        for i in range(out["input_ids"].shape[0]):
            prompt = batch["prompt_input_ids"][i][batch["prompt_attention_mask"][i].bool()]
            assert torch.equal(out["input_ids"][i, : len(prompt)], prompt)
            assert (out["labels"][i, : len(prompt)] == -100).all() and (out["labels"][i, len(prompt) :] != -100).any()


def test_on_policy_run_resumed_from_a_checkpoint_equals_an_uninterrupted_one(tmp_out):
    """4 steps in one go, against 2 steps + a resume from checkpoint-2 for the last 2: the same completions are sampled
    (the lambda coin and the sampling stream are saved in the checkpoint), so the same weights come out."""

    def trainer(max_steps=4):
        teacher = tiny_llama(seed=1)
        args = lm_config(
            tmp_out, kd_chunk_size=4, max_new_tokens=5, lmbda=0.5, seq_kd=True, max_steps=max_steps,
            per_device_train_batch_size=2, save_strategy="steps", save_steps=2,
        )  # fmt: skip
        return DistillationTrainer(
            model=build_student(teacher, layers=[0, 3]),
            teacher_model=teacher,
            args=args,
            train_dataset=prompt_data(),
            processing_class=tiny_tokenizer(),
            data_collator=DistillationDataCollator(pad_token_id=0),
        )

    def completions(t):
        """The rows each step trains on: the data's, or completions generated by the student or the teacher."""
        seen, original = [], t._maybe_generate

        def spy(batch):
            out = original(batch)
            seen.append(out["input_ids"].tolist())
            return out

        t._maybe_generate = spy
        return seen

    whole = trainer()
    whole_seen = completions(whole)
    whole.train()
    resumed = trainer()
    resumed_seen = completions(resumed)
    resumed.train(resume_from_checkpoint=f"{tmp_out}/checkpoint-2")
    assert resumed.state.global_step == 4 and len(resumed_seen) == 2 and len(whole_seen) == 4
    assert resumed_seen == whole_seen[2:]  # the same completions for steps 3 and 4
    want = whole.model.state_dict()
    for name, value in resumed.model.state_dict().items():
        torch.testing.assert_close(value, want[name], msg=name)


def test_generation_needs_prompts(tmp_out):
    teacher = tiny_llama(seed=1)
    trainer = DistillationTrainer(
        model=build_student(teacher, layers=[0, 3]),
        teacher_model=teacher,
        args=lm_config(tmp_out, lmbda=1.0),
        train_dataset=lm_dataset(n=8),
        processing_class=tiny_tokenizer(),
    )
    with pytest.raises(ValueError, match="needs prompts"):
        trainer.train()


def test_a_head_that_is_not_linear_falls_back_to_full_logits(tmp_out, caplog):
    teacher = tiny_llama(seed=1)
    teacher.config.final_logit_softcapping = 30.0  # as Gemma 2: the fused loss cannot apply it per chunk
    trainer = DistillationTrainer(
        model=build_student(teacher, layers=[0, 3]), teacher_model=teacher, args=lm_config(tmp_out, kd_chunk_size=8)
    )
    assert not trainer._fused
    assert "final_logit_softcapping=30.0" in caplog.text


def test_no_kd_baseline_needs_no_teacher_and_steps_build_no_kv_cache(tmp_out):
    student = tiny_llama(num_layers=2, seed=2)
    trainer = DistillationTrainer(
        model=student,
        args=lm_config(tmp_out, alpha_task=1.0, alpha_logits=0.0, kd_chunk_size=4),
        train_dataset=lm_dataset(n=8),
        data_collator=DistillationDataCollator(pad_token_id=0),
    )
    assert trainer.teachers == []
    calls = []
    student.register_forward_pre_hook(lambda m, a, kw: calls.append(kw.get("use_cache")), with_kwargs=True)
    trainer.train()
    assert calls and all(c is False for c in calls)  # a training step keeps no key/value cache alive


def accumulated_grads(out, batch, accum):
    teacher = tiny_llama(seed=1)
    student = tiny_llama(num_layers=2, hidden=16, heads=2, kv_heads=1, seed=2)  # adapters: widths differ
    catcher = GradCatcher()
    args = lm_config(
        out,
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        max_steps=1,
        kd_chunk_size=5,
        alpha_hidden=1.0,
        max_grad_norm=0,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=lm_dataset(n=8),  # ragged lengths and prompts: target counts differ per micro-batch
        data_collator=DistillationDataCollator(pad_token_id=0),
        callbacks=[catcher],
    )
    trainer.train()
    return catcher.grads


def test_chunked_loss_under_gradient_accumulation_matches_one_big_batch(tmp_out):
    big = accumulated_grads(tmp_out + "a", batch=8, accum=1)
    accumulated = accumulated_grads(tmp_out + "b", batch=2, accum=4)
    assert big.keys() == accumulated.keys() and any(ADAPTERS_ATTR in n for n in big)
    # the micro-batches sum their tokens in other orders: every chain of the step (forward, loss, backward) differs
    n = 2 * forward_chain(tiny_llama(num_layers=2, hidden=16, heads=2, kv_heads=1).config, 12) + 8 * 12
    scales = grad_scales(big)
    for name in big:
        assert_fp32_close(accumulated[name], big[name], scale=scales[name], n=n, msg=name)


@pytest.mark.parametrize("loss", ["kl", "jsd"])  # kl: the closed-form gradient; jsd: autograd
def test_fused_loss_with_ignored_labels_inside_the_mask(loss):
    """Rows in the mask whose label is -100 get the KD term but no cross-entropy (both code paths)."""
    head, hidden, t_heads, t_hidden, labels = inputs(seed=3)
    t_logits = t_heads[0](t_hidden[0]).detach()
    logits = head(hidden)
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), reduction="sum")
    kd = get_loss("logits", loss)(logits, t_logits, temperature=2.0, normalizer=1)
    want = (0.4 * ce + 0.6 * kd) / (B * T)
    got, _ = fused_causal_lm_loss(
        hidden, head, labels=labels, mask=None, teacher=TeacherTargets(logits=[t_logits]),
        alpha_task=0.4, alpha_logits=0.6, loss=loss, temperature=2.0, chunk_size=4,
    )  # fmt: skip
    scale = 0.4 * cross_entropy_scale(logits) + 0.6 * divergence_scale(logits, t_logits, temperature=2.0)
    assert_fp32_close(got, want, scale=scale, n=N_LOSS)
    for g, w in zip(torch.autograd.grad(got, [hidden, head.weight]), torch.autograd.grad(want, [hidden, head.weight])):
        assert_fp32_close(g, w, n=2 * N_LOSS)
