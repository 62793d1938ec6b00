"""The rows of a cross-tokenizer teacher cache: what :func:`hf_distill.data.teacher_cache.build_teacher_cache` stores
per example when its teacher is a :class:`~hf_distill.teachers.CrossTokenizerTeacher` (another tokenizer than the
student's).

Each student row is re-encoded for the teacher and aligned as in training (:mod:`hf_distill.cross_tokenizer
.retokenize`); at each aligned group's compared student position ``s`` the cache keeps, in the teacher's token space,
the teacher position ``t`` it was compared with, the teacher's top-k ids and log-probabilities there (log-softmax of
its full vocabulary at the cache temperature) and, for a group of one student token, the teacher's log-probability
of the group's stretch of text (the chain rule over its tokens; NaN for the other groups). Four columns
(:data:`hf_distill.constants.CROSS_TOKENIZER_CACHE_COLUMNS`), each as long as the row's ``input_ids``, so the
collator pads them like it; a position without a group holds ``-1``, zeros and NaN. Neither model's ``(B, T, V)``
logits exist: the teacher's rows are computed ``GROUP_CHUNK`` groups at a time.
"""

from __future__ import annotations

import datasets
import torch

from ..constants import CROSS_TOKENIZER_CACHE_COLUMNS
from ..losses.cross_tokenizer_chunked import chain_logprobs, teacher_logits
from ..losses.topk import LOGPROB_TOLERANCE, teacher_topk
from ..teachers.base import TeacherRequest

GROUP_CHUNK = 256  # teacher rows (V_t floats each) computed at a time: 256 MB for Gemma-3's 262,144 tokens


def cross_tokenizer_features(dataset: datasets.Dataset, k: int, dtype: str) -> datasets.Features:
    """The dataset's features plus the four columns: per position an int32 teacher position, ``k`` int32 ids, ``k``
    ``dtype`` log-probabilities and one ``dtype`` chain log-probability."""
    positions, ids, logprobs, chain = CROSS_TOKENIZER_CACHE_COLUMNS
    features = dataset.features.copy()
    features[positions] = datasets.Sequence(datasets.Value("int32"))
    features[ids] = datasets.Sequence(datasets.Sequence(datasets.Value("int32"), length=k))
    features[logprobs] = datasets.Sequence(datasets.Sequence(datasets.Value(dtype), length=k))
    features[chain] = datasets.Sequence(datasets.Value(dtype))
    return features


def check_logprobs(values: torch.Tensor) -> None:
    """Refuse teacher outputs that are no log-probabilities (NaN, or above 0), of any shape: no cache is written."""
    if torch.isnan(values).any():
        raise ValueError(
            "The teacher gave NaN log-probabilities, so no cache was written: run it in float32 (a float16 "
            "teacher overflows on some inputs) or check its weights."
        )
    if values.numel() and float(values.max()) > LOGPROB_TOLERANCE:
        raise ValueError(
            f"The teacher gave a positive log-probability ({float(values.max()):.4g}), so no cache was written: "
            "its outputs are broken (check its weights and dtype)."
        )


@torch.no_grad()
def group_targets(teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor, k: int, temperature: float):
    """``(positions (B, T_s), ids (B, T_s, k), logprobs (B, T_s, k), chain (B, T_s))`` of a padded batch of student
    rows: the teacher's targets at each group's compared student position (module docstring), on the CPU."""
    out = teacher.outputs(
        {"input_ids": input_ids, "attention_mask": attention_mask}, TeacherRequest(logits=True, chunked=True)
    )
    hidden, head, targets = out.last_hidden, out.head, out.alignment
    aligned = targets.aligned
    b, s, t = aligned.batch, aligned.student, aligned.teacher  # (G,) each, on the CPU
    top_ids, top_logprobs = [], []
    for start in range(0, len(b), GROUP_CHUNK):
        rows = hidden[
            b[start : start + GROUP_CHUNK].to(hidden.device), t[start : start + GROUP_CHUNK].to(hidden.device)
        ]
        ids, logprobs = teacher_topk(teacher_logits(rows, head, targets.softcap), k, temperature)  # (n, k) each
        top_ids.append(ids.cpu())
        top_logprobs.append(logprobs.cpu())
    chain = chain_logprobs(hidden, head, targets.chain, temperature, targets.softcap, GROUP_CHUNK).cpu()  # (C,)
    top_ids = torch.cat(top_ids) if top_ids else torch.zeros(0, k, dtype=torch.long)
    top_logprobs = torch.cat(top_logprobs) if top_logprobs else torch.zeros(0, k)
    check_logprobs(torch.cat([top_logprobs.reshape(-1), chain.reshape(-1)]))  # (G * k + C,)
    shape = input_ids.shape
    positions = torch.full(shape, -1, dtype=torch.int32)
    positions[b, s] = t.to(torch.int32)
    ids = torch.zeros(*shape, k, dtype=torch.int32)
    ids[b, s] = top_ids.to(torch.int32)
    logprobs = torch.zeros(*shape, k)
    logprobs[b, s] = top_logprobs
    chain_rows = torch.full(shape, float("nan"))
    groups = targets.chain.groups
    chain_rows[b[groups], s[groups]] = chain
    return positions, ids, logprobs, chain_rows


def cross_tokenizer_rows(teacher, input_ids, attention_mask, lengths, k, temperature, dtype) -> dict:
    """The four columns of a batch (``input_ids`` ``(B, L)`` right-padded, ``lengths`` the rows' own), each row cut
    back to its length; log-probabilities as ``dtype`` (a numpy type)."""
    positions, ids, logprobs, chain = group_targets(teacher, input_ids, attention_mask, k, temperature)
    positions, ids = positions.numpy(), ids.numpy()
    logprobs, chain = logprobs.numpy().astype(dtype), chain.numpy().astype(dtype)
    columns = (positions, ids, logprobs, chain)
    return {
        name: [x[row, :n] for row, n in enumerate(lengths)] for name, x in zip(CROSS_TOKENIZER_CACHE_COLUMNS, columns)
    }
