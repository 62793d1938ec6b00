"""Vocabulary checks (tokenizers, padded output rows) and batches built from generated text."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import VOCAB, tiny_llama, tiny_qwen2, tiny_tokenizer
from torch import nn

from hf_distill.generation import generate_completions, pack_completions, sample_sequences
from hf_distill.models.vocab import (
    check_tokenizers,
    first_vocab_difference,
    load_tokenizer_for,
    output_rows,
    shared_vocab_rows,
)

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

PAD, BOS, EOS = 0, 1, 2


def swapped_tokenizer():
    """``tiny_tokenizer``'s vocabulary with 'cat' renamed 'lion': same size, one id now means something else."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {("lion" if t == "cat" else t): i for t, i in tiny_tokenizer().get_vocab().items()}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    swapped = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    swapped.name_or_path = "org/swapped-tok"
    return swapped, vocab["lion"]


# ---- vocab -----------------------------------------------------------------------------------------------------


def test_identical_tokenizers_pass():
    a, b = tiny_tokenizer(), tiny_tokenizer()
    assert first_vocab_difference(a, b) is None
    check_tokenizers(a, b)
    assert shared_vocab_rows(tiny_llama(num_layers=1), tiny_qwen2(num_layers=1), a, b) == VOCAB


def test_swapped_word_is_refused_naming_first_difference_and_both_tokenizers():
    student_tok = tiny_tokenizer()
    student_tok.name_or_path = "org/student-tok"
    teacher_tok, cat = swapped_tokenizer()
    assert first_vocab_difference(student_tok, teacher_tok) == (cat, "cat", "lion")
    with pytest.raises(ValueError) as err:
        check_tokenizers(student_tok, teacher_tok)
    msg = str(err.value)
    assert f"id {cat}: student 'cat', teacher 'lion'" in msg
    assert "org/student-tok" in msg and "org/swapped-tok" in msg and f"{VOCAB} tokens" in msg
    assert "alpha_logits=0" in msg
    with pytest.raises(ValueError, match="differ, first at id"):
        shared_vocab_rows(tiny_llama(num_layers=1), tiny_llama(num_layers=1), student_tok, teacher_tok)


def test_first_difference_reports_a_missing_token_as_none():
    small, big = tiny_tokenizer(), tiny_tokenizer()
    big.add_tokens(["zebra"])
    assert first_vocab_difference(small, big) == (VOCAB, None, "zebra")
    with pytest.raises(ValueError, match=f"id {VOCAB}: student no token, teacher 'zebra'"):
        check_tokenizers(small, big)


def padded_teacher(rows=112):
    teacher = tiny_qwen2(num_layers=1)
    teacher.resize_token_embeddings(rows)
    return teacher


def test_padded_rows_with_one_tokenizer_share_the_smaller_count(caplog):
    teacher, student = padded_teacher(), tiny_llama(num_layers=1)
    assert output_rows(teacher) == 112 and output_rows(student) == VOCAB
    logging.getLogger("hf_distill.models.vocab").addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="hf_distill.models.vocab"):
            assert shared_vocab_rows(student, teacher, tiny_tokenizer(), tiny_tokenizer()) == VOCAB
    finally:
        logging.getLogger("hf_distill.models.vocab").removeHandler(caplog.handler)
    assert "padded rows" in caplog.text


@pytest.mark.parametrize("given", ["none", "student_only"])
def test_different_rows_without_both_tokenizers_are_refused(given):
    student_tok = tiny_tokenizer() if given == "student_only" else None
    with pytest.raises(ValueError, match=rf"{VOCAB} output rows.*112.*pass both tokenizers"):
        shared_vocab_rows(tiny_llama(num_layers=1), padded_teacher(), student_tok, None)


def test_tokenizer_larger_than_output_rows_is_refused():
    a, b = tiny_tokenizer(), tiny_tokenizer()
    for tok in (a, b):
        tok.add_tokens(["zebra"])  # VOCAB + 1 tokens, the student has VOCAB rows
    with pytest.raises(ValueError, match=rf"{VOCAB + 1} tokens.*cannot emit every token"):
        shared_vocab_rows(tiny_llama(num_layers=1), padded_teacher(), a, b)


def test_output_rows_looks_through_peft_and_ddp_style_wrappers():
    from peft import LoraConfig, get_peft_model

    model = padded_teacher(104)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))
    wrapper = nn.Module()
    wrapper.module = peft_model
    assert output_rows(peft_model) == output_rows(wrapper) == 104


def test_load_tokenizer_for_reads_local_folders_only(tmp_path):
    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    model = tiny_llama(num_layers=1)
    model.config.name_or_path = str(tmp_path / "tok")
    loaded = load_tokenizer_for(model)
    assert loaded is not None and first_vocab_difference(loaded, tiny_tokenizer()) is None
    (tmp_path / "empty").mkdir()
    assert load_tokenizer_for(str(tmp_path / "empty")) is None
    assert load_tokenizer_for("some-org/not-a-local-folder") is None
    assert load_tokenizer_for(tiny_llama(num_layers=1)) is None  # name_or_path is ""


# ---- generation ------------------------------------------------------------------------------------------------


def eos_prone_llama(eos_bias=4.0):
    """A tiny Llama whose head adds a bias to the eos logit, so that sampled rows end at different lengths."""
    model = tiny_llama(num_layers=2)
    head = nn.Linear(model.config.hidden_size, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.lm_head.weight)
        head.bias.zero_()
        head.bias[EOS] = eos_bias
    model.lm_head = head
    return model


def ragged_prompts():
    """Three LEFT-padded prompts of lengths 3, 1 and 4: ``(3, 4)`` ids and mask."""
    ids = torch.tensor([[PAD, 5, 6, 7], [PAD, PAD, PAD, 8], [9, 10, 11, 12]])
    return ids, (ids != PAD).long()


def assert_packed(batch, prompt_ids, prompt_mask, max_new_tokens):
    """Right padding, prompts intact, labels = the completion only, nothing after the first eos."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape == labels.shape
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        assert mask[row, :n].all() and not mask[row, n:].any()  # right padded
        assert (ids[row, n:] == PAD).all() and (labels[row, n:] == -100).all()
        prompt = prompt_ids[row][prompt_mask[row].bool()]
        p = len(prompt)
        assert torch.equal(ids[row, :p], prompt) and (labels[row, :p] == -100).all()
        completion = ids[row, p:n]
        assert torch.equal(labels[row, p:n], completion)
        assert 1 <= len(completion) <= max_new_tokens
        eos_at = (completion == EOS).nonzero().flatten().tolist()
        assert eos_at in ([], [len(completion) - 1])  # eos only as the last token
        if not eos_at:
            assert len(completion) == max_new_tokens


def test_pack_completions_cuts_after_first_eos_and_keeps_empty_completions():
    ids, mask = ragged_prompts()
    completion = torch.tensor([[20, EOS, 21, EOS], [EOS, PAD, PAD, PAD], [22, 23, 24, 25]])
    batch = pack_completions(ids, mask, completion[:, :4], eos_token_id=[EOS, 99], pad_token_id=PAD)
    assert batch["input_ids"].tolist() == [
        [5, 6, 7, 20, EOS, PAD, PAD, PAD],
        [8, EOS, PAD, PAD, PAD, PAD, PAD, PAD],
        [9, 10, 11, 12, 22, 23, 24, 25],
    ]
    assert batch["labels"].tolist() == [
        [-100, -100, -100, 20, EOS, -100, -100, -100],
        [-100, EOS, -100, -100, -100, -100, -100, -100],
        [-100, -100, -100, -100, 22, 23, 24, 25],
    ]
    assert batch["attention_mask"].sum(1).tolist() == [5, 2, 8]
    empty = pack_completions(ids, mask, completion[:, :0], eos_token_id=EOS, pad_token_id=PAD)
    assert empty["input_ids"][1].tolist() == [8, PAD, PAD, PAD] and (empty["labels"] == -100).all()


def test_generate_completions_sampled_rows_are_well_formed_and_train_mode_restored():
    model = eos_prone_llama().train()
    ids, mask = ragged_prompts()
    torch.manual_seed(0)
    batch = generate_completions(model, ids, mask, max_new_tokens=6, pad_token_id=PAD, eos_token_id=EOS)
    assert model.training and all(m.training for m in model.modules())
    assert_packed(batch, ids, mask, max_new_tokens=6)
    lengths = (batch["labels"] != -100).sum(1).tolist()
    assert len(set(lengths)) > 1, f"expected ragged completions from the eos-prone model, got {lengths}"
    torch.manual_seed(0)
    again = generate_completions(model, ids, mask, max_new_tokens=6, pad_token_id=PAD, eos_token_id=EOS)
    assert all(torch.equal(batch[k], again[k]) for k in batch)


def test_generate_completions_greedy_is_deterministic_and_matches_unpadded_generation():
    model = tiny_llama(num_layers=2)
    ids, mask = ragged_prompts()
    kw = dict(max_new_tokens=5, pad_token_id=PAD, eos_token_id=EOS, do_sample=False)
    first = generate_completions(model, ids, mask, **kw)
    torch.manual_seed(123)
    second = generate_completions(model, ids, mask, **kw)
    assert all(torch.equal(first[k], second[k]) for k in first) and not model.training
    assert_packed(first, ids, mask, max_new_tokens=5)
    # left padding must not change what a row generates: row 1 alone, unpadded
    alone = generate_completions(model, ids[1:2, 3:], mask[1:2, 3:], **kw)
    n = int(alone["attention_mask"].sum())
    assert torch.equal(first["input_ids"][1, :n], alone["input_ids"][0, :n])


def test_generate_completions_through_ddp_style_and_peft_wrappers():
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(num_layers=2)
    ids, mask = ragged_prompts()
    kw = dict(max_new_tokens=4, pad_token_id=PAD, eos_token_id=EOS, do_sample=False)
    expected = generate_completions(model, ids, mask, **kw)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"]))  # LoRA starts as a no-op
    wrapper = nn.Module()
    wrapper.module = peft_model
    wrapper.train()
    got = generate_completions(wrapper, ids, mask, **kw)
    assert all(torch.equal(expected[k], got[k]) for k in expected) and peft_model.training


def test_generate_completions_refuses_bad_arguments():
    ids, mask = ragged_prompts()
    model = tiny_llama(num_layers=1)
    with pytest.raises(ValueError, match="max_new_tokens must be at least 1, got 0"):
        generate_completions(model, ids, mask, max_new_tokens=0, pad_token_id=PAD, eos_token_id=EOS)
    with pytest.raises(ValueError, match="eos_token_id is None"):
        generate_completions(model, ids, mask, max_new_tokens=2, pad_token_id=PAD, eos_token_id=None)


def test_sample_sequences_structure_and_seed():
    model, tokenizer = eos_prone_llama(eos_bias=2.0), tiny_tokenizer()
    data = sample_sequences(model, tokenizer, num_samples=5, max_length=7, batch_size=2, seed=0)
    assert len(data) == 5 and set(data.column_names) == {"input_ids", "attention_mask", "labels"}
    for row in data:
        ids, labels = row["input_ids"], row["labels"]
        assert ids[0] == BOS and labels[0] == -100 and labels[1:] == ids[1:]
        assert 2 <= len(ids) <= 7 and row["attention_mask"] == [1] * len(ids)
        assert EOS not in ids[1:-1] and (ids[-1] == EOS or len(ids) == 7)
    assert (
        data.to_dict()
        == sample_sequences(model, tokenizer, num_samples=5, max_length=7, batch_size=2, seed=0).to_dict()
    )
    other = sample_sequences(model, tokenizer, num_samples=5, max_length=7, batch_size=2, seed=1)
    assert other.to_dict() != data.to_dict()
    prompted = sample_sequences(model, tokenizer, num_samples=2, max_length=6, prompt="the cat", seed=0)
    the, cat = tokenizer.convert_tokens_to_ids(["the", "cat"])
    assert all(r["input_ids"][:2] == [the, cat] and r["labels"][:2] == [-100, -100] for r in prompted)
    with pytest.raises(ValueError, match="max_length=2 leaves no room"):
        sample_sequences(model, tokenizer, num_samples=1, max_length=2, prompt="the cat")
