"""Tiny models built from configs (no network) and small datasets shared by the tests."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

VOCAB = 99


def tiny_bert(num_layers=4, hidden=32, heads=4, num_labels=2, seed=0, **kw):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        intermediate_size=37,
        max_position_embeddings=64,
        num_labels=num_labels,
        attn_implementation="eager",
        **kw,
    )
    return BertForSequenceClassification(config).eval()


def _tiny_decoder(config_cls, model_cls, num_layers, hidden, heads, kv_heads, seed, **kw):
    torch.manual_seed(seed)
    config = config_cls(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=37,
        max_position_embeddings=64,
        **kw,
    )
    return model_cls(config).eval()


def tiny_llama(num_layers=4, hidden=32, heads=4, kv_heads=2, seed=0, **kw):
    return _tiny_decoder(LlamaConfig, LlamaForCausalLM, num_layers, hidden, heads, kv_heads, seed, **kw)


def tiny_qwen2(num_layers=4, seed=0, **kw):
    return _tiny_decoder(Qwen2Config, Qwen2ForCausalLM, num_layers, 32, 4, 2, seed, **kw)


def tiny_gpt2(num_layers=4, seed=0, **kw):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=num_layers, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0, **kw
    )
    return GPT2LMHeadModel(config).eval()


def classification_dataset(n=32, seq_len=12, seed=0, num_labels=2, padded=True) -> Dataset:
    """Random sentences with ragged lengths (right padding with id 0) and random labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq_len), generator=g)
    lengths = torch.randint(4, seq_len + 1, (n,), generator=g) if padded else torch.full((n,), seq_len)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = torch.randint(0, num_labels, (n,), generator=g)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def lm_dataset(n=32, seq_len=12, seed=0) -> Dataset:
    """Ragged token sequences; labels copy input_ids with -100 on padding and on a 2-token 'prompt'."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (n, seq_len), generator=g)
    lengths = torch.randint(5, seq_len + 1, (n,), generator=g)
    mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
    ids = ids * mask
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


@pytest.fixture
def tmp_out(tmp_path):
    return str(tmp_path / "out")
