"""The tokens a teacher's and a student's vocabularies share: the same text once the space markers are undone.

A token's text is compared as UTF-8 bytes, so that byte tokens match too: byte-level BPE (GPT-2, SmolLM2) spells
bytes with printable stand-ins (``"Ġ"`` is the space byte, ``"Ã©"`` the two bytes of ``"é"``); SentencePiece
(Gemma, Llama) writes a space as ``"▁"`` and a byte it has no piece for as ``"<0xC3>"``.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache

import torch

from .spans import check_offsets, json_steps, tokenizer_name

BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@lru_cache(maxsize=1)
def byte_level_decoder() -> dict[str, int]:
    """GPT-2's byte-to-unicode table (transformers' ``bytes_to_unicode``) inverted: the printable stand-in character
    -> the byte it spells."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {char: byte for byte, char in bytes_to_unicode().items()}


def json_types(component) -> set[str]:
    """Every ``"type"`` in a tokenizers component's JSON (a ``Sequence`` lists its parts); empty for ``None``."""
    return {node["type"] for node in json_steps(component) if isinstance(node.get("type"), str)}


def spelling(tokenizer) -> tuple[str, bool]:
    """How the tokenizer spells text in its vocabulary: ``("byte_level" | "sentencepiece" | "plain", byte_fallback)``.

    Byte-level when its pre-tokenizer or decoder is ``ByteLevel``; SentencePiece when it uses ``Metaspace`` or a
    decoder that turns ``"▁"`` back into a space; plain (tokens are their text) otherwise. Byte fallback when the
    model has ``byte_fallback`` or the decoder a ``ByteFallback`` step.
    """
    backend = tokenizer.backend_tokenizer
    decoder = json.loads(backend.decoder.__getstate__()) if backend.decoder is not None else {}
    types = json_types(backend.pre_tokenizer) | json_types(backend.decoder)
    if "ByteLevel" in types:
        scheme = "byte_level"
    elif "Metaspace" in types or "▁" in json.dumps(decoder, ensure_ascii=False):
        scheme = "sentencepiece"
    else:
        scheme = "plain"
    return scheme, bool(getattr(backend.model, "byte_fallback", False)) or "ByteFallback" in types


def token_bytes(token: str, scheme: str, byte_fallback: bool) -> tuple[bytes, bool]:
    """The text a vocabulary token stands for, as UTF-8 bytes, and whether it is a byte-fallback token.

    ``scheme`` and ``byte_fallback`` as ``spelling`` returns them: byte-level stand-ins become their bytes (a
    character outside the table stays itself); SentencePiece ``"▁"`` becomes a space and, with byte fallback,
    ``"<0xNN>"`` the byte ``0xNN``; a plain token is its own text.
    """
    if byte_fallback and (match := BYTE_FALLBACK.fullmatch(token)):
        return bytes([int(match.group(1), 16)]), True
    if scheme == "byte_level":
        table = byte_level_decoder()
        return b"".join(bytes([table[c]]) if c in table else c.encode() for c in token), False
    if scheme == "sentencepiece":
        return token.replace("▁", " ").encode(), False
    return token.encode(), False


def vocabulary_bytes(tokenizer) -> dict[bytes, int]:
    """Normalised text -> the one id that stands for it, over every non-special token of the tokenizer.

    Where several tokens spell the same text, the choice is deterministic: a regular token before a byte-fallback
    one (SentencePiece predicts ``"▁"``, never ``"<0x20>"``), then the lowest id. Added (non-special) tokens are
    their literal text.
    """
    scheme, byte_fallback = spelling(tokenizer)
    added = {i: t.content for i, t in tokenizer.added_tokens_decoder.items()}
    special = set(tokenizer.all_special_ids)
    best: dict[bytes, tuple[bool, int]] = {}
    for token, i in tokenizer.get_vocab().items():
        if i in special:
            continue
        text, is_byte = (added[i].encode(), False) if i in added else token_bytes(token, scheme, byte_fallback)
        if text and (text not in best or (is_byte, i) < best[text]):
            best[text] = (is_byte, i)
    return {text: i for text, (_, i) in best.items()}


def shared_vocabulary(teacher_tokenizer, student_tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens both vocabularies spell the same way, matched one to one.

    Returns:
        ``(teacher_ids, student_ids)``, two ``LongTensor`` of shape ``(N,)`` sorted by teacher id:
        ``teacher_ids[k]`` and ``student_ids[k]`` stand for the same text (``vocabulary_bytes``). Special tokens
        are never shared; ``N`` may be 0.
    """
    check_offsets(teacher_tokenizer, "teacher")
    check_offsets(student_tokenizer, "student")
    t_vocab, s_vocab = vocabulary_bytes(teacher_tokenizer), vocabulary_bytes(student_tokenizer)
    pairs = sorted((t_vocab[text], s_vocab[text]) for text in t_vocab.keys() & s_vocab.keys())
    table = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)  # (N, 2)
    return table[:, 0].contiguous(), table[:, 1].contiguous()


def describe_shared_vocabulary(teacher_ids: torch.Tensor, teacher_tokenizer, student_tokenizer) -> str:
    """The line a job prints: how many tokens are shared and which share of each vocabulary (``len(tokenizer)``,
    added tokens included) that is."""
    n = int(teacher_ids.numel())
    t_share, s_share = 100 * n / max(len(teacher_tokenizer), 1), 100 * n / max(len(student_tokenizer), 1)
    return (
        f"the vocabularies share {n:,} tokens: {t_share:.1f}% of the teacher's ({tokenizer_name(teacher_tokenizer)}, "
        f"{len(teacher_tokenizer):,}), {s_share:.1f}% of the student's ({tokenizer_name(student_tokenizer)}, "
        f"{len(student_tokenizer):,})"
    )


def tokenizer_record(tokenizer) -> dict:
    """What a cross-tokenizer teacher cache records of a tokenizer: its name, size and a SHA-256 of its vocabulary
    (every token with its id, which ids are special and the special tokens it adds around a text, a BOS: what the
    cached ids and the re-encoding of the rows depend on)."""
    body = {
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": sorted(tokenizer.all_special_ids),
        "adds": tokenizer("", add_special_tokens=True)["input_ids"],
    }
    digest = hashlib.sha256(json.dumps(body, ensure_ascii=False).encode()).hexdigest()
    return {"name": tokenizer_name(tokenizer), "size": len(tokenizer), "vocab_sha256": digest}


def describe_record(record: dict) -> str:
    return f"{record['name']!r} (vocabulary sha256 {record['vocab_sha256'][:12]})"


def check_tokenizer_pair(recorded: dict, teacher_tokenizer, student_tokenizer, where: str, fix: str) -> None:
    """Refuse, in one line naming both pairs, tokenizers other than the ``{"teacher": record, "student": record}``
    (:func:`tokenizer_record`) that ``where`` (e.g. ``"The teacher cache at 'path'"``) was built for."""
    given = {"teacher": tokenizer_record(teacher_tokenizer), "student": tokenizer_record(student_tokenizer)}
    differ = [role for role in ("teacher", "student") if recorded[role]["vocab_sha256"] != given[role]["vocab_sha256"]]
    if differ:
        raise ValueError(
            f"{where} was built for the teacher tokenizer {describe_record(recorded['teacher'])} and the student "
            f"tokenizer {describe_record(recorded['student'])}, not for {describe_record(given['teacher'])} and "
            f"{describe_record(given['student'])} (the {' and '.join(differ)} vocabulary differs): {fix}."
        )
