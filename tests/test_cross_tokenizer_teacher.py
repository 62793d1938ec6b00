"""A teacher with another tokenizer (issue 19): the student's rows re-encoded for the teacher from their bytes
(hf_distill.cross_tokenizer.retokenize), pinned against the alignment of the same texts encoded by both tokenizers
(hf_distill.cross_tokenizer.align, itself pinned in test_cross_tokenizer_align)."""

from __future__ import annotations

import random

import pytest
import torch
from test_cross_tokenizer_align import ALPHABET, byte_level, gemma, llama

from hf_distill.cross_tokenizer.align import aligned_positions
from hf_distill.cross_tokenizer.retokenize import byte_table, decode_chars, retokenize
from hf_distill.cross_tokenizer.spans import encode_with_spans
from hf_distill.teachers import CrossTokenizerTeacher


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


def test_text_that_spells_a_teacher_special_token_is_text_for_the_teacher():
    """ "<bos>" written in a row is five characters of text to the student: the teacher reads them as text too, not
    as its control token (which would open a new document mid-row and pair the student's "<" with the teacher's
    prediction of what follows the marker)."""
    teacher, student = gemma(), byte_level()
    text = "the cat<bos> sat<eos>"
    ids, mask = student_batch(student, [text])
    got = retokenize(ids, mask, byte_table(student), teacher)
    assert got.input_ids[0].tolist().count(teacher.bos_token_id) == 1  # its own, first
    assert teacher.eos_token_id not in got.input_ids[0].tolist()
    assert teacher.decode(got.input_ids[0], skip_special_tokens=True) == text
    # every student text token is in a group: "<", "b", ... are compared, not skipped
    assert int(got.aligned.student_tokens.sum()) == len(ids[0]) - 1


# --- the chunked term against the reference loss on full logits ------------------------------------------------


def random_alignment(seed=0, B=2, T_s=9, T_t=11):
    """Aligned groups of two random rows (the student positions unique per row, increasing), their chain rows."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for b in range(B):
        s_pos = sorted(torch.randperm(T_s - 2, generator=g)[:4].tolist())
        t_pos = sorted(torch.randperm(T_t - 3, generator=g)[:4].tolist())
        for s, t in zip(s_pos, t_pos):
            rows.append(
                (b, t, s, int(torch.randint(1, 3, (1,), generator=g)), int(torch.randint(1, 3, (1,), generator=g)))
            )
    table = torch.tensor(rows).reshape(-1, 5)
    from hf_distill.cross_tokenizer.align import AlignedPositions

    return AlignedPositions(*table.unbind(1))


def random_term_inputs(B=2, T_s=9, T_t=11, D_s=6, D_t=5, V_s=13, V_t=17):
    """``(aligned, chain, shared, s_hidden, s_head, t_hidden, t_head)``: random rows of both models with a random
    alignment, its chain rows and 4 shared tokens (seed 0)."""
    from hf_distill.cross_tokenizer.align import chain_rule_rows

    torch.manual_seed(0)
    aligned = random_alignment(B=B, T_s=T_s, T_t=T_t)
    chain = chain_rule_rows(aligned, torch.randint(0, V_t, (B, T_t)), torch.randint(0, V_s, (B, T_s)))
    shared = (torch.tensor([3, 0, 7, 12]), torch.tensor([5, 16, 2, 9]))
    s_hidden = torch.randn(B, T_s, D_s, requires_grad=True)
    s_head = torch.nn.Linear(D_s, V_s, bias=False)
    return aligned, chain, shared, s_hidden, s_head, torch.randn(B, T_t, D_t), torch.nn.Linear(D_t, V_t, bias=False)


def test_the_chunked_term_is_the_reference_loss_and_its_gradient():
    from hf_distill.losses.cross_tokenizer import ChainTargets, CrossTokenizerMix, cross_tokenizer_loss, span_logprobs
    from hf_distill.losses.cross_tokenizer_chunked import CrossTokenizerTargets, cross_tokenizer_term

    aligned, chain, shared, s_hidden, s_head, t_hidden, t_head = random_term_inputs()
    mix = CrossTokenizerMix(exact=1.0, uld=0.5, chain=0.7)
    kw = {"mix": mix, "loss": "jsd", "temperature": 2.0, "beta": 0.3, "uld_top_k": 8}
    targets = CrossTokenizerTargets(aligned, chain, shared)

    got, parts = cross_tokenizer_term(s_hidden, s_head, t_hidden, t_head, targets, normalizer=10.0, chunk_size=3, **kw)
    got.backward()
    got_grads = (s_hidden.grad.clone(), s_head.weight.grad.clone())
    s_hidden.grad, s_head.weight.grad = None, None

    # the reference: full logits at the compared positions, cross_tokenizer_loss as pinned in its own tests
    s_logits = s_head(s_hidden)[aligned.batch, aligned.student]  # (G, V_s)
    t_full = t_head(t_hidden).detach()
    t_logits = t_full[aligned.batch, aligned.teacher]
    logprobs = span_logprobs(t_full[chain.batch, chain.positions], chain.tokens, chain.counts, temperature=2.0)
    want, want_parts = cross_tokenizer_loss(
        s_logits, t_logits, shared, num_items=10.0, chain=ChainTargets(chain.groups, chain.student_tokens, logprobs),
        **kw,
    )  # fmt: skip
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert parts.keys() == want_parts.keys() == {"exact", "uld", "chain"}
    for name in parts:
        torch.testing.assert_close(parts[name], want_parts[name].detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grads[0], s_hidden.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grads[1], s_head.weight.grad, rtol=1e-5, atol=1e-6)
    # the same from full student logits (no head): the eval path
    full, _ = cross_tokenizer_term(
        s_head(s_hidden), None, t_hidden, t_head, targets, normalizer=10.0, chunk_size=3, **kw
    )
    torch.testing.assert_close(full, want, rtol=1e-5, atol=1e-6)


# --- the trainer: a causal-LM teacher with another tokenizer --------------------------------------------------


def tiny_lm(vocab: int, seed: int, hidden=32, layers=2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=37, max_position_embeddings=128,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


WORDS = ["the", " cat", " sat", " 123", "45", " é", " 😀", "\n", " the", "ca"]


def lm_rows(tokenizer, n=8, seed=0):
    from datasets import Dataset

    rng = random.Random(seed)
    texts = ["".join(rng.choice(WORDS) for _ in range(rng.randint(4, 10))) for _ in range(n)]
    ids, mask = student_batch(tokenizer, texts)
    labels = ids.masked_fill(mask == 0, -100)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": mask.tolist(), "labels": labels.tolist()})


def xtok_trainer(out, *, batch=8, accum=1, callbacks=(), data=None, **kw):
    from conftest import trainer_config

    from hf_distill import DistillationTrainer
    from hf_distill.data import DistillationDataCollator

    student_tok, teacher_tok = byte_level(), gemma()
    student_tok.pad_token = student_tok.eos_token  # the rows are padded already; the collator wants a pad token
    args = trainer_config(
        out, per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_grad_norm=0, alpha_task=1.0,
        alpha_logits=1.0, temperature=2.0, kd_chunk_size=5, **kw,
    )  # fmt: skip
    return DistillationTrainer(
        model=tiny_lm(len(student_tok), seed=2), teacher_model=tiny_lm(len(teacher_tok), seed=1), args=args,
        train_dataset=data if data is not None else lm_rows(student_tok), processing_class=student_tok,
        teacher_processing_class=teacher_tok, callbacks=list(callbacks),
        data_collator=DistillationDataCollator(pad_token_id=student_tok.pad_token_id),
    )  # fmt: skip


def test_the_trainer_distils_from_a_teacher_with_another_tokenizer(tmp_out):
    from hf_distill.teachers import CrossTokenizerTeacher

    trainer = xtok_trainer(tmp_out, cross_tokenizer_uld=0.5, cross_tokenizer_chain=0.5)
    assert isinstance(trainer.teachers[0], CrossTokenizerTeacher)  # the two tokenizers differ: wrapped, not refused
    assert "the vocabularies share" in trainer.teachers[0].describe()
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss/logits" in h]
    assert len(logs) == 3
    for h in logs:
        assert all(h[f"loss/logits/{p}"] > 0 for p in ("exact", "uld", "chain"))
        parts = h["loss/logits/exact"] + 0.5 * h["loss/logits/uld"] + 0.5 * h["loss/logits/chain"]
        assert abs(h["loss/logits"] - parts) < 1e-3 * h["loss/logits"] + 1e-4


def test_cross_tokenizer_kd_is_exact_under_gradient_accumulation(tmp_out):
    from conftest import GradCatcher

    grads = []
    for batch, accum in ((8, 1), (2, 4)):
        catcher = GradCatcher()
        xtok_trainer(f"{tmp_out}-{batch}", batch=batch, accum=accum, max_steps=1, callbacks=[catcher],
                     cross_tokenizer_uld=0.5, cross_tokenizer_chain=0.5).train()  # fmt: skip
        grads.append(catcher.grads)
    big, small = grads
    assert big.keys() == small.keys() and big
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6, msg=name)


def test_positions_without_a_target_are_not_distilled(tmp_out):
    """A row's positions whose next token has no label (-100: a prompt before on-policy completions, padding) are
    context only, as for the same-tokenizer logit term: a row without any target adds nothing to the KD term."""
    trainer = xtok_trainer(tmp_out, cross_tokenizer_uld=0.5, cross_tokenizer_chain=0.5)
    trainer.model.eval()
    batch = {k: torch.tensor(v) for k, v in lm_rows(byte_level())[:2].items()}
    labels = batch["labels"].clone()
    labels[1] = -100  # the second row: context only
    with torch.no_grad():
        masked = trainer.compute_loss(trainer.model, {**batch, "labels": labels})
        alone = trainer.compute_loss(trainer.model, {k: v[:1] for k, v in batch.items()})
    torch.testing.assert_close(masked, alone, rtol=1e-5, atol=1e-6)


def test_the_teacher_re_encodes_the_rows_the_student_reads_through_its_column_map(tmp_out):
    """student_columns: the student's rows are in other columns; the teacher re-encodes those rows (its positions
    are aligned with the student's), so renaming the columns changes nothing."""
    data = lm_rows(byte_level())
    renamed = data.rename_columns({"input_ids": "student_input_ids", "attention_mask": "student_attention_mask"})
    student_map = {"input_ids": "student_input_ids", "attention_mask": "student_attention_mask"}
    losses = []
    for columns, rows in ((None, data), (student_map, renamed)):
        inputs = {k: torch.tensor(v) for k, v in rows[:4].items()}
        trainer = xtok_trainer(f"{tmp_out}-{len(losses)}", data=rows, student_columns=columns, cross_tokenizer_uld=0.5)
        trainer.model.eval()
        with torch.no_grad():
            losses.append(trainer.compute_loss(trainer.model, inputs))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-7)


def test_on_policy_completions_are_re_encoded_for_the_teacher(tmp_out, monkeypatch):
    """lmbda 1: the student writes every batch's completions (its own tokens); the teacher reads them re-encoded."""
    from hf_distill.teachers import CrossTokenizerTeacher

    seen, outputs = [], CrossTokenizerTeacher.outputs

    def recording(self, batch, request):
        seen.append(batch["input_ids"].clone())
        return outputs(self, batch, request)

    monkeypatch.setattr(CrossTokenizerTeacher, "outputs", recording)
    student_tok = byte_level()
    data = lm_rows(student_tok).add_column("prompt_length", [3] * 8)
    trainer = xtok_trainer(tmp_out, data=data, lmbda=1.0, max_new_tokens=4, max_steps=1)
    trainer.train()
    assert seen and all(row.shape[1] == 3 + 4 for row in seen)  # the prompts and 4 sampled tokens
    assert [h for h in trainer.state.log_history if h.get("loss/logits", 0) > 0]


def test_what_a_teacher_with_another_tokenizer_cannot_do_is_refused(tmp_out):
    with pytest.raises(ValueError, match="another tokenizer than the student: its positions are not the student's"):
        xtok_trainer(tmp_out, alpha_hidden=1.0)
    # it writes its own tokens: sequence-level KD would hand them to the student as the student's
    with pytest.raises(ValueError, match="seq_kd: .* has another tokenizer than the student.*drop seq_kd"):
        xtok_trainer(tmp_out, data=lm_rows(byte_level()).add_column("prompt_length", [3] * 8), seq_kd=True)
    # it reads the student's own rows, re-encoded: a column map of its own would be ignored, not honoured
    data = lm_rows(byte_level())
    data = data.add_column("teacher_input_ids", data["input_ids"])
    with pytest.raises(
        ValueError, match=r"teacher_columns \{'input_ids': 'teacher_input_ids'\}.*drop teacher_columns"
    ):
        xtok_trainer(tmp_out, data=data, teacher_columns={"input_ids": "teacher_input_ids"})


def test_a_teacher_whose_logits_are_a_scaled_head_is_refused():
    """The term computes the teacher's logits from its last hidden state and head: a model that scales them after
    the head (Granite's logits_scaling, Cohere's logit_scale) would give targets of the wrong temperature."""
    from transformers import GraniteConfig, GraniteForCausalLM

    config = GraniteConfig(
        vocab_size=len(gemma()), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=37, max_position_embeddings=64, logits_scaling=8.0,
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"logits_scaling=8.0.*computes the teacher's logits from its head"):
        CrossTokenizerTeacher(GraniteForCausalLM(config), gemma(), byte_level())
    config.logits_scaling = 1.0  # a plain head: taken
    CrossTokenizerTeacher(GraniteForCausalLM(config), gemma(), byte_level())


# --- hf-distill causal-lm with a student of another tokenizer ---------------------------------------------------


def save_lm(folder, tokenizer, seed, layers=2):
    model = tiny_lm(len(tokenizer), seed=seed, layers=layers)
    model.config.bos_token_id, model.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def xtok_argv(tmp_path, *flags):
    rng = random.Random(0)
    text = tmp_path / "text.txt"
    text.write_text("\n".join("".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60)) + "\n")
    student_tok = byte_level()
    student_tok.pad_token = student_tok.eos_token
    teacher = save_lm(tmp_path / "teacher", gemma(), seed=1)
    student = save_lm(tmp_path / "student", student_tok, seed=2, layers=3)
    return [
        "causal-lm", "--teacher_model_name_or_path", teacher, "--student_model_name_or_path", student,
        "--student_layers", "0,2", "--train_file", str(text), "--validation_files", str(text), "--block_size", "16",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--use_cpu", "true",
        "--output_dir", str(tmp_path / "out"), "--disable_tqdm", "true", "--save_strategy", "no", *flags,
    ]  # fmt: skip


def test_the_causal_lm_job_distils_a_student_with_another_tokenizer(tmp_path, capsys):
    import json
    import os

    from transformers import AutoModelForCausalLM

    from hf_distill.cli import main

    argv = xtok_argv(tmp_path, "--cross_tokenizer_uld", "0.5")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "cross-tokenizer teacher" in out and "the vocabularies share" in out
    assert "1.0 x cross-tokenizer (1 exact + 0.5 uld; kl at T=1.0) + 0.0 x next-token" in out
    results = json.load(open(os.path.join(argv[argv.index("--output_dir") + 1], "results.json")))
    assert results["teacher"]["tokenizer"].startswith("the teacher's own")
    assert all(ppl > 0 for ppl in results["student"]["perplexity"].values()) and results["student"]["perplexity"]
    saved = AutoModelForCausalLM.from_pretrained(argv[argv.index("--output_dir") + 1])
    assert saved.config.num_hidden_layers == 2  # the student cut to its own layers 0 and 2


def test_the_causal_lm_job_trains_a_student_with_another_tokenizer_without_kd(tmp_path, capsys):
    """--alpha_logits 0 (the CE-only reference of a cross-tokenizer pair): nothing is distilled, the job still runs."""
    from hf_distill.cli import main

    assert main(xtok_argv(tmp_path, "--alpha_logits", "0", "--alpha_task", "1")) == 0
    assert "distilling on" in capsys.readouterr().out


def test_the_causal_lm_job_refuses_what_cross_tokenizer_kd_cannot_do_yet(tmp_path, capsys):
    from hf_distill.cli import main

    for flags, needle in (
        (["--distill_mode", "cotrain"], "does not support --distill_mode cotrain yet; use --distill_mode frozen."),
        (["--alpha_hidden", "1"], "does not support --alpha_hidden 1.0 yet; the positions differ"),
    ):
        argv = xtok_argv(tmp_path, *flags, "--overwrite_output_dir", "true")
        capsys.readouterr()  # what saving the models printed
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "has another tokenizer than the teacher" in err[0] and needle in err[0], err


def test_tokenizers_that_normalise_text_differently_are_refused():
    from conftest import word_tokenizer

    from hf_distill.cross_tokenizer.spans import check_normalisation, text_normalisation

    uncased = word_tokenizer(["the", "cat"])  # BertTokenizerFast: lowercases and strips accents
    assert text_normalisation(uncased) == ("Lowercase", "StripAccents")
    assert text_normalisation(gemma()) == () == text_normalisation(byte_level())  # "▁" is a space marker, no change
    check_normalisation(gemma(), byte_level())
    with pytest.raises(
        ValueError, match=r"normalises text as nothing and the student's .* as Lowercase, StripAccents"
    ):
        check_normalisation(gemma(), uncased)
    with pytest.raises(ValueError, match="the two models read different texts"):
        CrossTokenizerTeacher(tiny_lm(len(gemma()), seed=1), gemma(), uncased)


def test_documents_of_a_row_are_encoded_apart_with_the_teachers_special_tokens():
    """A block holds several documents, an EOS after each: the teacher reads each with its own <bos>, and the first
    stretch of the second document is predicted from the teacher's <bos> and the student's EOS."""
    teacher, student = gemma(bos=True), byte_level()
    first, second = encode_with_spans(student, "the cat").ids, encode_with_spans(student, "the sat").ids
    ids = torch.tensor([first + [student.eos_token_id] + second])
    got = retokenize(ids, torch.ones_like(ids), byte_table(student), teacher)
    assert (
        got.input_ids[0].tolist()
        == encode_with_spans(teacher, "the cat").ids + encode_with_spans(teacher, "the sat").ids
    )
    eos, bos = len(first), len(encode_with_spans(teacher, "the cat").ids)
    pairs = list(zip(got.aligned.teacher.tolist(), got.aligned.student.tolist()))
    assert (bos, eos) in pairs  # "the" of the second document: after the boundary on both sides
    assert all(t < bos for t, s in pairs if s < eos)  # nothing of the first document reads the second


def test_a_teacher_with_another_tokenizer_beside_another_teacher_is_refused_before_training(tmp_out):
    from conftest import trainer_config

    from hf_distill import DistillationTrainer

    student_tok, teacher_tok = byte_level(), gemma()
    crossed = CrossTokenizerTeacher(tiny_lm(len(teacher_tok), seed=1), teacher_tok, student_tok)
    with pytest.raises(ValueError, match="2 teachers, one with another tokenizer than the student"):
        DistillationTrainer(
            model=tiny_lm(len(student_tok), seed=2), teacher_model=[crossed, tiny_lm(len(student_tok), seed=3)],
            args=trainer_config(tmp_out, alpha_task=1.0, alpha_logits=1.0), train_dataset=lm_rows(student_tok),
        )  # fmt: skip


def test_bad_cross_tokenizer_weights_are_refused_by_the_config_and_the_cli(tmp_path, capsys):
    from hf_distill import DistillationConfig
    from hf_distill.cli import main

    with pytest.raises(ValueError, match=r"cross-tokenizer weight uld=-1.0: give a finite weight >= 0"):
        DistillationConfig(output_dir=str(tmp_path), cross_tokenizer_uld=-1.0)
    args = DistillationConfig(output_dir=str(tmp_path), cross_tokenizer_uld=0.5)
    assert (args.cross_tokenizer_mix.exact, args.cross_tokenizer_mix.uld, args.cross_tokenizer_mix.chain) == (
        1,
        0.5,
        0,
    )
    for flags, needle in (
        (["--cross_tokenizer_exact", "0"], "cross-tokenizer weights exact, uld and chain are all 0"),
        (["--uld_top_k", "0"], "uld_top_k must be >= 1"),
    ):
        assert main(["causal-lm", "--output_dir", str(tmp_path / "out"), *flags]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0] and not (tmp_path / "out").exists(), err
