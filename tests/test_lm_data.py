"""Causal-LM data: loading, text blocks, prompt/completion and chat loss masks, the collator, perplexity."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama, tiny_tokenizer
from datasets import Dataset
from numerics import assert_fp32_close, cross_entropy_scale, forward_chain

from hf_distill.data import (
    DistillationDataCollator,
    detect_format,
    load_lm_dataset,
    perplexity,
    read_text_split,
    tokenize_lm_dataset,
)

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

EOS, PAD, IGNORE = 2, 0, -100
USER, ASSISTANT, SYSTEM = "<|user|>", "<|assistant|>", "<|system|>"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def ids(tok, words: str) -> list[int]:
    """Hand-built ids: one word-level token per whitespace-separated word (the tokenizer itself is not used)."""
    out = tok.convert_tokens_to_ids(words.split())
    assert 3 not in out, f"{words!r} has a word outside the vocabulary"
    return out


# ----------------------------------------------------------------------------------------------------------- loading


def test_load_txt_files_one_document_per_file(tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("the cat\nsaw a dog\n\nthe end\n")
    second.write_text("a bird")
    ds = load_lm_dataset(train_file=[str(first), second], cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == ["text"]
    assert sorted(ds["text"]) == ["a bird", "the cat\nsaw a dog\n\nthe end\n"]


def test_load_jsonl_file(tmp_path):
    path = tmp_path / "data.jsonl"
    rows = [{"prompt": "the cat", "completion": "is red"}, {"prompt": "a dog", "completion": "is blue"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    ds = load_lm_dataset(train_file=str(path), cache_dir=str(tmp_path / "cache"))
    assert ds.to_list() == rows
    assert detect_format(ds.column_names) == "prompt_completion"


def test_load_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="exactly one of dataset_name"):
        load_lm_dataset()
    with pytest.raises(ValueError, match="exactly one of dataset_name"):
        load_lm_dataset(dataset_name="some/data", train_file="x.txt")
    with pytest.raises(ValueError, match=r"'\.csv'"):
        load_lm_dataset(train_file=str(tmp_path / "data.csv"))
    with pytest.raises(ValueError, match="does not exist"):
        load_lm_dataset(train_file=str(tmp_path / "missing.txt"))


def test_read_text_split_cuts_at_line_boundary(tmp_path):
    # 10 lines of 10 characters: 100 chars, int(0.85 * 100) = 85 falls inside line 9 (chars 80..89) -> cut at 90.
    lines = [f"line {i:03d}\n" for i in range(10)]
    text = "".join(lines)
    path = tmp_path / "input.txt"
    path.write_text(text)
    train = read_text_split(path, "train", validation_fraction=0.15)
    validation = read_text_split(path, "validation", validation_fraction=0.15)
    assert train == "".join(lines[:9]) and validation == lines[9]
    # A cut exactly on a line start stays there: int(0.8 * 100) = 80 -> 8 lines of train.
    assert read_text_split(path, "train", validation_fraction=0.2) == "".join(lines[:8])
    assert read_text_split(path, "validation", validation_fraction=0.2) == "".join(lines[8:])
    assert read_text_split(path, "all") == text
    with pytest.raises(ValueError, match="part='test'"):
        read_text_split(path, "test")
    with pytest.raises(ValueError, match="validation_fraction"):
        read_text_split(path, "train", validation_fraction=1.0)
    # No line break after the cut: the validation part would be empty.
    one_line = tmp_path / "one.txt"
    one_line.write_text("x" * 50)
    with pytest.raises(ValueError, match="validation part .* is empty"):
        read_text_split(one_line, "validation")


# -------------------------------------------------------------------------------------------------------- formats


def test_detect_format():
    assert detect_format(["messages", "text"]) == "messages"
    assert detect_format(["prompt", "completion", "text"]) == "prompt_completion"
    assert detect_format(["id", "text"]) == "text"
    with pytest.raises(ValueError, match=r"\['id', 'prompt'\].*'text'.*'completion'.*'messages'"):
        detect_format(["prompt", "id"])


def test_text_blocks_exact_with_eos_between_documents(tok):
    raw = Dataset.from_dict({"text": ["the cat is red", "", "a dog"]})
    out = tokenize_lm_dataset(raw, tok, block_size=3)
    assert out.column_names == ["input_ids", "attention_mask", "labels"]
    # Stream: the cat is red </s> a dog </s> (the empty document adds nothing) -> 8 tokens, 2 blocks, 2 dropped.
    the, cat, is_, red, a = ids(tok, "the cat is red a")
    assert out["input_ids"] == [[the, cat, is_], [red, EOS, a]]
    assert out["labels"] == out["input_ids"]
    assert out["attention_mask"] == [[1, 1, 1], [1, 1, 1]]
    no_eos = tokenize_lm_dataset(raw, tok, block_size=3, add_eos=False)
    assert no_eos["input_ids"] == [[the, cat, is_], [red, a, ids(tok, "dog")[0]]]


def test_text_blocks_span_map_batches(tok):
    # 1001 documents of 3 tokens = 3003 tokens -> 429 blocks of 7; grouping per 1000-row map batch would give 428.
    raw = Dataset.from_dict({"text": ["the cat"] * 1001})
    out = tokenize_lm_dataset(raw, tok, block_size=7)
    assert len(out) == 429
    # The last block starts at token 428 * 7 = 2996 (the eos of document 998) and ends with the stream's last token.
    assert out[428]["input_ids"] == [EOS] + ids(tok, "the cat") + [EOS] + ids(tok, "the cat") + [EOS]


def test_text_too_short_names_token_count(tok):
    raw = Dataset.from_dict({"text": ["the cat", "a dog"]})
    with pytest.raises(ValueError, match="6 tokens, fewer than block_size=7"):
        tokenize_lm_dataset(raw, tok, block_size=7)


def test_bad_format_arguments(tok):
    raw = Dataset.from_dict({"text": ["the cat"]})
    with pytest.raises(ValueError, match="data_format='chat'"):
        tokenize_lm_dataset(raw, tok, block_size=2, data_format="chat")
    with pytest.raises(ValueError, match=r"needs columns \['messages'\]"):
        tokenize_lm_dataset(raw, tok, block_size=2, data_format="messages")
    with pytest.raises(ValueError, match="block_size"):
        tokenize_lm_dataset(raw, tok, block_size=0)


def test_prompt_completion_masks_exactly_the_prompt(tok):
    raw = Dataset.from_dict({"prompt": ["the cat", "a big old dog"], "completion": ["is red", "went"]})
    out = tokenize_lm_dataset(raw, tok, block_size=16)
    assert out.column_names == ["input_ids", "attention_mask", "labels", "prompt_length"]
    assert out[0]["input_ids"] == ids(tok, "the cat is red") + [EOS]
    assert out[0]["labels"] == [IGNORE, IGNORE] + ids(tok, "is red") + [EOS]
    assert out[1]["labels"] == [IGNORE] * 4 + ids(tok, "went") + [EOS]
    assert out["prompt_length"] == [2, 4]
    assert out[1]["attention_mask"] == [1] * 6


def test_prompt_completion_truncation_drops_rows_without_targets(tok, caplog):
    raw = Dataset.from_dict({"prompt": ["the cat", "a big old dog", "the"], "completion": ["is red", "went", "king"]})
    with caplog.at_level(logging.WARNING, logger="hf_distill.data.lm"):
        out = tokenize_lm_dataset(raw, tok, block_size=4)
    # Row 2 (4 prompt tokens) loses its whole completion; the others are cut on the right, prompt start kept.
    assert out["input_ids"] == [ids(tok, "the cat is red"), ids(tok, "the king") + [EOS]]
    assert out["labels"] == [[IGNORE, IGNORE] + ids(tok, "is red"), [IGNORE] + ids(tok, "king") + [EOS]]
    assert out["prompt_length"] == [2, 1]
    assert "Dropped 1 of 3" in caplog.text


def test_conversational_prompt_completion(tok):
    raw = Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": "the cat"}],
                "completion": [{"role": "assistant", "content": "a dog"}],
            }
        ]
    )
    row = tokenize_lm_dataset(raw, tok, block_size=32)[0]
    prompt = ids(tok, f"{USER} the cat </s> {ASSISTANT}")
    assert row["input_ids"] == prompt + ids(tok, "a dog </s>")
    assert row["labels"] == [IGNORE] * 5 + ids(tok, "a dog </s>")
    assert row["prompt_length"] == 5


def _messages(*turns):
    return [{"role": role, "content": content} for role, content in turns]


def test_messages_loss_only_on_assistant_content(tok):
    raw = Dataset.from_dict({"messages": [_messages(("user", "the cat"), ("assistant", "a dog"))]})
    row = tokenize_lm_dataset(raw, tok, block_size=32)[0]
    assert row["input_ids"] == ids(tok, f"{USER} the cat </s> {ASSISTANT} a dog </s>")
    assert row["labels"] == [IGNORE] * 5 + ids(tok, "a dog </s>")
    assert row["prompt_length"] == 5


def test_messages_multi_turn(tok):
    conversation = _messages(
        ("system", "be good"),
        ("user", "the cat"),
        ("assistant", "a dog"),
        ("user", "why"),
        ("assistant", "yes no"),
    )
    raw = Dataset.from_dict({"messages": [conversation]})
    row = tokenize_lm_dataset(raw, tok, block_size=64)[0]
    segments = [  # (words, is_target)
        (f"{SYSTEM} be good </s> {USER} the cat </s> {ASSISTANT}", False),
        ("a dog </s>", True),
        (f"{USER} why </s> {ASSISTANT}", False),
        ("yes no </s>", True),
    ]
    expected_ids, expected_labels = [], []
    for words, target in segments:
        expected_ids += ids(tok, words)
        expected_labels += ids(tok, words) if target else [IGNORE] * len(words.split())
    assert row["input_ids"] == expected_ids
    assert row["labels"] == expected_labels
    assert row["prompt_length"] == 9


def test_messages_truncation_and_rows_without_assistant(tok, caplog):
    raw = Dataset.from_dict(
        {
            "messages": [
                _messages(("user", "the cat"), ("assistant", "a dog"), ("user", "why"), ("assistant", "yes")),
                _messages(("user", "the cat"), ("user", "why")),
            ]
        }
    )
    with caplog.at_level(logging.WARNING, logger="hf_distill.data.lm"):
        out = tokenize_lm_dataset(raw, tok, block_size=7)
    assert out["input_ids"] == [ids(tok, f"{USER} the cat </s> {ASSISTANT} a dog")]
    assert out["labels"] == [[IGNORE] * 5 + ids(tok, "a dog")]
    assert "Dropped 1 of 2" in caplog.text


def test_missing_chat_template(tok):
    plain = tiny_tokenizer()
    plain.chat_template = None
    raw = Dataset.from_dict({"messages": [_messages(("user", "the cat"), ("assistant", "a dog"))]})
    with pytest.raises(ValueError, match="no chat template"):
        tokenize_lm_dataset(raw, plain, block_size=16)


def test_template_not_prefix_stable():
    unstable = tiny_tokenizer()
    # The generation prompt opens with "<s>", but a rendered assistant turn does not: turns cannot be located.
    unstable.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> <s> {% endif %}"
    )
    raw = Dataset.from_dict({"messages": [_messages(("user", "the cat"), ("assistant", "a dog"))]})
    with pytest.raises(ValueError, match="not prefix-stable"):
        tokenize_lm_dataset(raw, unstable, block_size=16)


# ------------------------------------------------------------------------------------------------------- collation


def test_collator_pads_right_with_right_values_and_dtypes():
    collate = DistillationDataCollator(pad_token_id=PAD, pad_to_multiple_of=4)
    features = [
        {"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7], "weight": 0.5, "text": "raw"},
        {"input_ids": [8, 9, 10, 11, 12], "labels": [8, 9, 10, 11, 12], "weight": 2.0, "text": "raw"},
    ]
    batch = collate(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "weight"}
    assert batch["input_ids"].tolist() == [[5, 6, 7, PAD, PAD, PAD, PAD, PAD], [8, 9, 10, 11, 12, PAD, PAD, PAD]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 6, 7] + [IGNORE] * 5, [8, 9, 10, 11, 12] + [IGNORE] * 3]
    assert batch["input_ids"].dtype == batch["attention_mask"].dtype == batch["labels"].dtype == torch.long
    assert batch["weight"].dtype == torch.float32 and batch["weight"].tolist() == [0.5, 2.0]
    # Without pad_to_multiple_of: the longest row; a given attention_mask is kept as it is.
    batch = DistillationDataCollator(pad_token_id=7, label_pad_token_id=-1)(
        [
            {"input_ids": [1, 2], "attention_mask": [0, 1], "labels": [1, 2]},
            {"input_ids": [3], "attention_mask": [1], "labels": [3]},
        ]
    )
    assert batch["input_ids"].tolist() == [[1, 2], [3, 7]]
    assert batch["attention_mask"].tolist() == [[0, 1], [1, 0]]
    assert batch["labels"].tolist() == [[1, 2], [3, -1]]


def test_collator_pads_topk_tables():
    collate = DistillationDataCollator(pad_token_id=PAD)
    features = [
        {
            "input_ids": [5, 6],
            "teacher_topk_ids": [[1, 2, 3], [4, 5, 6]],
            "teacher_topk_logprobs": [[-0.1, -0.2, -0.3], [-0.4, -0.5, -0.6]],
        },
        {
            "input_ids": [7, 8, 9],
            "teacher_topk_ids": [[7, 8, 9], [10, 11, 12], [13, 14, 15]],
            "teacher_topk_logprobs": [[-1.0, -2.0, -3.0]] * 3,
        },
    ]
    batch = collate(features)
    assert batch["teacher_topk_ids"].shape == (2, 3, 3) and batch["teacher_topk_ids"].dtype == torch.long
    assert batch["teacher_topk_ids"][0].tolist() == [[1, 2, 3], [4, 5, 6], [0, 0, 0]]
    assert batch["teacher_topk_ids"][1].tolist() == [[7, 8, 9], [10, 11, 12], [13, 14, 15]]
    logprobs = batch["teacher_topk_logprobs"]
    assert logprobs.dtype == torch.float32 and logprobs.shape == (2, 3, 3)
    assert torch.equal(logprobs[0], torch.tensor([[-0.1, -0.2, -0.3], [-0.4, -0.5, -0.6], [0.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="teacher_topk_ids"):
        collate(
            [{"input_ids": [1, 2], "teacher_topk_ids": [[1], [2]]}, {"input_ids": [3], "teacher_topk_ids": [[1, 2]]}]
        )


def test_collator_left_pads_prompts():
    collate = DistillationDataCollator(pad_token_id=PAD)
    features = [
        {"input_ids": [5, 6, 7, 8], "labels": [IGNORE, IGNORE, 7, 8], "prompt_length": 2},
        {"input_ids": [9, 10, 11, 12, 13], "labels": [IGNORE] * 3 + [12, 13], "prompt_length": 3},
        {"input_ids": [14, 15], "labels": [IGNORE, 15], "prompt_length": 1},
    ]
    batch = collate(features)
    assert "prompt_length" not in batch
    assert batch["prompt_input_ids"].tolist() == [[PAD, 5, 6], [9, 10, 11], [PAD, PAD, 14]]
    assert batch["prompt_attention_mask"].tolist() == [[0, 1, 1], [1, 1, 1], [0, 0, 1]]
    assert batch["prompt_input_ids"].dtype == torch.long
    assert batch["input_ids"].tolist()[2] == [14, 15, PAD, PAD, PAD]


def test_collator_on_tokenized_messages(tok):
    raw = Dataset.from_dict(
        {
            "messages": [
                _messages(("user", "the cat"), ("assistant", "a dog")),
                _messages(("user", "why"), ("assistant", "yes no no no")),
            ]
        }
    )
    batch = DistillationDataCollator(pad_token_id=tok.pad_token_id)(list(tokenize_lm_dataset(raw, tok, block_size=32)))
    assert batch["input_ids"].shape == (2, 9)
    assert batch["prompt_input_ids"].tolist() == [
        ids(tok, f"{USER} the cat </s> {ASSISTANT}"),
        [PAD] + ids(tok, f"{USER} why </s> {ASSISTANT}"),
    ]
    assert batch["labels"][0].tolist() == [IGNORE] * 5 + ids(tok, "a dog </s>") + [IGNORE]


def test_collator_argument_errors():
    with pytest.raises(ValueError, match="pad_token_id must be an int, got None"):
        DistillationDataCollator(pad_token_id=None)
    with pytest.raises(ValueError, match="pad_to_multiple_of"):
        DistillationDataCollator(pad_token_id=0, pad_to_multiple_of=0)
    with pytest.raises(ValueError, match="input_ids"):
        DistillationDataCollator(pad_token_id=0)([{"labels": [1]}])


# ------------------------------------------------------------------------------------------------------ perplexity


def _reference(model, blocks: torch.Tensor) -> tuple[float, float, int]:
    """``(nll, scale, n)``: the mean cross-entropy of each block's next-token predictions, block by block, straight
    from the definition; the size of the terms it sums and its chains of additions (tests/numerics.py): the model's
    forward on a block, then the mean over the tokens."""
    losses, scale = [], 0.0
    with torch.no_grad():
        for block in blocks:
            logits = model(input_ids=block[None]).logits[0]  # (T, V)
            losses.append(F.cross_entropy(logits[:-1], block[1:], reduction="none"))
            scale = max(scale, cross_entropy_scale(logits))
    n = forward_chain(model.config, blocks.shape[1]) + blocks.numel()
    return torch.cat(losses).mean().item(), scale, n


def assert_nll_close(result, model, blocks):
    """The perplexity's nll and its exp against the reference; an error e in the nll is a relative error e in exp(nll)."""
    nll, scale, n = _reference(model, blocks)
    assert_fp32_close(result["nll"], nll, scale=scale, n=n, msg="nll")
    assert_fp32_close(result["perplexity"], math.exp(nll), scale=math.exp(nll) * scale, n=n, msg="perplexity")


def test_perplexity_matches_cross_entropy():
    model = tiny_llama(num_layers=2)
    ids = torch.randint(4, 99, (47,), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, ids, block_size=8, batch_size=3)  # 5 blocks in batches of 3 + 2; 7 tokens dropped
    assert result["blocks"] == 5 and result["tokens"] == 35
    assert_nll_close(result, model, ids[:40].view(5, 8))
    capped = perplexity(model, ids.tolist(), block_size=8, max_blocks=2)
    assert capped["blocks"] == 2
    assert_nll_close(capped, model, ids[:16].view(2, 8))


def test_perplexity_with_a_bos_scores_each_block_after_it():
    """A model that needs its BOS (Gemma-3): each block is the BOS and block_size - 1 text tokens, all predicted."""
    model = tiny_llama(num_layers=2)
    ids = torch.randint(4, 99, (30,), generator=torch.Generator().manual_seed(1))
    result = perplexity(model, ids, block_size=8, bos_token_id=2)  # 4 blocks of 7 text tokens; 2 dropped
    assert result["blocks"] == 4 and result["tokens"] == 28
    blocks = torch.cat([torch.full((4, 1), 2), ids[:28].view(4, 7)], dim=1)
    assert_nll_close(result, model, blocks)


def test_perplexity_max_tokens_scores_whole_blocks_within_the_cap(capsys):
    model = tiny_llama(num_layers=2)
    ids = torch.randint(4, 99, (47,), generator=torch.Generator().manual_seed(0))  # 5 blocks of 8
    capped = perplexity(model, ids, block_size=8, max_tokens=20)  # 20 // 7 = 2 blocks, 14 predicted tokens
    assert capped["blocks"] == 2 and capped["tokens"] == 14 <= 20
    assert_nll_close(capped, model, ids[:16].view(2, 8))
    assert perplexity(model, ids, block_size=8, max_tokens=21)["blocks"] == 3
    assert perplexity(model, ids, block_size=8, max_tokens=10_000)["blocks"] == 5  # a cap above the text is no cap
    assert perplexity(model, ids, block_size=8, max_tokens=35, max_blocks=1)["blocks"] == 1  # the tighter cap wins
    with pytest.raises(ValueError, match="max_tokens=6 is fewer than the 7 tokens one block"):
        perplexity(model, ids, block_size=8, max_tokens=6)
    assert capsys.readouterr().err == ""  # no progress bar unless asked


def test_perplexity_progress_bar_counts_blocks(capsys):
    model = tiny_llama(num_layers=2)
    ids = torch.randint(4, 99, (40,), generator=torch.Generator().manual_seed(0))
    perplexity(model, ids, block_size=8, batch_size=2, progress=True, desc="perplexity of the student on v.txt")
    err = capsys.readouterr().err
    assert "perplexity of the student on v.txt" in err and "5/5" in err


def test_perplexity_of_text(tok):
    model = tiny_llama(num_layers=2)
    text = "the cat saw a dog and the dog saw a bird"  # 11 words -> 2 blocks of 5
    result = perplexity(model, text, tok, block_size=5)
    blocks = torch.tensor(ids(tok, text)[:10]).view(2, 5)
    assert result["tokens"] == 8
    assert_nll_close(result, model, blocks)
    with pytest.raises(ValueError, match="no tokenizer"):
        perplexity(model, text, block_size=5)
    with pytest.raises(ValueError, match="11 tokens, fewer than block_size=12"):
        perplexity(model, text, tok, block_size=12)


def test_perplexity_scores_in_eval_mode_and_restores_train_mode():
    model = tiny_llama(num_layers=2, attention_dropout=0.5)
    ids = torch.randint(4, 99, (32,), generator=torch.Generator().manual_seed(1))
    model.train()
    result = perplexity(model, ids, block_size=8)
    assert model.training
    assert_nll_close(result, model.eval(), ids.view(4, 8))  # dropout would change it
    model.eval()
    perplexity(model, ids, block_size=8)
    assert not model.training
