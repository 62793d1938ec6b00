"""Tiny models built from configs (no network) and small datasets shared by the tests.

The session keeps every Hugging Face cache (datasets, hub, modules) and matplotlib's in a temporary folder, so that no
test writes into ``~/.cache``; ``shared_dir`` is ``../shared``, which a test that needs it requires (it fails, never
skips, without it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def _real_hf_home() -> Path:
    """The Hugging Face cache this session would write into without the redirection below."""
    xdg = os.environ.get("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(os.path.expanduser(os.environ.get("HF_HOME", os.path.join(xdg, "huggingface"))))


# Set before datasets, huggingface_hub and transformers are imported (they read these once, at import). Worker
# processes that import this file inherit the session's folder through HF_DISTILL_TESTS_CACHE.
_OWNS_CACHE = "HF_DISTILL_TESTS_CACHE" not in os.environ
REAL_HF_HOME = _real_hf_home()
REAL_DATASETS_CACHE = Path(os.environ.get("HF_DATASETS_CACHE", REAL_HF_HOME / "datasets"))
SESSION_CACHE = Path(os.environ.get("HF_DISTILL_TESTS_CACHE") or tempfile.mkdtemp(prefix="hf_distill_tests_cache_"))
os.environ.update(
    HF_DISTILL_TESTS_CACHE=str(SESSION_CACHE),
    XDG_CACHE_HOME=str(SESSION_CACHE),
    HF_HOME=str(SESSION_CACHE / "huggingface"),
    HF_HUB_CACHE=str(SESSION_CACHE / "huggingface" / "hub"),
    HF_DATASETS_CACHE=str(SESSION_CACHE / "huggingface" / "datasets"),
    HF_MODULES_CACHE=str(SESSION_CACHE / "huggingface" / "modules"),
    MPLCONFIGDIR=str(SESSION_CACHE / "matplotlib"),
)

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    TrainerCallback,
)

VOCAB = 99


def word_tokenizer(words: list[str]):
    """A WordPiece tokenizer over ``[PAD] [UNK] [CLS] [SEP] [MASK]`` and ``words`` (ids in that order).

    Built from a vocabulary dict: transformers 5's ``BertTokenizerFast(vocab_file=...)`` ignores the file and maps
    every word to [UNK].
    """
    from transformers import BertTokenizerFast

    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    return BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)})


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


class GradCatcher(TrainerCallback):
    """Keeps a copy of the gradients of the first optimizer step."""

    def __init__(self):
        self.grads = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.grads is None:
            self.grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` beside the repository (the real GLUE files under ``data/glue``). A test that needs it fails with
    this message when it is absent: CI must not pass by skipping the tests on real data."""
    if not (SHARED_DIR / "data" / "glue").is_dir():
        pytest.fail(
            f"../shared is missing: no {SHARED_DIR / 'data' / 'glue'}. Put the shared data folder beside the "
            "repository (as CI does) to run the tests on real data."
        )
    return SHARED_DIR


def pytest_unconfigure(config):
    if _OWNS_CACHE:
        shutil.rmtree(SESSION_CACHE, ignore_errors=True)


def pytest_addoption(parser):
    parser.addoption(
        "--fp32-report",
        type=int,
        default=0,
        metavar="N",
        help="print the N float32 comparisons (tests/numerics.py) that used the most of their tolerance",
    )


def pytest_terminal_summary(terminalreporter, config):
    count = config.getoption("--fp32-report")
    if not count:
        return
    from numerics import USAGE

    worst: dict[tuple[str, str], float] = {}
    for test, label, used in USAGE:
        worst[test, label] = max(used, worst.get((test, label), 0.0))
    terminalreporter.section(f"float32 tolerance used, the {count} closest of {len(USAGE)} comparisons")
    for (test, label), used in sorted(worst.items(), key=lambda item: -item[1])[:count]:
        terminalreporter.write_line(f"{used:7.1%}  {test}{' ' + label if label else ''}")


NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "classifier_dropout": 0.0}
SST2_DIR = SHARED_DIR / "data" / "glue" / "SST-2"


def trainer_config(out, **kw):
    """A ``DistillationConfig`` for a few CPU steps in ``out`` (3 steps of 8 rows at lr 1e-3, no saving, every step
    logged); ``kw`` overrides any field."""
    from hf_distill import DistillationConfig

    base = dict(
        output_dir=out,
        report_to="none",
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
    )
    return DistillationConfig(**{**base, **kw})


@pytest.fixture
def tiny_teacher_dir(tmp_path, shared_dir):
    """A tiny BERT (4 layers) with a word-level vocabulary of the 94 most common SST-2 dev words, saved with its
    tokenizer: a model the GLUE job can load by folder."""
    from collections import Counter

    lines = (SST2_DIR / "dev.tsv").read_text().splitlines()[1:]
    words = Counter(w for line in lines for w in line.split("\t")[0].split())
    folder = tmp_path / "teacher"
    tiny_bert(num_layers=4).save_pretrained(folder)
    word_tokenizer([w for w, _ in words.most_common(94)]).save_pretrained(folder)
    return str(folder)


def sst2_job_argv(out, *extra) -> list[str]:
    """``hf-distill glue`` on 64 real SST-2 rows (48 to score), 32 tokens, batches of 16, a small speed measurement,
    writing to ``out`` without checkpoints; ``extra`` adds the mode, models and budget."""
    return [
        "glue", "--data_dir", str(SST2_DIR), "--max_seq_length", "32", "--max_train_samples", "64",
        "--max_eval_samples", "48", "--per_device_train_batch_size", "16", "--speed_batch_size", "4",
        "--speed_seq_len", "16", "--output_dir", str(out), "--report_to", "none", "--save_strategy", "no",
        "--disable_tqdm", "true", *extra,
    ]  # fmt: skip


@pytest.fixture
def tmp_out(tmp_path):
    return str(tmp_path / "out")


# A word-level tokenizer over VOCAB entries (whitespace split), with special tokens and a chat template, for the
# causal-LM data and trainer tests. Words outside the list map to <unk>.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>"]
WORDS = (
    "the a an and or but if of to in on at by for with from as is are was were be been it this that these those "
    "i you he she we they me him her us them my your his our their what which who when where why how all any some "
    "no not yes one two three cat dog bird fish tree house king queen lord good bad old new big small red blue "
    "green say said go went come came see saw"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} </s> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer(extra_words: tuple[str, ...] = ()):
    """A ``PreTrainedTokenizerFast`` with ``VOCAB`` ids (pad 0, bos 1, eos 2, unk 3) and a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = SPECIAL_TOKENS + [w for w in WORDS if w not in SPECIAL_TOKENS] + list(extra_words)
    tokens = list(dict.fromkeys(tokens))[:VOCAB]
    tokens += [f"w{i}" for i in range(VOCAB - len(tokens))]
    model = models.WordLevel({t: i for i, t in enumerate(tokens)}, unk_token="<unk>")
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
