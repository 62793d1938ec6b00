"""The top-k teacher cache across tokenizers (issue 19): built with a CrossTokenizerTeacher, stored in the teacher's
token space at the student's compared positions, read by a CrossTokenizerCacheTeacher. With k = the teacher's whole
vocabulary, training from it is training from the live teacher; a cache built for another tokenizer pair is refused."""

from __future__ import annotations

import math

import pytest
import torch
from test_cross_tokenizer_align import byte_level, gemma, llama
from test_cross_tokenizer_teacher import lm_rows, random_term_inputs, tiny_lm

from hf_distill.constants import CROSS_TOKENIZER_CACHE_COLUMNS
from hf_distill.cross_tokenizer.align import chain_rule_rows
from hf_distill.cross_tokenizer.retokenize import byte_table, retokenize
from hf_distill.data.teacher_cache import CACHE_META_FILE, build_teacher_cache, load_teacher_cache
from hf_distill.losses.cross_tokenizer import (
    CrossTokenizerMix,
    TopKRows,
    shared_vocab_divergence,
    span_logprobs,
    uld_loss,
)
from hf_distill.losses.cross_tokenizer_chunked import (
    CachedCrossTokenizerTargets,
    CrossTokenizerTargets,
    cross_tokenizer_term,
)
from hf_distill.losses.topk import teacher_topk
from hf_distill.teachers import CrossTokenizerCacheTeacher, CrossTokenizerTeacher

DIVERGENCES = ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]
T = 2.0  # the temperature of every cache and run here

# --- the parts from top-k rows, against the parts on logits and against references from the definitions ---------


def rows(seed=0, G=5, V_s=9, V_t=12):
    g = torch.Generator().manual_seed(seed)
    s_logits = (2 * torch.randn(G, V_s, generator=g)).requires_grad_()
    t_logits = 3 * torch.randn(G, V_t, generator=g)
    shared = (torch.tensor([3, 0, 7, 8, 5]), torch.tensor([5, 11, 2, 9, 0]))  # (student_ids, teacher_ids)
    return s_logits, t_logits, shared


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_the_parts_from_the_whole_top_k_are_the_parts_on_logits(loss):
    s_logits, t_logits, (student_ids, teacher_ids) = rows()
    full = TopKRows(*teacher_topk(t_logits, t_logits.shape[-1], T))
    kw = {"loss": loss, "temperature": T, "beta": 0.3}
    want = shared_vocab_divergence(s_logits, t_logits, student_ids, teacher_ids, **kw)
    (want_grad,) = torch.autograd.grad(want, s_logits)
    got = shared_vocab_divergence(s_logits, full, student_ids, teacher_ids, **kw)
    (got_grad,) = torch.autograd.grad(got, s_logits)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    for top_k in (None, 4):
        torch.testing.assert_close(
            uld_loss(s_logits, full, temperature=T, top_k=top_k),
            uld_loss(s_logits, t_logits, temperature=T, top_k=top_k),
        )


def naive_kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_the_exact_part_from_a_small_top_k_keeps_the_shared_tokens_found_there_and_buckets_the_rest():
    """From the definition: the outcomes are the teacher's top-k tokens that are shared, and one bucket of everything
    else on each side (the teacher's tail beyond its top-k included)."""
    s_logits, t_logits, (student_ids, teacher_ids) = rows(seed=1)
    k = 4
    top = TopKRows(*teacher_topk(t_logits, k, T))
    got = shared_vocab_divergence(s_logits, top, student_ids, teacher_ids, loss="kl", temperature=T, normalizer=1.0)
    pair = dict(zip(teacher_ids.tolist(), student_ids.tolist()))
    want = 0.0
    for g in range(len(s_logits)):
        p_s = torch.softmax(s_logits[g].detach().double() / T, -1).tolist()
        p_t = torch.softmax(t_logits[g].double() / T, -1).tolist()
        kept = [i for i in top.ids[g].tolist() if i in pair]
        P_t = [p_t[i] for i in kept]
        P_s = [p_s[pair[i]] for i in kept]
        want += naive_kl(P_t + [1 - sum(P_t)], P_s + [1 - sum(P_s)]) * T**2
    assert any(i in pair for i in top.ids.flatten().tolist()) and not all(
        i in pair for i in top.ids.flatten().tolist()
    )
    assert math.isclose(float(got.detach()), want, rel_tol=1e-4)
    # uld: the student's sorted probabilities against the teacher's top-k ones, zeros after them
    p_s = torch.softmax(s_logits.detach().double() / T, -1).sort(-1, descending=True).values
    p_t = torch.nn.functional.pad(top.logprobs.double().exp(), (0, s_logits.shape[-1] - k))
    want_uld = (p_s - p_t).abs().sum()
    assert math.isclose(
        float(uld_loss(s_logits, top, temperature=T, top_k=None, normalizer=1.0).detach()), want_uld, rel_tol=1e-5
    )


def test_reverse_divergences_from_a_small_top_k_stay_finite():
    s_logits, t_logits, (student_ids, teacher_ids) = rows(seed=2)
    top = TopKRows(*teacher_topk(t_logits, 2, T))
    for loss in DIVERGENCES:
        value = shared_vocab_divergence(s_logits, top, student_ids, teacher_ids, loss=loss, temperature=T)
        (grad,) = torch.autograd.grad(value, s_logits)
        assert torch.isfinite(value) and torch.isfinite(grad).all(), loss


def test_the_chunked_term_from_cached_targets_is_the_live_term():
    """The teacher's hidden states laid out as a cache (k = V_t): the same total, parts and gradients, chunked and from
    full student logits."""
    aligned, chain, shared, s_hidden, s_head, t_hidden, t_head = random_term_inputs()
    (B, T_s), V_t = s_hidden.shape[:2], t_head.out_features
    live = CrossTokenizerTargets(aligned, chain, shared)
    # the cache's layout: the teacher's top-k at each group's student position, the chain's targets beside
    b, s, t = aligned.batch, aligned.student, aligned.teacher
    ids, logprobs = teacher_topk(t_head(t_hidden).detach(), V_t, T)  # (B, T_t, V_t)
    groups = torch.zeros(B, T_s, dtype=torch.bool)
    groups[b, s] = True
    top_ids, top_logprobs = torch.zeros(B, T_s, V_t, dtype=torch.long), torch.zeros(B, T_s, V_t)
    top_ids[b, s], top_logprobs[b, s] = ids[b, t], logprobs[b, t]
    full = t_head(t_hidden).detach()
    chain_lp = span_logprobs(full[chain.batch, chain.positions], chain.tokens, chain.counts, temperature=T)
    chain_tokens, chain_logprobs = torch.full((B, T_s), -1), torch.full((B, T_s), float("nan"))
    chain_tokens[b[chain.groups], s[chain.groups]] = chain.student_tokens
    chain_logprobs[b[chain.groups], s[chain.groups]] = chain_lp
    cached = CachedCrossTokenizerTargets(groups, top_ids, top_logprobs, chain_tokens, chain_logprobs, shared)
    kw = {"mix": CrossTokenizerMix(1.0, 0.5, 0.7), "loss": "jsd", "temperature": T, "beta": 0.3, "normalizer": 10.0}
    results = []
    for targets, hidden, head in ((live, t_hidden, t_head), (cached, None, None)):
        total, parts = cross_tokenizer_term(s_hidden, s_head, hidden, head, targets, chunk_size=3, **kw)
        (grad,) = torch.autograd.grad(total, s_hidden)
        logits_total, _ = cross_tokenizer_term(s_head(s_hidden), None, hidden, head, targets, chunk_size=3, **kw)
        results.append((total, parts, grad, logits_total))
    (want, want_parts, want_grad, want_full), (got, got_parts, got_grad, got_full) = results
    assert got_parts.keys() == want_parts.keys() == {"exact", "uld", "chain"}
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for name in want_parts:
        torch.testing.assert_close(got_parts[name], want_parts[name], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_full, want_full, rtol=1e-5, atol=1e-6)


# --- the cache on disk -------------------------------------------------------------------------------------------


def student_tokenizer():
    tokenizer = byte_level()
    tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def live_teacher(teacher_tokenizer=None, student=None):
    teacher_tokenizer = teacher_tokenizer or gemma()
    return CrossTokenizerTeacher(
        tiny_lm(len(teacher_tokenizer), seed=1), teacher_tokenizer, student or student_tokenizer()
    )


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory):
    """The cache of 8 rows with k = the teacher's whole vocabulary, float32, on disk: ``(folder, teacher)``."""
    folder = str(tmp_path_factory.mktemp("xtok") / "cache")
    teacher = live_teacher()
    k = teacher.model.get_output_embeddings().weight.shape[0]
    build_teacher_cache(teacher, lm_rows(teacher.student_tokenizer), k=k, temperature=T, batch_size=3,
                        output_dir=folder, dtype="float32")  # fmt: skip
    return folder, teacher


def test_the_cache_holds_the_teachers_top_k_at_each_groups_student_position(full_cache):
    folder, teacher = full_cache
    cached, meta = load_teacher_cache(folder, tokenizers=(gemma(), student_tokenizer()), temperature=T)
    assert meta["tokenizers"]["teacher"]["name"] == "GemmaTokenizer" and meta["vocab_size"] == len(gemma())
    assert meta["columns"] == list(CROSS_TOKENIZER_CACHE_COLUMNS)
    data = lm_rows(teacher.student_tokenizer)
    ids, mask = torch.tensor(data["input_ids"]), torch.tensor(data["attention_mask"])
    retok = retokenize(ids, mask, byte_table(teacher.student_tokenizer), teacher.tokenizer)
    logits = teacher.model(input_ids=retok.input_ids, attention_mask=retok.attention_mask).logits.detach()
    want_ids, want_logprobs = teacher_topk(logits, logits.shape[-1], T)
    a = retok.aligned
    positions = torch.tensor(cached[CROSS_TOKENIZER_CACHE_COLUMNS[0]])  # (8, T_s): the rows are padded alike
    want_positions = torch.full_like(positions, -1)
    want_positions[a.batch, a.student] = a.teacher
    assert torch.equal(positions, want_positions) and len(a.batch) > 20
    got_ids = torch.tensor(cached[CROSS_TOKENIZER_CACHE_COLUMNS[1]])[a.batch, a.student]
    got_logprobs = torch.tensor(cached[CROSS_TOKENIZER_CACHE_COLUMNS[2]])[a.batch, a.student]
    torch.testing.assert_close(got_logprobs, want_logprobs[a.batch, a.teacher], rtol=1e-5, atol=1e-5)
    top = got_logprobs[:, 0] > got_logprobs[:, 1] + 1e-4  # ids compared where the order is no tie
    assert torch.equal(got_ids[top, 0], want_ids[a.batch, a.teacher][top, 0].int())
    chain = chain_rule_rows(a, retok.input_ids, ids)
    want_chain = span_logprobs(logits[chain.batch, chain.positions], chain.tokens, chain.counts, temperature=T)
    stored = torch.tensor(cached[CROSS_TOKENIZER_CACHE_COLUMNS[3]])
    torch.testing.assert_close(
        stored[a.batch[chain.groups], a.student[chain.groups]], want_chain, rtol=1e-5, atol=1e-5
    )
    many = (a.student_tokens > 1).nonzero().squeeze(1)
    assert len(many) and torch.isnan(stored[a.batch[many], a.student[many]]).all()  # no chain target there
    assert torch.isnan(stored[positions < 0]).all()


def xtok_trainer(out, teacher, data, *, batch=8, accum=1, callbacks=(), **kw):
    from conftest import trainer_config

    from hf_distill import DistillationTrainer
    from hf_distill.data import DistillationDataCollator

    tokenizer = student_tokenizer()
    args = trainer_config(
        out, per_device_train_batch_size=batch, gradient_accumulation_steps=accum, max_grad_norm=0, alpha_task=1.0,
        alpha_logits=1.0, temperature=T, kd_chunk_size=5, cross_tokenizer_uld=0.5, cross_tokenizer_chain=0.5, **kw,
    )  # fmt: skip
    return DistillationTrainer(
        model=tiny_lm(len(tokenizer), seed=2), teacher_model=teacher, args=args, train_dataset=data,
        processing_class=tokenizer, teacher_processing_class=gemma(), callbacks=list(callbacks),
        data_collator=DistillationDataCollator(pad_token_id=tokenizer.pad_token_id),
    )  # fmt: skip


def first_step(out, teacher, data, **kw):
    from conftest import GradCatcher

    catcher = GradCatcher()
    trainer = xtok_trainer(out, teacher, data, max_steps=1, callbacks=[catcher], **kw)
    trainer.train()
    (logged,) = [h for h in trainer.state.log_history if "loss/logits" in h]
    return logged, catcher.grads


def test_training_from_the_whole_top_k_is_training_from_the_live_teacher(full_cache, tmp_out):
    folder, _ = full_cache
    cached, meta = load_teacher_cache(folder, tokenizers=(gemma(), student_tokenizer()), temperature=T)
    teacher = CrossTokenizerCacheTeacher(gemma(), student_tokenizer(), meta=meta)
    want, want_grads = first_step(f"{tmp_out}-live", live_teacher().model, lm_rows(student_tokenizer()))
    got, got_grads = first_step(f"{tmp_out}-cache", teacher, cached)
    for key in ("loss", "loss/logits", "loss/logits/exact", "loss/logits/uld", "loss/logits/chain"):
        assert want[key] > 0 and math.isclose(got[key], want[key], rel_tol=1e-4), key
    assert got_grads.keys() == want_grads.keys() and got_grads
    for name in want_grads:
        torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_from_the_cache_is_exact_under_gradient_accumulation(full_cache, tmp_out):
    folder, _ = full_cache
    cached, meta = load_teacher_cache(folder, tokenizers=(gemma(), student_tokenizer()), temperature=T)
    teacher = CrossTokenizerCacheTeacher(gemma(), student_tokenizer(), meta=meta)
    _, big = first_step(f"{tmp_out}-8", teacher, cached)
    _, small = first_step(f"{tmp_out}-2", teacher, cached, batch=2, accum=4)
    assert big.keys() == small.keys() and big
    for name in big:
        torch.testing.assert_close(small[name], big[name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_small_top_k_trains_with_finite_logged_parts(tmp_path):
    teacher = live_teacher()
    folder = str(tmp_path / "cache")
    build_teacher_cache(teacher, lm_rows(teacher.student_tokenizer), k=4, temperature=T, output_dir=folder)
    cached, meta = load_teacher_cache(folder, tokenizers=(gemma(), student_tokenizer()), temperature=T)
    assert meta["k"] == 4 and meta["dtype"] == "float16"
    trainer = xtok_trainer(str(tmp_path / "out"), CrossTokenizerCacheTeacher(gemma(), student_tokenizer(), meta=meta),
                           cached, max_steps=2)  # fmt: skip
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss/logits" in h]
    assert len(logs) == 2
    for h in logs:
        assert all(
            math.isfinite(h[f"loss/logits/{p}"]) and h[f"loss/logits/{p}"] > 0 for p in ("exact", "uld", "chain")
        )
        parts = h["loss/logits/exact"] + 0.5 * h["loss/logits/uld"] + 0.5 * h["loss/logits/chain"]
        assert abs(h["loss/logits"] - parts) < 1e-3 * h["loss/logits"] + 1e-4


# --- refusals ----------------------------------------------------------------------------------------------------


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_cache_built_for_another_tokenizer_pair_is_refused_naming_both(full_cache):
    folder, _ = full_cache
    with pytest.raises(ValueError) as err:
        load_teacher_cache(folder, tokenizers=(gemma(), llama()))  # another student
    message = one_line(err)
    assert message.startswith(f"The teacher cache at {folder!r} was built for the teacher tokenizer 'GemmaTokenizer'")
    assert "and the student tokenizer 'TokenizersBackend'" in message and "'LlamaTokenizer'" in message
    assert "(the student vocabulary differs)" in message and "--teacher_cache_dir" in message
    with pytest.raises(ValueError, match=r"\(the teacher vocabulary differs\)"):  # a teacher without its <bos>
        load_teacher_cache(folder, tokenizers=(gemma(bos=False), student_tokenizer()))
    _, meta = load_teacher_cache(folder, tokenizers=(gemma(), student_tokenizer()))
    with pytest.raises(ValueError, match=r"was built for the teacher tokenizer .* not for .*'LlamaTokenizer'"):
        CrossTokenizerCacheTeacher(llama(), student_tokenizer(), meta=meta)
    with pytest.raises(ValueError, match="built across tokenizers .* load it with tokenizers="):
        load_teacher_cache(folder)


def test_a_same_vocabulary_cache_is_not_read_across_tokenizers(tmp_path):
    folder = str(tmp_path / "same")
    tokenizer = student_tokenizer()
    build_teacher_cache(tiny_lm(len(tokenizer), seed=1), lm_rows(tokenizer), k=3, output_dir=folder)
    with pytest.raises(ValueError, match="holds the top-k of .* not across tokenizers") as err:
        load_teacher_cache(folder, tokenizers=(gemma(), tokenizer))
    one_line(err)
    with open(f"{folder}/{CACHE_META_FILE}") as f:
        import json

        meta = json.load(f)
    with pytest.raises(ValueError, match="not a cross-tokenizer cache"):
        CrossTokenizerCacheTeacher(gemma(), tokenizer, meta=meta)


def test_cross_tokenizer_cache_columns_without_their_teacher_are_refused(full_cache, tmp_out):
    folder, _ = full_cache
    cached, _ = load_teacher_cache(folder, tokenizers=(gemma(), student_tokenizer()))
    with pytest.raises(ValueError, match="only a CrossTokenizerCacheTeacher reads"):
        xtok_trainer(tmp_out, live_teacher().model, cached)


# --- hf-distill causal-lm --teacher_cache_dir with a student of another tokenizer --------------------------------


def test_the_causal_lm_job_builds_and_trains_from_a_cache_across_tokenizers(tmp_path, capsys):
    from test_cross_tokenizer_teacher import save_lm, xtok_argv

    from hf_distill.cli import main

    cache = str(tmp_path / "cache")
    argv = xtok_argv(tmp_path, "--teacher_cache_dir", cache, "--teacher_cache_k", "8", "--cross_tokenizer_chain", "1")
    assert main(argv) == 0  # builds the cache, then trains from it
    out = capsys.readouterr().out
    assert (
        "caching the teacher's top-8 log-probs across tokenizers" in out and "cross-tokenizer teacher cache of" in out
    )
    _, meta = load_teacher_cache(cache, tokenizers=(gemma(), student_tokenizer()))
    assert meta["k"] == 8 and meta["tokenizers"]["student"]["name"] == str(tmp_path / "student")
    assert main([*argv, "--overwrite_output_dir", "true", "--eval_teacher", "false"]) == 0  # from the finished cache
    out = capsys.readouterr().out
    assert f"training from the teacher cache in {cache}" in out and "1 chain" in out
    # another student tokenizer (one that writes <s> first): refused in one line before any model loads
    other = byte_level(bos=True)
    other.pad_token = other.eos_token
    argv[argv.index("--student_model_name_or_path") + 1] = save_lm(tmp_path / "student2", other, seed=2, layers=3)
    capsys.readouterr()
    assert main([*argv, "--overwrite_output_dir", "true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was built for the teacher tokenizer" in err[0], err
    teacher, student2 = str(tmp_path / "teacher"), str(tmp_path / "student2")
    assert f"and the student tokenizer '{tmp_path / 'student'}'" in err[0] and f"not for '{teacher}'" in err[0]
    assert f"and '{student2}'" in err[0] and "(the student vocabulary differs)" in err[0]
