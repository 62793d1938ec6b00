"""Teacher and student tokens grouped by the text they cover, and the positions whose predictions are compared.

Definitions (docs/losses.md, "Cross-tokenizer alignment"). Both sides encode one text; spans come from
``spans.normalise_spans`` (leading whitespace trimmed, special tokens empty).

- A *text token* has a non-empty span; a token with an empty span (a special token) belongs to no group.
- A *cut* of one side is a character ``c`` at which its text tokens split cleanly: some text token ends at ``c``
  and the next text token starts at or after ``c``. Byte tokens of one character (``<0xF0>``..``<0x80>`` of an
  emoji, all spanning it) and byte-level tokens that share a character (``"ĠðŁĺ"`` over ``" 😀"``, ``"Ģ"`` over
  ``"😀"``) therefore never cut inside the character.
- The *common cuts* are the cuts of both sides; the groups are the runs of text tokens between consecutive common
  cuts: the finest split into stretches of text that both sides tokenise separately (one-to-one, one-to-many,
  many-to-one, many-to-many). Whitespace never moves a cut: ``"Ġthe"`` and ``"▁the"`` both end after ``e``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..losses.cross_tokenizer import ChainRows

Span = tuple[int, int]


class SpanGroup(NamedTuple):
    """Tokens of both sides covering one stretch of text: ``teacher`` and ``student`` are index ranges
    (half-open, into the encoded sequence, special tokens counted) from the group's first to its last text token."""

    teacher: range
    student: range


def text_tokens(spans: Sequence[Span], role: str = "teacher") -> list[int]:
    """Indices of the tokens with a non-empty span, checked to be in text order (ends never decrease)."""
    indices = [i for i, (start, end) in enumerate(spans) if end > start]
    for a, b in zip(indices, indices[1:]):
        if spans[b][1] < spans[a][1] or spans[b][0] < spans[a][0]:
            raise ValueError(
                f"{role} span {b} {tuple(spans[b])} comes before span {a} {tuple(spans[a])}: give spans in text "
                "order, as a tokenizer's offset_mapping is"
            )
    return indices


def cut_after(spans: Sequence[Span], indices: Sequence[int]) -> list[bool]:
    """For each text token (``indices``), whether the text can be cut after it: the next text token starts at or
    after its end (always true for the last one)."""
    return [k + 1 == len(indices) or spans[indices[k + 1]][0] >= spans[i][1] for k, i in enumerate(indices)]


def align_spans(teacher_spans: Sequence[Span], student_spans: Sequence[Span]) -> list[SpanGroup]:
    """Group the teacher's and the student's text tokens by the common cuts (module docstring).

    Args:
        teacher_spans: ``T_t`` pairs ``(start, end)`` of normalised character spans (``spans.normalise_spans``).
        student_spans: ``T_s`` pairs, the same text encoded by the student's tokenizer.

    Returns:
        ``list[SpanGroup]`` in text order; each text token of either side is in exactly one group, special tokens
        in none (an empty list for a text without text tokens). A two-pointer walk over the cuts of both sides,
        ``O(T_t + T_s)``.
    """
    t_idx, s_idx = text_tokens(teacher_spans, "teacher"), text_tokens(student_spans, "student")
    t_cut, s_cut = cut_after(teacher_spans, t_idx), cut_after(student_spans, s_idx)
    groups, i, j, t_first, s_first = [], 0, 0, 0, 0
    while i < len(t_idx) and j < len(s_idx):
        if not t_cut[i]:
            i += 1
        elif not s_cut[j]:
            j += 1
        elif teacher_spans[t_idx[i]][1] < student_spans[s_idx[j]][1]:
            i += 1
        elif teacher_spans[t_idx[i]][1] > student_spans[s_idx[j]][1]:
            j += 1
        else:
            groups.append(SpanGroup(range(t_idx[t_first], t_idx[i] + 1), range(s_idx[s_first], s_idx[j] + 1)))
            i, j = i + 1, j + 1
            t_first, s_first = i, j
    if i < len(t_idx) or j < len(s_idx):
        t_end = teacher_spans[t_idx[-1]][1] if t_idx else 0
        s_end = student_spans[s_idx[-1]][1] if s_idx else 0
        raise ValueError(
            f"the teacher's text tokens end at character {t_end}, the student's at {s_end}: align the two "
            "tokenizations of one text"
        )
    return groups


@dataclass(frozen=True)
class AlignedPositions:
    """The groups of a batch as index tensors for a loss; all ``LongTensor`` of shape ``(G,)``.

    Attributes:
        batch: the row of each group.
        teacher: the teacher position whose next-token prediction is the group's first teacher token (the
            position just before it).
        student: the same for the student.
        teacher_tokens: the group's number of teacher tokens (``teacher + 1 ... teacher + teacher_tokens`` are
            the group's tokens; the positions ``teacher ... teacher + teacher_tokens - 1`` predict them).
        student_tokens: the same for the student.
    """

    batch: torch.Tensor
    teacher: torch.Tensor
    student: torch.Tensor
    teacher_tokens: torch.Tensor
    student_tokens: torch.Tensor


def aligned_positions(
    teacher_spans: Sequence[Sequence[Span]],
    student_spans: Sequence[Sequence[Span]],
    teacher_mask: torch.Tensor | None = None,
    student_mask: torch.Tensor | None = None,
) -> AlignedPositions:
    """The positions of a batch whose next-token predictions are compared.

    A causal LM at position ``p`` predicts token ``p + 1``. For a group whose first tokens are at ``t`` (teacher)
    and ``s`` (student), the compared positions are ``t - 1`` and ``s - 1``: both models have read exactly the
    text before the group (plus each its own special tokens, e.g. a BOS) and predict the next stretch of text,
    which starts at the same character on both sides. These are the last positions of the previous group (or a
    BOS). A group is kept when both positions exist (``>= 0``: the first group needs a token before it on both
    sides, so a BOS on one side only drops it) and are real tokens where masks are given.

    Args:
        teacher_spans: ``B`` rows of ``T_t`` normalised spans, laid out as the rows of the teacher's
            ``input_ids`` (padding as special tokens with empty spans, so left padding works).
        student_spans: ``B`` rows of ``T_s`` spans, the same texts as the student's rows.
        teacher_mask: optional ``(B, T_t)`` attention mask; a position with 0 is never compared.
        student_mask: optional ``(B, T_s)`` attention mask.

    Returns:
        ``AlignedPositions`` with ``G`` groups, rows in order, groups in text order within a row.
    """
    if len(teacher_spans) != len(student_spans):
        raise ValueError(f"{len(teacher_spans)} teacher rows but {len(student_spans)} student rows: give one per text")
    rows = []
    for b, (t_row, s_row) in enumerate(zip(teacher_spans, student_spans)):
        for group in align_spans(t_row, s_row):
            t, s = group.teacher.start - 1, group.student.start - 1
            if t < 0 or s < 0:
                continue
            if (teacher_mask is not None and not teacher_mask[b, t]) or (
                student_mask is not None and not student_mask[b, s]
            ):
                continue
            rows.append((b, t, s, len(group.teacher), len(group.student)))
    table = torch.tensor(rows, dtype=torch.long).reshape(-1, 5)  # (G, 5)
    return AlignedPositions(*table.unbind(dim=1))


def chain_rule_rows(
    aligned: AlignedPositions, teacher_input_ids: torch.Tensor, student_input_ids: torch.Tensor
) -> ChainRows:
    """The rows a chain-rule merge reads, for the groups of one student token (one-to-one and one-to-many).

    Args:
        aligned: the ``G`` groups of a batch (``align.aligned_positions``).
        teacher_input_ids: ``(B, T_t)``; student_input_ids: ``(B, T_s)``, the rows the spans were taken from.
    """
    groups = (aligned.student_tokens == 1).nonzero().squeeze(1)  # (C,)
    counts = aligned.teacher_tokens[groups]  # (C,)
    starts = torch.cumsum(counts, 0) - counts  # (C,) first row of each group
    offsets = torch.arange(int(counts.sum())) - starts.repeat_interleave(counts)  # (M,) j within its group
    batch = aligned.batch[groups].repeat_interleave(counts)  # (M,)
    positions = aligned.teacher[groups].repeat_interleave(counts) + offsets  # (M,)
    tokens = teacher_input_ids[batch, positions + 1]  # (M,)
    student_tokens = student_input_ids[aligned.batch[groups], aligned.student[groups] + 1]  # (C,)
    return ChainRows(groups, counts, batch, positions, tokens, student_tokens)
