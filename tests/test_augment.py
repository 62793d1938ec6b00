"""Teacher-labelled word-replacement augmentation: neighbours, rewriting, the dataset, and KD on unlabelled rows."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import classification_dataset, tiny_bert, word_tokenizer
from numerics import assert_fp32_close, cross_entropy_scale, divergence_scale, forward_chain

from hf_distill import DistillationConfig, DistillationTrainer, build_student
from hf_distill.tasks import augment_dataset, embedding_neighbours, replace_words, word_candidates

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`


def reference_neighbours(embeddings, candidates, k):
    """Written from the definition: for each candidate, the k other candidates of highest cosine similarity."""
    ids = [i for i in range(len(candidates)) if candidates[i]]
    out = torch.full((len(candidates), k), -1, dtype=torch.long)
    for i in ids:
        sims = [(F.cosine_similarity(embeddings[i], embeddings[j], dim=0).item(), j) for j in ids if j != i]
        out[i] = torch.tensor([j for _, j in sorted(sims, reverse=True)[:k]])
    return out


@pytest.mark.parametrize("chunk_size", [4, 2048])
def test_neighbours_match_the_definition(chunk_size):
    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(40, 6, generator=g) * torch.rand(40, 1, generator=g)  # norms differ: cosine, not dot
    candidates = torch.rand(38, generator=g) < 0.6  # rows past the candidates (e.g. padded vocab) are ignored
    got = embedding_neighbours(embeddings, candidates, k=3, chunk_size=chunk_size)
    assert torch.equal(got, reference_neighbours(embeddings, candidates, 3))
    with pytest.raises(ValueError, match="augment_neighbours=50"):
        embedding_neighbours(embeddings, candidates, k=50)


def test_replace_words_only_touches_replaceable_tokens():
    neighbours = torch.tensor([[-1, -1], [2, 3], [1, 3], [1, 2]])  # token 0 is not a word; ids >= 4 are unknown
    ids = torch.tensor([0, 1, 2, 3, 7, 1])
    g = torch.Generator().manual_seed(0)
    assert torch.equal(replace_words(ids, neighbours, 0.0, g), ids)
    for _ in range(20):
        out = replace_words(ids, neighbours, 1.0, g)
        assert out[0] == 0 and out[4] == 7
        assert all(out[i].item() in neighbours[ids[i]].tolist() for i in (1, 2, 3, 5))


def test_word_candidates_are_whole_alphabetic_words():
    tokenizer = word_tokenizer(["good", "##ly", "3", "bad", "-"])
    assert word_candidates(tokenizer).tolist() == [False] * 5 + [True, False, False, True, False]


def test_augment_dataset_rewrites_a_fraction_and_drops_their_labels():
    data = classification_dataset(n=400, seq_len=10, seed=1)
    neighbours = torch.full((100, 2), -1, dtype=torch.long)
    neighbours[1:99] = torch.stack([torch.arange(2, 100), torch.arange(0, 98)], 1)  # i -> i+1 or i-1
    out = augment_dataset(data, neighbours, augment_prob=0.25, replace_prob=0.5, seed=3)
    assert len(out) == len(data) and out.column_names == data.column_names
    rewritten = [i for i, label in enumerate(out["labels"]) if label == -100]
    assert 60 < len(rewritten) < 140  # 25% of 400, loosely
    for i, (old, new) in enumerate(zip(data, out)):
        assert len(new["input_ids"]) == len(old["input_ids"]) and new["attention_mask"] == old["attention_mask"]
        if i not in rewritten:
            assert new == old
    changed = sum(a != b for i in rewritten for a, b in zip(data[i]["input_ids"], out[i]["input_ids"]))
    assert changed > 0
    again = augment_dataset(data, neighbours, augment_prob=0.25, replace_prob=0.5, seed=3)
    assert again["input_ids"] == out["input_ids"]  # the seed alone decides
    with pytest.raises(ValueError, match="augment_prob=1.5"):
        augment_dataset(data, neighbours, augment_prob=1.5, replace_prob=0.5)


def test_unlabelled_rows_learn_from_the_teacher_only(tmp_path):
    """Loss on a batch with two unlabelled rows, written from the definitions: both terms are means over all 4 rows,
    CE over the labelled ones, T^2 KL(teacher || student) over every one."""
    teacher = tiny_bert(seed=1)  # eval mode: no dropout
    student = build_student(teacher, layers=[0, 2]).eval()
    rows = classification_dataset(n=4, seed=2)
    batch = {k: torch.tensor(rows[k]) for k in rows.column_names}
    batch["labels"] = torch.tensor([-100, 1, -100, 0])
    T = 2.0
    args = DistillationConfig(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, alpha_task=1.0, alpha_logits=1.0, temperature=T
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    loss = trainer.compute_loss(student, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s, t = student(**inputs).logits, teacher(**inputs).logits
        ce = F.cross_entropy(s[[1, 3]], torch.tensor([1, 0]), reduction="sum") / 4
        kl = T**2 * F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="sum") / 4
    # the trainer's own forwards, then the losses' terms over 2 labels and 4 rows (tests/numerics.py)
    scale = cross_entropy_scale(s) / 2 + divergence_scale(s, t, temperature=T)
    n = forward_chain(teacher.config, batch["input_ids"].shape[1]) + 4
    assert_fp32_close(loss, ce + kl, scale=scale, n=n)
