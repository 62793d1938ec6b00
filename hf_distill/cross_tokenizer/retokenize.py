"""The student's rows as text for a teacher with another tokenizer.

A row of student token ids is turned back into the bytes its tokens stand for (exactly: byte-level and byte-fallback
tokens are bytes), the whole UTF-8 characters among them are decoded (a row cut inside a character, or a sampled
invalid byte, loses that byte only), and the text is encoded by the teacher's tokenizer with the teacher's own
special tokens (Gemma-3's ``<bos>``). Both sides' spans are then offsets into the row's bytes, normalised as
``spans.normalise_spans`` does, and :func:`hf_distill.cross_tokenizer.align.aligned_positions` pairs them. Working
from the ids (not from a text column) serves fixed data and student-generated completions alike.

The student's special tokens (an EOS between two documents of a block) cover no text: the row is split there into
documents, each encoded for the teacher with its own special tokens (a ``<bos>`` before each), so both models see a
boundary between the two texts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch

from .align import AlignedPositions, aligned_positions
from .spans import check_offsets, json_steps, normalise_spans
from .vocab import spelling, token_bytes


class ByteTable(NamedTuple):
    """A student tokenizer's tokens as bytes: ``pieces[id]`` the bytes token ``id`` stands for (``None``: a special
    token, no text); ``prefix_space``: the tokenizer writes a space before a text (Llama's ``"▁"`` prepended) that
    its decoder strips, so a row's first space is not text."""

    pieces: list[bytes | None]
    prefix_space: bool


def strips_prefix_space(tokenizer) -> bool:
    """Whether the tokenizer's decoder strips a leading space it prepended (a ``Strip`` step, as Llama's)."""
    return any(
        node.get("type") == "Strip" and node.get("content") == " " and node.get("start", 0) > 0
        for node in json_steps(tokenizer.backend_tokenizer.decoder)
    )


def byte_table(tokenizer) -> ByteTable:
    """The student tokenizer's :class:`ByteTable` (special tokens: ``None``)."""
    check_offsets(tokenizer, "student")
    scheme, fallback = spelling(tokenizer)
    special = set(tokenizer.all_special_ids)
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    size = max(len(tokenizer), max(tokenizer.get_vocab().values(), default=-1) + 1)
    table: list[bytes | None] = [None] * size
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        table[i] = added[i].encode() if i in added else token_bytes(token, scheme, fallback)[0]
    return ByteTable(table, strips_prefix_space(tokenizer))


def byte_text(data: bytes) -> str:
    """One character per byte, for ``normalise_spans`` on byte offsets: ASCII as itself (its whitespace stays
    whitespace), any other byte a letter (``chr(0x100 + b)``), never whitespace."""
    return "".join(chr(b) if b < 0x80 else chr(0x100 + b) for b in data)


def decode_chars(data: bytes) -> tuple[str, list[int], list[int]]:
    """``(text, starts, ends)``: the whole UTF-8 characters of ``data`` and each one's byte span; a byte that starts
    no valid character (a continuation byte at a cut, an invalid byte) is skipped."""
    chars, starts, ends, i = [], [], [], 0
    while i < len(data):
        lead = data[i]
        n = 1 if lead < 0x80 else 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4 if lead < 0xF5 else 0
        try:
            char = data[i : i + n].decode("utf-8") if n else None
        except UnicodeDecodeError:
            char = None
        if char is None or len(char) != 1:
            i += 1
            continue
        chars.append(char)
        starts.append(i)
        ends.append(i + n)
        i += n
    return "".join(chars), starts, ends


def documents(offsets: list[tuple[int, int]], special: list[bool], size: int) -> list[tuple[int, int]]:
    """The byte ranges of a row's documents: its text split at the student's special tokens (the EOS between two
    documents of a block), empty ones dropped. Each is encoded for the teacher on its own, with the teacher's special
    tokens, so the teacher sees a document boundary where the student does."""
    cuts = sorted({start for (start, _), is_special in zip(offsets, special) if is_special} | {0, size})
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def char_to_byte(a: int, b: int, starts: list[int], ends: list[int]) -> tuple[int, int]:
    """Character offsets ``[a, b)`` of the decoded text as byte offsets of the row (``decode_chars``' spans)."""
    start = starts[a] if a < len(starts) else (ends[-1] if ends else 0)
    return start, (ends[b - 1] if b > a else start)


def text_end(spans: list[tuple[int, int]]) -> int:
    """Where a row's text tokens end (0 without any)."""
    return max((b for a, b in spans if b > a), default=0)


def common_text(teacher: list[tuple[int, int]], student: list[tuple[int, int]]):
    """Both rows' spans cut to the text both cover to its end: a token reaching past the other side's last text
    token (the teacher's row cut at ``max_length``, a character split at the row's end) covers no text."""
    while (end := min(text_end(teacher), text_end(student))) != max(text_end(teacher), text_end(student)):
        teacher, student = ([(a, b) if b <= end else (a, a) for a, b in row] for row in (teacher, student))
    return teacher, student


@dataclass(frozen=True)
class Retokenized:
    """A batch of student rows encoded for the teacher.

    Attributes:
        input_ids, attention_mask: ``(B, T_t)`` the teacher's rows, padded on the right.
        aligned: the compared positions of both sides (``align.AlignedPositions``, ``G`` groups).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    aligned: AlignedPositions


def student_row(ids: list[int], table: ByteTable) -> tuple[bytes, list[tuple[int, int]], list[bool]]:
    """``(bytes, offsets, special)`` of one row of student ids (without padding)."""
    data, offsets, special, at = bytearray(), [], [], 0
    strip = table.prefix_space
    for i in ids:
        piece = table.pieces[i] if 0 <= i < len(table.pieces) else None
        if strip and piece:  # the prefix space before the row's first text token is no text
            piece, strip = (piece[1:] if piece.startswith(b" ") else piece), False
        if piece is None:
            offsets.append((at, at))
            special.append(True)
            continue
        data += piece
        offsets.append((at, at + len(piece)))
        special.append(False)
        at += len(piece)
    return bytes(data), offsets, special


def retokenize(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    table: ByteTable,
    teacher_tokenizer,
    *,
    max_length: int | None = None,
) -> Retokenized:
    """Encode the student's rows (``input_ids`` ``(B, T_s)``, ``attention_mask``: 1 for real tokens, any padding
    side) for the teacher and align the two (module docstring). ``table`` is :func:`byte_table` of the student's
    tokenizer. ``max_length`` cuts the teacher's rows (its positions beyond are not compared)."""
    check_offsets(teacher_tokenizer, "teacher")
    rows = input_ids.tolist()
    mask = attention_mask.tolist() if attention_mask is not None else [[1] * len(r) for r in rows]
    special_ids = set(teacher_tokenizer.all_special_ids)
    students, segments = [], []  # per row: its letters and spans; its documents' (byte offset, decoded chars)
    for ids, keep in zip(rows, mask):
        data, offsets, special = student_row([i for i, k in zip(ids, keep) if k], table)
        # the row's positions, padding (either side) as special tokens with empty spans
        it = iter(zip(offsets, special))
        laid = [next(it) if k else ((0, 0), True) for k in keep]
        letters = byte_text(data)
        students.append((letters, normalise_spans(letters, [o for o, _ in laid], [s for _, s in laid])))
        segments.append([(a, decode_chars(data[a:b])) for a, b in documents(offsets, special, len(data))])
    # split_special_tokens: "<bos>" written in a row is text to the student, so text to the teacher (no control token)
    flat = [chars[0] for row in segments for _, chars in row]
    enc = teacher_tokenizer(
        flat or [""], add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True,
        split_special_tokens=True,
    )  # fmt: skip
    t_rows, t_spans, s_spans, n = [], [], [], 0
    for (letters, s_row), row in zip(students, segments):
        t_ids, flags, offsets = [], [], []
        for start, (_, starts, ends) in row:  # each document with the teacher's own special tokens (its <bos>)
            t_ids += enc["input_ids"][n]
            flags += [bool(m) or i in special_ids for i, m in zip(enc["input_ids"][n], enc["special_tokens_mask"][n])]
            at = [start + x for x in starts], [start + x for x in ends]
            offsets += [char_to_byte(a, b, *at) if at[0] else (start, start) for a, b in enc["offset_mapping"][n]]
            n += 1
        t_ids, flags, offsets = t_ids[:max_length], flags[:max_length], offsets[:max_length]
        t_row, s_row = common_text(normalise_spans(letters, offsets, flags), s_row)
        t_rows.append(t_ids)
        t_spans.append(t_row)
        s_spans.append(s_row)
    width = max((len(r) for r in t_rows), default=0)
    pad_id = teacher_tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else (teacher_tokenizer.eos_token_id or 0)
    t_input = torch.tensor([r + [pad_id] * (width - len(r)) for r in t_rows], dtype=torch.long).reshape(-1, width)
    t_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in t_rows], dtype=torch.long).reshape(-1, width)
    for spans, row in zip(t_spans, t_rows):  # padding: special, empty
        end = spans[-1][1] if spans else 0
        spans.extend([(end, end)] * (width - len(row)))
    aligned = aligned_positions(t_spans, s_spans, t_mask, attention_mask)
    return Retokenized(t_input.to(input_ids.device), t_mask.to(input_ids.device), aligned)
