"""Teachers as sources (hf_distill.teachers): what each kind returns for a request, how teachers are made from models,
names and Teacher objects, several teachers all the way down in the trainer, and the docs' own teacher."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import safetensors.torch
import torch
from conftest import classification_dataset, lm_dataset, tiny_bert, tiny_llama, trainer_config
from numerics import assert_fp32_close

from hf_distill import DISTILLATION_CONFIG_FILE, DistillationTrainer, build_student
from hf_distill.mapping import ADAPTERS_FILE
from hf_distill.teachers import (
    ModelTeacher,
    Teacher,
    TeacherOutputs,
    TeacherRequest,
    TopKCacheTeacher,
    as_teacher,
    as_teachers,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}


def batch_of(dataset, n=6):
    rows = dataset[:n]
    return {k: torch.tensor(v) for k, v in rows.items()}


def test_a_model_teacher_gives_what_is_asked_and_no_more():
    model = tiny_bert(seed=1).train()  # a teacher never runs with dropout: outputs() puts it in eval()
    teacher = ModelTeacher(model, length_groups=1)
    batch = batch_of(classification_dataset())
    batch["teacher_topk_ids"] = torch.zeros(6, 12, 2)  # a column that is no model input is left out of the forward
    request = TeacherRequest(logits=True, hidden_layers=(1, 3), attention_layers=(2,), qkv_layers=(4,))
    out = teacher.outputs(batch, request)
    assert not model.training
    with torch.no_grad():
        want = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=True,
            output_attentions=True,
        )
    assert torch.equal(out.logits, want.logits) and out.topk_ids is None and out.last_hidden is None
    assert out.hidden_states[2] is None and all(
        torch.equal(out.hidden_states[i], want.hidden_states[i]) for i in (1, 3)
    )
    assert torch.equal(out.attentions[1], want.attentions[1])
    assert list(out.qkv) == [4] and [tuple(x.shape) for x in out.qkv[4]] == [(6, 12, 32)] * 3
    # asked for nothing but the logits, it returns nothing else; on groups of rows of similar length, the same logits
    grouped = ModelTeacher(model, length_groups=4).outputs(batch, TeacherRequest(logits=True))
    assert grouped.hidden_states is None and grouped.attentions is None and grouped.qkv == {}
    assert_fp32_close(grouped.logits, want.logits, n=4 * 32)


def test_a_chunked_request_gets_the_last_hidden_state_and_the_head():
    model = tiny_llama(seed=1)
    out = ModelTeacher(model).outputs(batch_of(lm_dataset()), TeacherRequest(logits=True, chunked=True))
    with torch.no_grad():
        want = model(**{k: v for k, v in batch_of(lm_dataset()).items() if k != "labels"}, output_hidden_states=True)
    assert out.logits is None and out.head is model.get_output_embeddings()
    assert torch.equal(out.last_hidden, want.hidden_states[4]) and out.has_soft_targets


def test_a_top_k_cache_teacher_reads_the_batch_and_asks_its_model_for_the_rest():
    model = ModelTeacher(tiny_llama(seed=1))
    batch = batch_of(lm_dataset())
    ids, logprobs = torch.zeros(6, 12, 3, dtype=torch.long), torch.full((6, 12, 3), -1.0)
    cached = {**batch, "teacher_topk_ids": ids, "teacher_topk_logprobs": logprobs}
    request = TeacherRequest(logits=True, hidden_layers=(2,))
    out = TopKCacheTeacher(model).outputs(cached, request)
    assert out.topk_ids is ids and out.topk_logprobs is logprobs and out.logits is None
    assert out.hidden_states[2] is not None  # the cache holds no hidden states: the model gave them
    live = TopKCacheTeacher(model).outputs(batch, request)  # a batch without the columns (a generated one)
    assert live.logits is not None and live.topk_ids is None
    alone = TopKCacheTeacher()
    assert alone.model is None and alone.config is None
    assert not alone.outputs(batch, TeacherRequest(logits=True)).has_soft_targets
    assert TopKCacheTeacher(model).config is model.config and TopKCacheTeacher(model).name == model.name


def test_teachers_from_models_names_and_teacher_objects(tmp_path):
    model = tiny_bert(seed=1)
    model.save_pretrained(tmp_path / "teacher")
    mine = TopKCacheTeacher()
    teachers = as_teachers([model, str(tmp_path / "teacher"), mine], task="sequence_classification")
    assert [type(t) for t in teachers] == [ModelTeacher, ModelTeacher, TopKCacheTeacher] and teachers[2] is mine
    assert teachers[0].model is model and teachers[1].model is not model
    assert teachers[1].name == str(tmp_path / "teacher") and teachers[1].num_hidden_layers == 4
    assert as_teachers(None) == [] and as_teacher(mine) is mine
    with pytest.raises(ValueError, match=r"^as_teacher\('.*teacher'\) needs task= to pick the model class"):
        as_teacher(str(tmp_path / "teacher"))
    with pytest.raises(ValueError, match="^A teacher must be a model, a Hub name or local folder, or a hf_distill"):
        as_teacher(3)


def config(out, **kw):
    return trainer_config(out, **{"max_steps": 2, **kw})


def two_teacher_trainer(out, **kw):
    """A student of width 16 learning from a 4-layer teacher of width 32 and a 2-layer one of width 48."""
    first = tiny_bert(seed=1, **NO_DROPOUT)
    second = tiny_bert(num_layers=2, hidden=48, seed=4, **NO_DROPOUT)
    student = build_student(first, layers=[0, 2], hidden_size=16, intermediate_size=20, **NO_DROPOUT)
    args = config(out, teacher_weights=[0.75, 0.25], alpha_hidden=1.0, alpha_attention=1.0, **kw)
    return DistillationTrainer(
        model=student, teacher_model=[first, second], args=args, train_dataset=classification_dataset(n=32)
    )


def test_several_teachers_all_the_way_down(tmp_out):
    trainer = two_teacher_trainer(tmp_out, attention_loss="kl")
    # each teacher its own layer map (against its own depth) and its own projections (to its own width)
    by_teacher = {i: [(m.feature, m.student_layer, m.teacher_layer) for m in trainer.matches if m.teacher == i]
                  for i in (0, 1)}  # fmt: skip
    assert by_teacher[0][:3] == [("hidden", 0, 0), ("hidden", 1, 2), ("hidden", 2, 4)]
    assert by_teacher[1][:3] == [("hidden", 0, 0), ("hidden", 1, 1), ("hidden", 2, 2)]
    widths = {k: p.weight.shape for k, p in trainer.adapters.projections.items()}
    assert widths["hidden_1_2"] == (32, 16) and widths["teacher1_hidden_1_1"] == (48, 16)  # teacher 0: today's keys
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    trainer.compute_loss(trainer.model, batch)
    logged = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    for term in ("hidden", "attention"):
        weighted = 0.75 * logged[f"loss/{term}/teacher_0"] + 0.25 * logged[f"loss/{term}/teacher_1"]
        assert logged[f"loss/{term}"] == pytest.approx(weighted, rel=1e-6)
    # teacher 1's hidden term from the definition: its matched states against the student's, projected to 48
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        s_states = trainer.model(**inputs, output_hidden_states=True).hidden_states
        t_states = trainer.teachers[1].model(**inputs, output_hidden_states=True).hidden_states
        mask = batch["attention_mask"].bool()
        want = 0.0
        for m in (m for m in trainer.matches if m.teacher == 1 and m.feature == "hidden"):
            projected = trainer.adapters.projections[m.key](s_states[m.student_layer])
            want += m.weight * (projected - t_states[m.teacher_layer]).pow(2).mean(-1)[mask].sum() / mask.sum()
    assert logged["loss/hidden/teacher_1"] == pytest.approx(float(want), rel=1e-5)


def test_several_teachers_save_resume_and_strip_per_teacher(tmp_out):
    trainer = two_teacher_trainer(tmp_out, attention_loss="relation", save_strategy="steps", save_steps=2)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert {"loss/hidden/teacher_0", "loss/hidden/teacher_1", "loss/attention/teacher_1"} <= logged.keys()
    checkpoint = os.path.join(tmp_out, "checkpoint-2")
    saved = safetensors.torch.load_file(os.path.join(checkpoint, ADAPTERS_FILE))
    assert any(k.startswith("projections.teacher1_hidden_") for k in saved)
    assert any(k.startswith("projections.hidden_") for k in saved)
    student = safetensors.torch.load_file(os.path.join(checkpoint, "model.safetensors"))
    assert not any("adapters" in k for k in student)  # every teacher's adapters stripped from the student
    record = json.load(open(os.path.join(checkpoint, DISTILLATION_CONFIG_FILE)))
    assert len(record["teachers"]) == 2 and {m["teacher"] for m in record["layer_matches"]} == {0, 1}
    resumed = two_teacher_trainer(tmp_out, attention_loss="relation", max_steps=3)
    resumed._load_from_checkpoint(checkpoint)
    assert all(torch.equal(resumed.adapters.state_dict()[k], v) for k, v in saved.items())
    # a run with the first teacher only has no adapters for teacher 1: refused by name, not loaded in part
    first = tiny_bert(seed=1, **NO_DROPOUT)
    student = build_student(first, layers=[0, 2], hidden_size=16, intermediate_size=20, **NO_DROPOUT)
    alone = DistillationTrainer(model=student, teacher_model=first, args=config(tmp_out, alpha_hidden=1.0))
    with pytest.raises(ValueError, match=r"holds 'projections\.teacher1_hidden_0_0\.bias', which this run has no"):
        alone._load_from_checkpoint(checkpoint)


def test_every_teacher_is_asked_for_its_internals(tmp_out):
    first, second = tiny_llama(seed=1), tiny_llama(seed=4)
    student = build_student(first, layers=[1, 3])
    args = config(tmp_out, alpha_attention=1.0, attention_loss="kl", max_steps=1)
    trainer = DistillationTrainer(model=student, teacher_model=[first, second], args=args, train_dataset=lm_dataset())
    trainer.train()
    assert first.config._attn_implementation == "eager" and second.config._attn_implementation == "eager"
    logged = [h for h in trainer.state.log_history if "loss" in h][-1]
    assert logged["loss/attention/teacher_0"] > 0 and logged["loss/attention/teacher_1"] > 0


def docs_snippet(name: str) -> str:
    """The python block of docs/concepts.md that follows ``<!-- test: name -->``."""
    text = (DOCS / "concepts.md").read_text()
    match = re.search(rf"<!-- test: {name} -->\s*```python\n(.*?)```", text, re.S)
    assert match, f"docs/concepts.md has no block marked {name}"
    return match.group(1)


def test_the_docs_example_of_a_teacher_of_ones_own_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(docs_snippet("own-teacher"), "docs/concepts.md", "exec"), namespace)
    trainer = namespace["trainer"]
    assert isinstance(trainer.teachers[0], Teacher) and not isinstance(trainer.teachers[0], ModelTeacher)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert logged and all(h["loss/logits"] > 0 for h in logged)
    assert isinstance(namespace["teacher"].outputs(namespace["batch"], TeacherRequest(logits=True)), TeacherOutputs)
