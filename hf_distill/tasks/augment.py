"""Teacher-labelled data augmentation for classification KD (TinyBERT-style word replacement).

A fraction of the training examples get some of their words replaced by neighbours in the teacher's input-embedding
space ("good" -> "excellent", "bad", "great"...). Their label may no longer hold, so these examples lose it (``-100``)
and learn from the teacher alone: the classification KD term covers every row, the task term only labelled ones
(see :func:`hf_distill.losses.target_mask`). The training set keeps its size, so a KD run takes as many steps, and each
costs the same, as without augmentation.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX


def word_candidates(tokenizer) -> torch.Tensor:
    """``(V,)`` bool: tokens that are whole alphabetic words (not a ``##`` continuation, not a special token).

    WordPiece marks continuations with ``##``; SentencePiece / byte-level BPE mark word *starts* (``▁``, ``Ġ``), so
    for those only the marked pieces count as words.
    """
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    special = set(tokenizer.all_special_tokens)
    starts = any(t.startswith(("▁", "Ġ")) for t in vocab if t)
    out = []
    for token in vocab:
        if not token or token in special or token.startswith("##"):
            out.append(False)
        elif starts:
            out.append(token[:1] in ("▁", "Ġ") and token[1:].isalpha())
        else:
            out.append(token.isalpha())
    return torch.tensor(out, dtype=torch.bool)


def embedding_neighbours(
    embeddings: torch.Tensor, candidates: torch.Tensor, k: int, chunk_size: int = 2048
) -> torch.Tensor:
    """The ``k`` nearest other candidates of every candidate token by cosine similarity of input embeddings.

    Args:
        embeddings: ``(V, D)`` input-embedding matrix (rows past ``candidates`` are ignored).
        candidates: ``(V',)`` bool, ``V' <= V``: tokens that may be replaced and may replace.
        k: neighbours per token.
    Returns:
        ``(V', k)`` token ids, nearest first; rows of non-candidates are ``-1``.
    """
    ids = candidates.nonzero().squeeze(1)
    if len(ids) <= k:
        raise ValueError(f"Only {len(ids)} candidate words for augment_neighbours={k}: use a smaller value.")
    unit = F.normalize(embeddings[: len(candidates)].detach().float(), dim=-1)[ids]  # (N, D)
    table = torch.full((len(candidates), k), -1, dtype=torch.long)
    for start in range(0, len(ids), chunk_size):
        sim = unit[start : start + chunk_size] @ unit.T  # (n, N)
        rows = torch.arange(sim.shape[0])
        sim[rows, rows + start] = float("-inf")  # not itself
        table[ids[start : start + chunk_size]] = ids[sim.topk(k, dim=-1).indices]
    return table


def replace_words(
    input_ids: torch.Tensor, neighbours: torch.Tensor, replace_prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Replace each replaceable token with probability ``replace_prob`` by one of its neighbours, drawn uniformly.

    Args:
        input_ids: ``(T,)`` token ids.
        neighbours: ``(V', k)`` from :func:`embedding_neighbours`; a token is replaceable when its row is not ``-1``.
    Returns:
        ``(T,)`` token ids, same length.
    """
    inside = input_ids < len(neighbours)
    choices = torch.full((len(input_ids), neighbours.shape[1]), -1, dtype=torch.long)
    choices[inside] = neighbours[input_ids[inside]]
    replace = (choices[:, 0] >= 0) & (torch.rand(len(input_ids), generator=generator) < replace_prob)
    pick = torch.randint(choices.shape[1], (len(input_ids),), generator=generator)
    return torch.where(replace, choices[torch.arange(len(input_ids)), pick], input_ids)


def augment_dataset(dataset, neighbours: torch.Tensor, augment_prob: float, replace_prob: float, seed: int = 0):
    """Rewrite each example with probability ``augment_prob`` (:func:`replace_words`) and drop its label (-100).

    ``dataset`` is a tokenized ``datasets.Dataset`` with ``input_ids`` and ``labels`` (as
    :func:`hf_distill.tasks.tokenize_glue` writes it). Same rows, same order, same lengths: only the training set
    should be augmented, and the KD run then takes exactly as many steps as without augmentation.
    """
    for name, value in (("augment_prob", augment_prob), ("augment_replace_prob", replace_prob)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name}={value} must be in [0, 1].")
    generator = torch.Generator().manual_seed(seed)
    chosen = (torch.rand(len(dataset), generator=generator) < augment_prob).tolist()

    def rewrite(example, index):
        if not chosen[index]:
            return example
        ids = replace_words(torch.as_tensor(example["input_ids"]), neighbours, replace_prob, generator)
        return {**example, "input_ids": ids.tolist(), "labels": IGNORE_INDEX}

    # one process, in order: the draws from `generator` then depend on the seed alone
    key = f"{getattr(dataset, '_fingerprint', '')}|{seed}|{augment_prob}|{replace_prob}|{neighbours.sum().item()}"
    fingerprint = hashlib.sha256(key.encode()).hexdigest()[:32]
    return dataset.map(
        rewrite, with_indices=True, load_from_cache_file=False, new_fingerprint=fingerprint, desc="augmenting"
    )
