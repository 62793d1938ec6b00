"""A teacher with another tokenizer (issue 19): the student's rows re-encoded for the teacher from their bytes
(hf_distill.cross_tokenizer.retokenize), pinned against the alignment of the same texts encoded by both tokenizers
(hf_distill.cross_tokenizer.align, itself pinned in test_cross_tokenizer_align)."""

from __future__ import annotations

import random

import torch
from test_cross_tokenizer_align import ALPHABET, byte_level, gemma, llama

from hf_distill.cross_tokenizer.align import aligned_positions
from hf_distill.cross_tokenizer.retokenize import byte_table, decode_chars, retokenize
from hf_distill.cross_tokenizer.spans import encode_with_spans


def student_batch(tokenizer, texts, left=False):
    """The texts encoded by the student, padded (pad id 0, mask 0) on the right or the left."""
    rows = [encode_with_spans(tokenizer, t).ids for t in texts]
    width = max(len(r) for r in rows)
    pad = [[0] * (width - len(r)) for r in rows]
    ids = [(p + r) if left else (r + p) for r, p in zip(rows, pad)]
    mask = [([0] * len(p) + [1] * len(r)) if left else ([1] * len(r) + [0] * len(p)) for r, p in zip(rows, pad)]
    return torch.tensor(ids), torch.tensor(mask)


def reference(teacher, student, texts, s_mask, left=False):
    """aligned_positions of the texts encoded by both tokenizers (character spans), laid out as the batches."""
    t_rows = [encode_with_spans(teacher, t).spans for t in texts]
    width = s_mask.shape[1]
    s_rows = []
    for t in texts:
        spans = encode_with_spans(student, t).spans
        pad = [(0, 0)] * (width - len(spans))
        s_rows.append(pad + spans if left else spans + pad)
    t_width = max(len(r) for r in t_rows)
    t_rows = [r + [(r[-1][1] if r else 0,) * 2] * (t_width - len(r)) for r in t_rows]
    t_mask = torch.tensor(
        [
            [1] * len(encode_with_spans(teacher, t).ids) + [0] * (t_width - len(encode_with_spans(teacher, t).ids))
            for t in texts
        ]
    )
    return aligned_positions(t_rows, s_rows, t_mask, s_mask)


def as_lists(aligned):
    return [x.tolist() for x in vars(aligned).values()]


def test_decode_chars_keeps_whole_characters_and_their_bytes():
    data = "a😀é".encode()
    assert decode_chars(data) == ("a😀é", [0, 1, 5], [1, 5, 7])
    assert decode_chars(data[2:]) == ("é", [5 - 2], [7 - 2])  # a row cut inside the emoji: its bytes are dropped
    assert decode_chars(b"a\xffb") == ("ab", [0, 2], [1, 3])  # an invalid byte (a sampled one) is skipped


def test_the_byte_table_spells_byte_level_and_byte_fallback_tokens():
    student = byte_level()
    table = byte_table(student)
    assert table.pieces[student.convert_tokens_to_ids("Ġcat")] == b" cat" and not table.prefix_space
    assert table.pieces[student.eos_token_id] is None  # special: no text
    sp = byte_table(llama())
    assert sp.pieces[llama().convert_tokens_to_ids("<0xC3>")] == b"\xc3" and sp.prefix_space


def test_retokenized_rows_align_as_the_texts_encoded_by_both():
    rng = random.Random(0)
    pairs = [
        (gemma(), byte_level()),
        (gemma(), byte_level(bos=True)),
        (byte_level(bos=True), gemma(bos=False)),
        (llama(), byte_level()),
    ]
    for teacher, student in pairs:
        for left in (False, True):
            texts = ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 24))) for _ in range(6)]
            ids, mask = student_batch(student, texts, left=left)
            got = retokenize(ids, mask, byte_table(student), teacher)
            for b, text in enumerate(texts):
                want = encode_with_spans(teacher, text).ids
                assert got.input_ids[b, : len(want)].tolist() == want
                assert got.attention_mask[b].sum() == len(want)
            assert as_lists(got.aligned) == as_lists(reference(teacher, student, texts, mask, left=left))


def test_a_row_cut_inside_a_character_or_the_teachers_length_aligns_what_both_read():
    teacher, student = gemma(), byte_level()
    ids, mask = student_batch(student, ["the cat 😀 sat"])
    cut = ids[:, :-2]  # "the", " cat", " " + 3 of the emoji's 4 bytes: the row ends inside a character
    got = retokenize(cut, mask[:, :-2], byte_table(student), teacher)
    whole = retokenize(ids, mask, byte_table(student), teacher)
    n = len(got.aligned.batch)
    assert 0 < n < len(whole.aligned.batch)
    assert as_lists(got.aligned) == [x[:n] for x in as_lists(whole.aligned)]  # the same groups, up to the cut
    short = retokenize(ids, mask, byte_table(student), teacher, max_length=5)  # <bos> t h e ▁cat
    assert short.input_ids.shape[1] == 5
    assert 0 < len(short.aligned.batch) < len(whole.aligned.batch)
    assert int(short.aligned.teacher.max()) + int(short.aligned.teacher_tokens.max()) <= 4


def test_a_student_that_prepends_a_space_gives_the_teacher_the_text_without_it():
    """Llama's "▁" before a text is no text (its decoder strips it): the teacher reads "the cat", not " the cat"."""
    teacher, student = byte_level(bos=True), llama()
    ids, mask = student_batch(student, ["the cat"])
    got = retokenize(ids, mask, byte_table(student), teacher)
    assert got.input_ids[0].tolist() == encode_with_spans(teacher, "the cat").ids
    assert teacher.decode(got.input_ids[0], skip_special_tokens=True) == student.decode(
        ids[0], skip_special_tokens=True
    )
