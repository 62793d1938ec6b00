"""The encoder teacher cache (hf_distill.data.encoder_cache, hf_distill.teachers.EncoderCacheTeacher): what it stores
(real tokens only, float16), that a run from it gives the live teacher's loss terms to float16 rounding without
running the teacher, and what it refuses."""

from __future__ import annotations

import copy
import json
import math
import os

import pytest
import torch
from conftest import classification_dataset, tiny_bert, tiny_tokenizer
from numerics import assert_fp32_close
from transformers import DataCollatorWithPadding

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.constants import TEACHER_CACHE_INDEX
from hf_distill.data import (
    ENCODER_META_FILE,
    build_encoder_cache,
    is_encoder_cache,
    load_encoder_cache,
    with_cache_index,
)
from hf_distill.data.teacher_cache import meta_checksum
from hf_distill.losses.attention import relation_target
from hf_distill.teachers import EncoderCacheTeacher, ModelTeacher, TeacherRequest

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
EVERYTHING = TeacherRequest(logits=True, hidden_layers=(0, 2, 4), attention_layers=(2, 4), qkv_layers=(2, 4))


def ragged(dataset):
    """The rows without their padding (as tokenize_glue writes them)."""

    def cut(row):
        n = sum(row["attention_mask"])
        return {"input_ids": row["input_ids"][:n], "attention_mask": row["attention_mask"][:n]}

    return dataset.map(cut)


def collate(dataset, rows):
    return dict(DataCollatorWithPadding(tiny_tokenizer())([dataset[i] for i in rows]))


def count_forwards(model) -> list:
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    return calls


def test_cached_outputs_are_the_live_ones_in_float16_at_real_tokens_and_zeros_at_padding(tmp_path):
    teacher = tiny_bert(seed=1)
    data = with_cache_index(ragged(classification_dataset(n=10)))
    cache = build_encoder_cache(teacher, data, EVERYTHING, str(tmp_path / "cache"), batch_size=4)
    batch = collate(data, [7, 2, 9, 0])  # rows in another order than built, padded to this batch's longest
    assert batch[TEACHER_CACHE_INDEX].tolist() == [7, 2, 9, 0]  # the index column survives the collator
    got = cache.outputs(batch, EVERYTHING)
    want = ModelTeacher(teacher, length_groups=1).outputs(batch, EVERYTHING)
    mask = batch["attention_mask"].bool()
    half = torch.float16
    assert_fp32_close(got.logits, want.logits, dtype=half, msg="logits")
    for i in EVERYTHING.hidden_layers:
        assert_fp32_close(got.hidden_states[i][mask], want.hidden_states[i][mask], dtype=half, msg=f"hidden {i}")
        assert not got.hidden_states[i][~mask].any()
    assert got.hidden_states[1] is None and got.hidden_states[3] is None
    pairs = mask[:, None, :, None] & mask[:, None, None, :]  # (B, 1, T, T) real query and key
    for i in EVERYTHING.attention_layers:
        g, w = got.attentions[i - 1], want.attentions[i - 1]
        assert_fp32_close(g[pairs.expand_as(g)], w[pairs.expand_as(w)], dtype=half, msg=f"attention {i}")
        assert not g[~pairs.expand_as(g)].any()
    for i in EVERYTHING.qkv_layers:
        for g, w in zip(got.qkv[i], want.qkv[i], strict=True):
            assert_fp32_close(g[mask], w[mask], dtype=half, msg=f"qkv {i}")
    # and it is the same after a round trip through the folder
    loaded = load_encoder_cache(str(tmp_path / "cache"), dataset=data, teacher=teacher, request=EVERYTHING)
    again = loaded.outputs(batch, EVERYTHING)
    assert torch.equal(again.logits, got.logits) and torch.equal(again.qkv[4][2], got.qkv[4][2])


def test_cached_maps_sit_at_the_real_tokens_of_left_padded_and_full_batches():
    teacher = tiny_bert(seed=1)
    data = with_cache_index(ragged(classification_dataset(n=6)))
    request = TeacherRequest(attention_layers=(2,), hidden_layers=(0, 3), qkv_layers=(1,))
    cache = build_encoder_cache(teacher, data, request, batch_size=4)
    full = collate(data, [3, 3])  # no padding at all: as the live teacher
    live = ModelTeacher(teacher, length_groups=1).outputs(full, request)
    got = cache.outputs(full, request)
    assert_fp32_close(got.attentions[1], live.attentions[1], dtype=torch.float16, msg="full rows")
    for i in (0, 3):  # hidden states and Q/K/V of full rows take a path of their own (no padding to place)
        assert_fp32_close(got.hidden_states[i], live.hidden_states[i], dtype=torch.float16, msg=f"hidden {i}")
    for g, w in zip(got.qkv[1], live.qkv[1], strict=True):
        assert_fp32_close(g, w, dtype=torch.float16, msg="qkv 1")
    request = TeacherRequest(attention_layers=(2,))
    right = collate(data, range(6))
    shift = (right["attention_mask"] == 0).sum(1).tolist()  # each row's padding, moved in front of its tokens
    left = {k: torch.stack([r.roll(s) for r, s in zip(right[k], shift, strict=True)]) for k in right}
    left[TEACHER_CACHE_INDEX] = right[TEACHER_CACHE_INDEX]
    assert not bool(left["attention_mask"][:, 0].all()) and bool(left["attention_mask"][:, -1].all())
    # the same stored maps, at each row's last positions instead of its first
    got, stored = cache.outputs(left, request).attentions[1], cache.outputs(right, request).attentions[1]
    assert torch.equal(got, torch.stack([m.roll((s, s), (-2, -1)) for m, s in zip(stored, shift, strict=True)]))


def test_the_stored_size_has_no_padding(tmp_path):
    teacher = tiny_bert(seed=1)  # hidden 32, 4 heads, 2 labels
    data = classification_dataset(n=16)  # every row padded to 12 positions; the cache keeps the real ones
    request = TeacherRequest(logits=True, hidden_layers=(2, 4), attention_layers=(4,), qkv_layers=(2,))
    build_encoder_cache(teacher, data, request, str(tmp_path / "cache"), batch_size=5)
    lengths = torch.tensor([sum(m) for m in data["attention_mask"]])
    assert int(lengths.sum()) < 16 * 12  # the data are padded indeed
    # float16: 2 logits an example; 2 hidden states and 3 projections of 32 a token; 4 heads a (query, key) pair
    want = 2 * (16 * 2 + int(lengths.sum()) * (2 + 3) * 32 + int((lengths**2).sum()) * 4)
    cache = load_encoder_cache(str(tmp_path / "cache"))
    assert sum(t.numel() * t.element_size() for k, t in cache.tensors.items() if k != "lengths") == want
    assert all(t.dtype == torch.float16 for k, t in cache.tensors.items() if k != "lengths")
    assert os.path.getsize(tmp_path / "cache" / "encoder_cache.safetensors") < want + 4096


@pytest.mark.parametrize("attention_loss", ["relation", "mse", "relation_stored"])
def test_a_run_from_the_cache_has_the_live_teachers_loss_terms(attention_loss, tmp_path):
    """relation_stored: the cache holds the relation distributions (relation_heads), not the Q/K/V."""
    stored = attention_loss == "relation_stored"
    attention_loss = "relation" if stored else attention_loss
    teacher = tiny_bert(seed=1)
    student = tiny_bert(num_layers=2, seed=2, **NO_DROPOUT)
    data = with_cache_index(ragged(classification_dataset(n=12)))
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        alpha_task=0.5,
        alpha_logits=0.5,
        alpha_hidden=1.0,
        alpha_attention=1.0,
        attention_loss=attention_loss,
        temperature=2.0,
    )
    live = DistillationTrainer(model=copy.deepcopy(student), teacher_model=teacher, args=args)
    request = live.plan.request(0, chunked=False)
    assert request.qkv_layers if attention_loss == "relation" else request.attention_layers
    heads = live.plan.settings.relation_heads[0] if stored else None
    cache = build_encoder_cache(teacher, data, request, batch_size=5, relation_heads=heads)
    assert (cache.relation_heads, any(k.startswith("q.") for k in cache.tensors)) == (
        heads,
        attention_loss == "relation" and not stored,
    )
    cached = DistillationTrainer(model=copy.deepcopy(student), teacher_model=cache, args=args)
    batch = collate(data, range(12))
    for trainer in (live, cached):
        trainer.model.train()
        trainer.compute_loss(trainer.model, batch)
    for term in ("task", "logits", "hidden", "attention"):
        want, got = live._metrics["train"][f"loss/{term}"], cached._metrics["train"][f"loss/{term}"]
        assert_fp32_close(got, want, n=32, dtype=torch.float16, msg=term)


def test_training_from_the_cache_never_runs_the_teacher(tmp_path):
    teacher = tiny_bert(seed=1)
    calls = count_forwards(teacher)
    data = with_cache_index(ragged(classification_dataset(n=16)))
    request = TeacherRequest(logits=True, hidden_layers=(0, 2, 4), qkv_layers=(2, 4))  # what the run below asks
    build_encoder_cache(teacher, data, request, str(tmp_path / "cache"))
    built = len(calls)
    assert built > 0
    # the live teacher is at hand (for batches without the index column), but training batches come from the cache
    cache = load_encoder_cache(
        str(tmp_path / "cache"), dataset=data, teacher=teacher, request=request, source=ModelTeacher(teacher)
    )
    student = tiny_bert(num_layers=2, seed=2)
    args = DistillationConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        max_steps=4,
        per_device_train_batch_size=4,
        logging_steps=1,
        alpha_hidden=1.0,
        alpha_attention=1.0,
        attention_loss="relation",
        layer_map="uniform",
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=cache,
        args=args,
        train_dataset=data,
        data_collator=DataCollatorWithPadding(tiny_tokenizer()),
    )
    assert trainer.plan.request(0, chunked=False) == request
    trainer.train()
    assert len(calls) == built  # not run once more
    logged = trainer.state.log_history[0]
    assert {"loss/logits", "loss/hidden", "loss/attention"} <= set(logged)
    # a batch without the index column (an evaluation batch) goes to the live teacher
    batch = collate(data.remove_columns(TEACHER_CACHE_INDEX), range(4))
    cache.outputs(batch, request)
    assert len(calls) > built


@pytest.fixture
def built(tmp_path):
    teacher = tiny_bert(seed=1)
    data = ragged(classification_dataset(n=8))
    request = TeacherRequest(logits=True, hidden_layers=(2,), qkv_layers=(4,))
    path = str(tmp_path / "cache")
    build_encoder_cache(teacher, data, request, path)
    return teacher, data, request, path


def one_line(err) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_flipped_byte_is_refused(built):
    teacher, data, request, path = built
    file = os.path.join(path, "encoder_cache.safetensors")
    raw = bytearray(open(file, "rb").read())
    raw[-3] ^= 0x01
    open(file, "wb").write(bytes(raw))
    with pytest.raises(ValueError) as err:
        load_encoder_cache(path, dataset=data, teacher=teacher, request=request)
    assert "is damaged: encoder_cache.safetensors does not match the checksum" in one_line(err)


def test_a_damaged_meta_file_is_refused(built):
    teacher, data, request, path = built
    meta = os.path.join(path, ENCODER_META_FILE)
    text = open(meta).read()
    assert '"num_examples": 8' in text
    open(meta, "w").write(text.replace('"num_examples": 8', '"num_examples": 9'))
    with pytest.raises(ValueError) as err:
        load_encoder_cache(path)
    assert "damaged hf_distill_encoder_cache.json (its checksum differs)" in one_line(err)


def test_another_teacher_is_refused(built):
    _, data, request, path = built
    with pytest.raises(ValueError) as err:
        load_encoder_cache(path, dataset=data, teacher=tiny_bert(seed=3), request=request)
    assert "other teacher weights" in one_line(err)


def test_other_data_are_refused(built):
    teacher, data, request, path = built
    with pytest.raises(ValueError) as err:
        load_encoder_cache(path, dataset=data.shuffle(seed=0), teacher=teacher, request=request)
    assert "other training data" in one_line(err)


def test_a_request_the_cache_does_not_hold_is_refused(built):
    teacher, data, request, path = built
    more = TeacherRequest(logits=True, hidden_layers=(2, 3), qkv_layers=(4,))
    with pytest.raises(ValueError) as err:
        load_encoder_cache(path, dataset=data, teacher=teacher, request=more)
    assert "holds no hidden layer 3" in one_line(err)
    cache = load_encoder_cache(path)  # and a batch that asks for more is refused too
    batch = collate(with_cache_index(data), range(3))
    with pytest.raises(ValueError) as err:
        cache.outputs(batch, more)
    assert "holds no hidden layer 3" in one_line(err)


def test_a_batch_of_other_rows_or_without_the_index_is_refused(built):
    _, data, request, path = built
    cache = load_encoder_cache(path)
    assert isinstance(cache, EncoderCacheTeacher) and is_encoder_cache(path) and not is_encoder_cache(path + "x")
    lengths = [sum(m) for m in data["attention_mask"]]
    other = next(i for i, n in enumerate(lengths) if n != lengths[0])
    batch = collate(with_cache_index(data), [0])
    batch[TEACHER_CACHE_INDEX] = torch.tensor([other])  # row 0's tokens named as another row
    with pytest.raises(ValueError) as err:
        cache.outputs(batch, request)
    assert f"Cache row {other} holds {lengths[other]} tokens but its batch row has {lengths[0]}" in one_line(err)
    del batch[TEACHER_CACHE_INDEX]
    with pytest.raises(ValueError) as err:
        cache.outputs(batch, request)
    assert "without the 'teacher_cache_index' column" in one_line(err)


def test_an_unfinished_cache_and_bad_arguments_are_refused(tmp_path, built):
    teacher, data, request, path = built
    os.remove(os.path.join(path, ENCODER_META_FILE))
    with pytest.raises(ValueError) as err:
        load_encoder_cache(path)
    assert "is not a finished encoder teacher cache" in one_line(err)
    with pytest.raises(ValueError, match="asks for something"):
        build_encoder_cache(teacher, data, TeacherRequest())
    with pytest.raises(ValueError, match="chunked=False"):
        build_encoder_cache(teacher, data, TeacherRequest(logits=True, chunked=True))
    nan = tiny_bert(seed=1)
    with torch.no_grad():
        nan.classifier.weight.fill_(float("nan"))
    with pytest.raises(ValueError) as err:
        build_encoder_cache(nan, data, request, str(tmp_path / "nan"))
    assert "logits is NaN" in one_line(err) and not is_encoder_cache(str(tmp_path / "nan"))


def test_a_cache_of_relations_is_smaller_for_short_rows_and_serves_its_head_count_only(tmp_path):
    teacher = tiny_bert(seed=1)  # hidden 32
    data = with_cache_index(ragged(classification_dataset(n=16)))
    request = TeacherRequest(logits=True, qkv_layers=(2, 4))
    path = str(tmp_path / "cache")
    cache = build_encoder_cache(teacher, data, request, path, batch_size=5, relation_heads=2)
    lengths = torch.tensor([len(r) for r in data["input_ids"]])
    # float16 relations of 2 heads per (query, key) pair, float32 sums of p log p per token and head: 3 of each a block
    want = 2 * 16 * 2 + 2 * 3 * (2 * 2 * int((lengths**2).sum()) + 4 * 2 * int(lengths.sum()))
    assert sum(t.numel() * t.element_size() for k, t in cache.tensors.items() if k != "lengths") == want
    batch = collate(data, [3, 1, 5])
    got = cache.outputs(batch, request).qkv[4][1]  # the keys' relations of block 4
    mask = batch["attention_mask"]
    live = relation_target(ModelTeacher(teacher).outputs(batch, request).qkv[4][1], mask, 2)
    assert_fp32_close(got.probs.float(), live.probs, dtype=torch.float16)
    assert_fp32_close(got.neg_entropy, live.neg_entropy, dtype=torch.float16, scale=math.log(12))
    loaded = load_encoder_cache(path, request=request, relation_heads=2)
    assert torch.equal(loaded.outputs(batch, request).qkv[2][0].probs, cache.outputs(batch, request).qkv[2][0].probs)
    with pytest.raises(ValueError, match="self-relations of 2 heads but the run uses 4"):
        load_encoder_cache(path, request=request, relation_heads=4)
    with pytest.raises(ValueError, match="right-padded"):
        cache.outputs({**batch, "attention_mask": mask.flip(1)}, request)
    with pytest.raises(ValueError, match="relation_heads must be a positive"):
        build_encoder_cache(teacher, data, request, relation_heads=0)
    left = data.map(lambda r: {"input_ids": [0, *r["input_ids"]], "attention_mask": [0, *r["attention_mask"]]})
    with pytest.raises(ValueError, match="right-padded rows only"):
        build_encoder_cache(teacher, left, request, relation_heads=2)
    # a cache of a newer format than this hf_distill reads is refused by name (its meta checksum made good)
    meta_path = os.path.join(path, ENCODER_META_FILE)
    with open(meta_path) as f:
        meta = json.load(f)
    meta["format_version"] += 1
    meta["checksum"] = meta_checksum(meta)
    with open(meta_path, "w") as f:
        json.dump(meta, f)
    with pytest.raises(ValueError, match="newer than this hf_distill reads"):
        load_encoder_cache(path)
