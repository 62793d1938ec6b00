"""One text encoded by one fast tokenizer, each token with the span of characters it covers.

Each model keeps its own special tokens (Gemma-3 needs its ``<bos>``; SmolLM2 adds none): special tokens get
an empty span and are never aligned with text. Spans are in characters of the Python ``str`` (what a fast
tokenizer's ``offset_mapping`` gives), so an emoji is one character even when it is four byte tokens.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True)
class TokenSpans:
    """One encoded text.

    Attributes:
        ids: the token ids, ``len == T``, special tokens included, as the model reads them.
        spans: ``T`` pairs ``(start, end)`` of character offsets into the text, normalised by ``normalise_spans``:
            a special token's span is empty (``start == end``); a text token's leading whitespace is trimmed
            unless the token is all whitespace.
    """

    ids: list[int]
    spans: list[tuple[int, int]]


def tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def check_offsets(tokenizer, role: str = "tokenizer") -> None:
    """Refuse a tokenizer that cannot give character offsets (a slow, pure-Python one)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"The {role} {tokenizer_name(tokenizer)!r} ({type(tokenizer).__name__}) gives no character offsets, "
            "which cross-tokenizer alignment needs: load a fast tokenizer (AutoTokenizer.from_pretrained(..., "
            "use_fast=True), a folder with tokenizer.json)."
        )


# normalizer steps that change the text itself (not the space markers "▁" / a prefix space): the text a model reads
_TEXT_STEPS = {"Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents", "Nmt", "Precompiled", "Strip", "Replace"}


def json_steps(component):
    """The dict nodes of a ``tokenizers`` component's JSON (a normalizer, pre-tokenizer, decoder...), in document
    order (a ``Sequence`` before its parts, the parts in order); none for ``None``."""
    if component is None:
        return
    stack = [json.loads(component.__getstate__())]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            yield node
            stack = list(node.values()) + stack
        elif isinstance(node, list):
            stack = list(node) + stack


def text_normalisation(tokenizer) -> tuple[str, ...]:
    """The steps of a fast tokenizer's normalizer that change the text it reads, in order (``()`` for none): a
    ``BertNormalizer`` as ``Lowercase`` / ``StripAccents``; SentencePiece's space marker (``Replace`` of ``" "``
    by ``"▁"``) and ``Prepend`` are no change of text."""
    steps = []
    for node in json_steps(tokenizer.backend_tokenizer.normalizer):
        kind = node.get("type")
        if kind == "BertNormalizer":
            lower = bool(node.get("lowercase"))
            steps += ["Lowercase"] * lower
            steps += ["StripAccents"] * bool(
                node.get("strip_accents") or (node.get("strip_accents") is None and lower)
            )
        elif kind == "Replace" and node.get("pattern", {}).get("String") == " " and node.get("content") == "▁":
            continue
        elif kind in _TEXT_STEPS:
            steps.append(kind)
    return tuple(steps)


def check_normalisation(teacher_tokenizer, student_tokenizer) -> None:
    """Refuse two tokenizers that normalise text differently (one lowercases, strips accents or applies a Unicode
    normal form the other does not): the models would read different texts, which cannot be aligned."""
    teacher, student = text_normalisation(teacher_tokenizer), text_normalisation(student_tokenizer)
    if teacher != student:
        raise ValueError(
            f"The teacher tokenizer {tokenizer_name(teacher_tokenizer)!r} normalises text as "
            f"{', '.join(teacher) or 'nothing'} and the student's {tokenizer_name(student_tokenizer)!r} as "
            f"{', '.join(student) or 'nothing'}: the two models read different texts, which cannot be aligned; pick "
            "tokenizers that normalise text alike (e.g. both cased)."
        )


def normalise_spans(text: str, offsets, special) -> list[tuple[int, int]]:
    """Offsets as ``align_spans`` reads them.

    Args:
        text: the encoded text.
        offsets: ``T`` pairs ``(start, end)``, a fast tokenizer's ``offset_mapping``.
        special: ``T`` booleans, true for a special token (BOS, EOS, chat markers, padding).

    Returns:
        ``T`` pairs: ``(start, start)`` for a special token (empty: it covers no text); for a text token, its span
        with leading whitespace trimmed (``"Ġthe"`` over ``" the"`` and ``"▁the"`` over ``"the"`` both become
        the span of ``"the"``), except that a token of whitespace only keeps its span. A text token whose offsets
        are empty (GPT-2's ``trim_offsets=True`` empties a whitespace-only token to ``(end, end)``) gets back the
        whitespace since the previous text token, when that stretch is all whitespace.
    """
    if len(offsets) != len(special):
        raise ValueError(f"{len(offsets)} offsets but {len(special)} special-token flags: give one flag per token")
    spans, previous_end = [], 0
    for (start, end), is_special in zip(offsets, special):
        if is_special:
            spans.append((start, start))
            continue
        if start == end and text[previous_end:end].isspace():
            start = previous_end
        previous_end = max(previous_end, end)
        trimmed = start
        while trimmed < end and text[trimmed].isspace():
            trimmed += 1
        spans.append((start, end) if trimmed == end else (trimmed, end))
    return spans


def encode_with_spans(tokenizer, text: str, *, add_special_tokens: bool = True, role: str = "tokenizer") -> TokenSpans:
    """Encode ``text`` with the tokenizer's own special tokens and return ids with normalised spans.

    ``role`` ("teacher", "student") names the tokenizer in errors. A token is special when the tokenizer flags it
    (``special_tokens_mask``: BOS/EOS its post-processor adds) or its id is one of ``all_special_ids`` (a special
    token written in the text, e.g. a chat marker).
    """
    check_offsets(tokenizer, role)
    enc = tokenizer(
        text, add_special_tokens=add_special_tokens, return_offsets_mapping=True, return_special_tokens_mask=True
    )
    ids = list(enc["input_ids"])
    special_ids = set(tokenizer.all_special_ids)
    special = [bool(m) or i in special_ids for i, m in zip(ids, enc["special_tokens_mask"])]
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    return TokenSpans(ids=ids, spans=normalise_spans(text, offsets, special))
