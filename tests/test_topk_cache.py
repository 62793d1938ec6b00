"""Top-k logit KD pinned against the full loss and a naive reference; the teacher cache round-trips a live teacher."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from conftest import VOCAB, lm_dataset, tiny_llama
from datasets import Dataset
from numerics import assert_fp32_close, divergence_scale, forward_chain
from transformers import AutoModelForCausalLM

from hf_distill.data.teacher_cache import (
    CACHE_META_FILE,
    TEACHER_CACHE_COLUMNS,
    build_teacher_cache,
    cache_bytes_per_token,
    is_teacher_cache_batch,
    load_teacher_cache,
    teacher_fingerprint,
)
from hf_distill.losses import get_loss, teacher_topk, topk_token_kd

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

DIVERGENCES = ["kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl"]
B, T, V = 3, 5, 11


def make_logits(seed=0):
    g = torch.Generator().manual_seed(seed)
    student = 2 * torch.randn(B, T, V, generator=g)
    teacher = 3 * torch.randn(B, T, V, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0], [0, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    return student, teacher, mask


N_LOSS = V + 1 + B * T  # the vocabulary (and a tail bucket), then the tokens: the loss's chains (tests/numerics.py)


# --- naive reference, from the definitions, in Python floats --------------------------------------------------------


def softmax(z, t):
    e = [math.exp(v / t) for v in z]
    return [v / sum(e) for v in e]


def kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def divergence(name, pt, ps, beta):
    if name == "kl":
        return kl(pt, ps)
    if name == "reverse_kl":
        return kl(ps, pt)
    if name == "jsd":
        m = [beta * a + (1 - beta) * b for a, b in zip(pt, ps)]
        return beta * kl(pt, m) + (1 - beta) * kl(ps, m)
    if name == "skew_kl":
        return kl(pt, [beta * a + (1 - beta) * b for a, b in zip(pt, ps)])
    return kl(ps, [beta * b + (1 - beta) * a for a, b in zip(pt, ps)])  # skew_reverse_kl


def reference(name, s_rows, t_rows, k, temperature, tail, beta=0.3):
    """Mean over rows of the divergence between the coarsened (or renormalised) distributions, times T^2."""
    out = []
    for s, t in zip(s_rows, t_rows):
        ps, pt = softmax(s, temperature), softmax(t, temperature)
        top = sorted(range(len(t)), key=lambda i: -pt[i])[:k]
        p, q = [pt[i] for i in top], [ps[i] for i in top]
        if tail == "bucket":
            p, q = p + [1 - sum(p)], q + [1 - sum(q)]
        else:
            p, q = [v / sum(p) for v in p], [v / sum(q) for v in q]
        out.append(divergence(name, p, q, beta) * temperature**2)
    return sum(out) / len(out)


# --- the loss -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_full_vocabulary_topk_equals_full_loss(name, temperature):
    student, teacher, mask = make_logits()
    ids, logprobs = teacher_topk(teacher, V, temperature)
    kw = {"mask": mask, "temperature": temperature, "beta": 0.3}
    scale = divergence_scale(student, teacher, temperature=temperature, mask=mask)
    for normalizer in (None, 1):
        want = get_loss("logits", name)(student, teacher, normalizer=normalizer, **kw)
        for tail in ("bucket", "renormalize"):
            got = topk_token_kd(student, ids, logprobs, loss=name, tail=tail, normalizer=normalizer, **kw)
            assert got.dtype == torch.float32 and got.dim() == 0
            total = scale * (int(mask.sum()) if normalizer == 1 else 1)
            assert_fp32_close(got, want, scale=total, n=N_LOSS, msg=f"{tail}, normalizer {normalizer}")
    # The tail bucket is empty here on both sides: its floor keeps the gradient finite (no 0 * log 0).
    student.requires_grad_(True)
    (grad,) = torch.autograd.grad(topk_token_kd(student, ids, logprobs, loss=name, **kw), student)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_matches_naive_reference(name, tail):
    g = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(4, 6, generator=g), 2 * torch.randn(4, 6, generator=g)
    ids, logprobs = teacher_topk(teacher, 2, temperature=2.0)
    got = topk_token_kd(student, ids, logprobs, loss=name, temperature=2.0, beta=0.3, tail=tail)
    want = reference(name, student.tolist(), teacher.tolist(), 2, 2.0, tail)
    assert want > 1e-3
    assert_fp32_close(got, want, scale=divergence_scale(student, teacher, temperature=2.0), n=6 + 1 + 4)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_zero_for_identical_and_the_tail_bucket_sees_the_tail(name):
    _, teacher, mask = make_logits(seed=2)
    ids, logprobs = teacher_topk(teacher, 3)
    for tail in ("bucket", "renormalize"):
        zero = topk_token_kd(teacher.clone(), ids, logprobs, mask=mask, loss=name, tail=tail)
        assert_fp32_close(zero, 0.0, scale=divergence_scale(teacher, teacher, mask=mask), n=N_LOSS, msg=tail)
    # The same top-3 ratios but far less mass elsewhere: invisible after renormalising, not to the bucket.
    outside = torch.ones_like(teacher, dtype=torch.bool).scatter(-1, ids, False)
    student = teacher - 3.0 * outside
    renorm = topk_token_kd(student, ids, logprobs, mask=mask, loss=name, tail="renormalize")
    bucket = topk_token_kd(student, ids, logprobs, mask=mask, loss=name, tail="bucket")
    assert_fp32_close(renorm, 0.0, scale=divergence_scale(student, teacher, mask=mask), n=N_LOSS)
    assert bucket.item() > 1e-2


def test_masked_rows_are_ignored_and_never_read():
    student, teacher, mask = make_logits(seed=3)
    ids, logprobs = teacher_topk(teacher, 4, temperature=2.0)
    want = topk_token_kd(student, ids, logprobs, mask=mask, temperature=2.0)
    student2, ids2, logprobs2 = student.clone(), ids.clone(), logprobs.clone()
    student2[~mask] = 1e4 * torch.randn_like(student2[~mask])
    ids2[~mask] = -100  # a collator's padding value: out of range, but never read
    logprobs2[~mask] = 0.0
    got = topk_token_kd(student2, ids2, logprobs2, mask=mask, temperature=2.0)
    scale = divergence_scale(student, teacher, temperature=2.0, mask=mask)
    assert_fp32_close(got, want, scale=scale, n=N_LOSS)
    total = topk_token_kd(student, ids, logprobs, mask=mask.long(), temperature=2.0, normalizer=1)
    assert_fp32_close(total, want * mask.sum(), scale=scale * int(mask.sum()), n=N_LOSS)


def test_gradient_reaches_student_only_and_cache_dtypes_work():
    student, teacher, mask = make_logits(seed=4)
    student.requires_grad_(True)
    ids, logprobs = teacher_topk(teacher, 4)
    logprobs = logprobs.half().requires_grad_(True)  # as read from a float16 cache, int32 ids
    loss = topk_token_kd(student, ids.int(), logprobs, mask=mask, loss="jsd")
    loss.backward()
    assert student.grad is not None and student.grad[mask].abs().sum() > 0
    assert student.grad[~mask].abs().sum() == 0
    assert logprobs.grad is None


def test_teacher_topk_matches_torch_topk_of_log_softmax():
    _, teacher, _ = make_logits(seed=5)
    ids, logprobs = teacher_topk(teacher.bfloat16(), 4, temperature=2.0)
    assert ids.dtype == torch.int64 and logprobs.dtype == torch.float32 and ids.shape == (B, T, 4)
    want_values, want_ids = torch.log_softmax(teacher.bfloat16().float() / 2.0, dim=-1).topk(4, dim=-1)
    # z / T - logsumexp(z / T): terms of the size of the logits and of log V
    assert_fp32_close(logprobs, want_values, scale=teacher.abs().max().item() / 2.0 + math.log(V), n=V)
    assert torch.equal(ids, want_ids)
    assert (logprobs.exp().sum(-1) <= 1 + 1e-6).all()
    with pytest.raises(ValueError, match="k must lie between 1 and the vocabulary size 11"):
        teacher_topk(teacher, V + 1)


def test_errors_name_the_bad_value():
    student, teacher, mask = make_logits()
    ids, logprobs = teacher_topk(teacher, 3)
    with pytest.raises(ValueError, match="mse"):
        topk_token_kd(student, ids, logprobs, loss="mse")
    with pytest.raises(ValueError, match="Unknown tail 'drop'"):
        topk_token_kd(student, ids, logprobs, tail="drop")
    with pytest.raises(ValueError, match="Unknown logits loss"):
        topk_token_kd(student, ids, logprobs, loss="nope")
    with pytest.raises(ValueError, match="differ"):
        topk_token_kd(student, ids, logprobs[..., :2])
    with pytest.raises(ValueError, match="different tokens"):
        topk_token_kd(student[:, :-1], ids, logprobs)
    with pytest.raises(ValueError, match="mask"):
        topk_token_kd(student, ids, logprobs, mask=mask[:, :-1])
    with pytest.raises(ValueError, match=r"ids in \[0, 50\] but the student's vocabulary has V = 11"):
        topk_token_kd(student, ids.clone().fill_(50).index_fill_(-1, torch.tensor([0]), 0), logprobs)
    with pytest.raises(ValueError, match="k = 12"):
        topk_token_kd(student, torch.zeros(B, T, 12, dtype=torch.long), torch.zeros(B, T, 12))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        topk_token_kd(student, ids, logprobs, temperature=0.0)


# --- the cache ------------------------------------------------------------------------------------------------------


def ragged_dataset(n=7, seed=0):
    """Rows of different lengths, no attention_mask, an extra column that must survive."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 10, (n,), generator=g).tolist()
    rows = [torch.randint(1, VOCAB, (m,), generator=g).tolist() for m in lengths]
    return Dataset.from_dict({"input_ids": rows, "source": [f"doc{i}" for i in range(n)]})


def assert_matches_live(teacher, row_ids, row_mask, cached_ids, cached_logprobs, k, temperature, dtype):
    """Cached rows == teacher_topk of the live teacher, robust to near-ties swapping the order of ids.

    The cache's teacher ran on padded batches, the live one on one row: float32 forwards that differ by rounding
    along the model's chains; a float16 cache then rounds each value once more, at float16's precision (its
    ``2**-11`` of the value is a thousand times the float32 forward's difference, so it alone sets the tolerance).
    """
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([row_ids]), attention_mask=torch.tensor([row_mask])).logits[0]
    live_ids, live_logprobs = teacher_topk(logits, k, temperature)
    cached_ids, cached_logprobs = torch.tensor(cached_ids), torch.tensor(cached_logprobs, dtype=torch.float32)
    assert cached_ids.shape == cached_logprobs.shape == (len(row_ids), k)
    scale = logits.abs().max().item() / temperature + math.log(logits.shape[-1])  # z / T - logsumexp(z / T)
    n = 1 if dtype == torch.float16 else forward_chain(teacher.config, len(row_ids))
    assert_fp32_close(cached_logprobs, live_logprobs, scale=scale, n=n, dtype=dtype, msg="top-k")
    full = torch.log_softmax(logits.float() / temperature, dim=-1)
    assert_fp32_close(cached_logprobs, full.gather(-1, cached_ids.long()), scale=scale, n=n, dtype=dtype)
    assert (cached_ids == live_ids).float().mean() > 0.95


def test_cache_round_trip_with_a_live_teacher(tmp_path):
    teacher = tiny_llama().train()
    data = lm_dataset(n=6, seq_len=10)
    out = str(tmp_path / "cache")
    built = build_teacher_cache(teacher, data, k=8, temperature=2.0, batch_size=4, output_dir=out, teacher_name="tiny")
    assert teacher.training  # put back in its mode
    cached, meta = load_teacher_cache(out, temperature=2.0, vocab_size=VOCAB)
    assert len(built) == len(cached) == 6
    assert cached.column_names == ["input_ids", "attention_mask", "labels", *TEACHER_CACHE_COLUMNS]
    assert cached.features["teacher_topk_ids"].feature.feature.dtype == "int32"
    assert cached.features["teacher_topk_logprobs"].feature.feature.dtype == "float16"
    assert cached["labels"] == data["labels"]
    for i in range(len(cached)):
        row = cached[i]
        assert_matches_live(
            teacher, row["input_ids"], row["attention_mask"], row["teacher_topk_ids"],
            row["teacher_topk_logprobs"], k=8, temperature=2.0, dtype=torch.float16,
        )  # fmt: skip

    assert meta["teacher"] == "tiny" and meta["k"] == 8 and meta["temperature"] == 2.0 and meta["tail"] == "bucket"
    assert meta["vocab_size"] == VOCAB and meta["dtype"] == "float16" and meta["num_examples"] == 6
    assert meta["num_tokens"] == 60 and meta["hf_distill_version"]
    # 8 * (4 + 2) = 48 bytes of payload, plus 8 bytes of offsets per example; the files also hold input_ids, labels...
    assert cache_bytes_per_token(8) == 48 and cache_bytes_per_token(32, "float32") == 256
    assert 48 <= meta["topk_bytes_per_token"] <= 48 + 8 / 10 and meta["bytes_per_token"] > meta["topk_bytes_per_token"]
    assert json.load(open(os.path.join(out, CACHE_META_FILE))) == meta

    # Training without the teacher: the cached loss equals the live one, to float16 rounding.
    batch = cached[:4]
    assert is_teacher_cache_batch(batch) and not is_teacher_cache_batch(data[:4])
    student_logits = tiny_llama(num_layers=1, seed=1)(input_ids=torch.tensor(batch["input_ids"])).logits[:, :-1]
    mask = torch.tensor(batch["attention_mask"])[:, 1:].bool()
    ids, logprobs = torch.tensor(batch["teacher_topk_ids"]), torch.tensor(batch["teacher_topk_logprobs"])
    got = topk_token_kd(student_logits, ids[:, :-1], logprobs[:, :-1], mask=mask, temperature=2.0)
    with torch.no_grad():
        live = teacher(input_ids=torch.tensor(batch["input_ids"])).logits[:, :-1]
    want = topk_token_kd(student_logits, *teacher_topk(live, 8, 2.0), mask=mask, temperature=2.0)
    # the float16 log-probs, each rounded once, enter the divergence's terms
    scale = divergence_scale(student_logits, live, temperature=2.0, mask=mask)
    assert_fp32_close(got, want, scale=scale, dtype=torch.float16)


def test_ragged_rows_float32_and_k32(tmp_path):
    teacher = tiny_llama()
    data = ragged_dataset()
    out = str(tmp_path / "cache32")
    build_teacher_cache(teacher, data, k=32, batch_size=3, output_dir=out, dtype="float32")
    cached, meta = load_teacher_cache(out)
    assert cached["source"] == data["source"]
    assert cached.features["teacher_topk_logprobs"].feature.feature.dtype == "float32"
    assert meta["num_tokens"] == sum(len(r) for r in data["input_ids"])
    assert meta["teacher"] == "LlamaForCausalLM"
    for i in range(len(cached)):
        row = cached[i]
        assert len(row["teacher_topk_ids"]) == len(row["input_ids"])  # padding cut back off
        assert_matches_live(
            teacher, row["input_ids"], [1] * len(row["input_ids"]), row["teacher_topk_ids"],
            row["teacher_topk_logprobs"], k=32, temperature=1.0, dtype=torch.float32,
        )  # fmt: skip
    assert 256 <= meta["topk_bytes_per_token"] <= 256 + 8 / 3
    print(f"bytes/token k=32 float32: top-k {meta['topk_bytes_per_token']:.1f}, files {meta['bytes_per_token']:.1f}")


def test_refuses_unfinished_and_mismatched_caches(tmp_path, monkeypatch):
    plain = str(tmp_path / "plain")
    lm_dataset(n=2).save_to_disk(plain)
    with pytest.raises(ValueError, match="not a finished teacher cache"):
        load_teacher_cache(plain)

    out = str(tmp_path / "cache")
    data = lm_dataset(n=2, seq_len=6)
    build_teacher_cache(tiny_llama(num_layers=1), data, k=4, output_dir=out)
    with pytest.raises(ValueError, match=r"temperature 1\.0.*temperature 2\.0; rebuild the cache"):
        load_teacher_cache(out, temperature=2.0)
    with pytest.raises(ValueError, match="vocabulary of 99 tokens, but the student has 100"):
        load_teacher_cache(out, vocab_size=100)
    load_teacher_cache(out, dataset=data)  # the data it was built on
    for other in (lm_dataset(n=2, seq_len=6, seed=1), lm_dataset(n=2, seq_len=5), lm_dataset(n=1, seq_len=6)):
        with pytest.raises(ValueError, match="built on other training data"):
            load_teacher_cache(out, dataset=other)
    load_teacher_cache(out, teacher_name="LlamaForCausalLM")  # a model built in memory is named by its class
    with pytest.raises(ValueError, match="built with the teacher 'LlamaForCausalLM', not 'org/other'"):
        load_teacher_cache(out, teacher_name="org/other")

    # A rebuild that dies while saving leaves no meta file: the folder no longer reads as a finished cache.
    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Dataset, "save_to_disk", crash)
    with pytest.raises(OSError, match="disk full"):
        build_teacher_cache(tiny_llama(num_layers=1), data, k=4, output_dir=out)
    with pytest.raises(ValueError, match="not a finished teacher cache"):
        load_teacher_cache(out)


def test_a_cache_fits_only_the_data_as_indexed(tmp_path):
    """Same rows in another order, or fewer of them through an indices mapping, are other data."""
    out = str(tmp_path / "cache")
    data = lm_dataset(n=6, seq_len=6)
    build_teacher_cache(tiny_llama(num_layers=1), data, k=4, output_dir=out)
    load_teacher_cache(out, dataset=data)
    load_teacher_cache(out, dataset=data.select([0, 1, 2, 3, 4, 5]))  # the same rows in the same order: the same data
    for other in (
        data.shuffle(seed=0),
        data.select([1, 0, 2, 3, 4, 5]),
        data.filter(lambda row: row["input_ids"][0] > 0 and row["input_ids"][1] % 2 == 0),
    ):
        assert other.num_rows and sorted(map(tuple, other["input_ids"])) != list(map(tuple, data["input_ids"]))
        with pytest.raises(ValueError, match="built on other training data"):
            load_teacher_cache(out, dataset=other)


def test_a_cache_fits_only_its_teachers_weights(tmp_path, caplog):
    """The same teacher name with other weights is another teacher (a folder re-saved, a model changed in memory)."""
    folder = tmp_path / "teacher"
    tiny_llama(num_layers=1, seed=0).save_pretrained(folder)
    teacher = AutoModelForCausalLM.from_pretrained(folder)
    out, data = str(tmp_path / "cache"), lm_dataset(n=2, seq_len=6)
    build_teacher_cache(teacher, data, k=4, output_dir=out)
    meta = json.load(open(os.path.join(out, CACHE_META_FILE)))
    assert (meta["teacher"], meta["teacher_sha256_of"]) == (str(folder), "weight files")
    assert meta["teacher_sha256"] == teacher_fingerprint(str(folder))[0]
    load_teacher_cache(out, teacher=teacher, teacher_name=str(folder))
    load_teacher_cache(out, teacher=str(folder))
    tiny_llama(num_layers=1, seed=1).save_pretrained(folder)  # other weights, same folder and name
    for other in (str(folder), AutoModelForCausalLM.from_pretrained(folder)):
        with pytest.raises(
            ValueError, match=r"built with other teacher weights than those of .*teacher \(the SHA-256"
        ):
            load_teacher_cache(out, teacher=other, teacher_name=str(folder))
    # a teacher built in memory is fingerprinted by its tensors
    memory, memory_out = tiny_llama(num_layers=1, seed=0), str(tmp_path / "memory")
    build_teacher_cache(memory, data, k=4, output_dir=memory_out)
    load_teacher_cache(memory_out, teacher=memory)
    with torch.no_grad():
        memory.lm_head.weight[0, 0] += 1e-3
    with pytest.raises(
        ValueError, match=r"other teacher weights than those of the teacher \(the SHA-256 of its tensors"
    ):
        load_teacher_cache(memory_out, teacher=memory)


def test_fingerprint_of_scalar_tensors(tmp_path):
    """0-dim tensors (a step counter, a scale in bf16) in a teacher's state dict or weight files are fingerprinted:
    their values count, and the fingerprint does not crash on a dtype wider than a byte."""
    from safetensors.torch import save_file

    def teacher(scale: float):
        model = tiny_llama(num_layers=1, seed=0)
        model.register_buffer("scale", torch.tensor(scale, dtype=torch.bfloat16))
        model.register_buffer("step", torch.tensor(7))
        return model

    digest, of = teacher_fingerprint(teacher(1.5))
    assert of == "tensors" and digest == teacher_fingerprint(teacher(1.5))[0] != teacher_fingerprint(teacher(2.0))[0]
    folder = tmp_path / "teacher"
    folder.mkdir()
    save_file({"scale": torch.tensor(1.5), "w": torch.ones(2, 2)}, str(folder / "model.safetensors"))
    assert teacher_fingerprint(str(folder))[1] == "weight files"


@pytest.mark.parametrize("where", ["data", "meta", "state"])
def test_a_flipped_byte_is_refused_by_name(tmp_path, where):
    out, data = tmp_path / "cache", lm_dataset(n=4, seq_len=8)
    build_teacher_cache(tiny_llama(num_layers=1), data, k=4, output_dir=str(out))
    name = {"data": next(p.name for p in out.glob("*.arrow")), "meta": CACHE_META_FILE, "state": "state.json"}[where]
    raw = bytearray((out / name).read_bytes())
    if where == "meta":  # a digit of the temperature: still valid JSON, another value
        at = raw.index(b'"temperature": 1.0') + len(b'"temperature": ')
        raw[at] = ord("2")
    else:
        raw[len(raw) // 2] ^= 0x01
    (out / name).write_bytes(bytes(raw))
    match = {
        "data": rf"is damaged: {name} does not match the checksum recorded when it was built; delete the folder",
        "meta": rf"has a damaged {CACHE_META_FILE} \(its checksum differs\)",
        "state": r"is damaged: state.json does not match the checksum",
    }[where]
    with pytest.raises(ValueError, match=match):
        load_teacher_cache(str(out))
    os.remove(out / "dataset_info.json")
    if where != "meta":
        with pytest.raises(ValueError, match="damaged|lacks dataset_info.json"):
            load_teacher_cache(str(out))


def test_an_older_cache_without_checksums_is_refused(tmp_path):
    out = tmp_path / "cache"
    build_teacher_cache(tiny_llama(num_layers=1), lm_dataset(n=2, seq_len=6), k=4, output_dir=str(out))
    meta = json.loads((out / CACHE_META_FILE).read_text())
    old = {k: v for k, v in meta.items() if k not in ("files", "checksum", "teacher_sha256", "teacher_sha256_of")}
    (out / CACHE_META_FILE).write_text(json.dumps({**old, "format_version": 1}))
    with pytest.raises(ValueError, match="built by an older hf_distill, without the checksums"):
        load_teacher_cache(str(out))


def test_nan_or_positive_log_probabilities_are_refused():
    """From a teacher when the cache is built (nothing is written), and from the cache in every batch the loss reads."""

    class Broken(torch.nn.Module):
        def __init__(self, value):
            super().__init__()
            self.value, self.weight = value, torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask):
            logits = torch.zeros(*input_ids.shape, VOCAB)
            logits[0, 1, 3] = self.value
            return type("Out", (), {"logits": logits})

    data = lm_dataset(n=2, seq_len=6)
    with pytest.raises(ValueError, match="The teacher gave NaN log-probabilities, so no cache was written"):
        build_teacher_cache(Broken(float("nan")), data, k=4)
    student, teacher, mask = make_logits()
    ids, logprobs = teacher_topk(teacher, 3)
    for value, what in (
        (float("nan"), "NaN"),
        (0.5, r"a positive log-probability \(0.5\)"),
        (float("inf"), r"a positive log-probability \(inf\)"),
    ):
        bad = logprobs.clone()
        bad[0, 2, 1] = value
        with pytest.raises(ValueError, match=f"teacher_logprobs hold {what}.*the teacher cache is damaged"):
            topk_token_kd(student, ids, bad, mask=mask)
        bad[0, 2, 1], bad[0, 4] = logprobs[0, 2, 1], value  # on a padded row: never read
        topk_token_kd(student, ids, bad, mask=mask)
    masked = logprobs.clone()
    masked[..., -1] = float("-inf")  # a token the teacher masks: allowed
    assert torch.isfinite(topk_token_kd(student, ids, masked, mask=mask))


def test_build_errors():
    teacher, data = tiny_llama(num_layers=1), lm_dataset(n=2, seq_len=6)
    with pytest.raises(ValueError, match="Unknown cache dtype 'bfloat16'"):
        build_teacher_cache(teacher, data, k=4, dtype="bfloat16")
    with pytest.raises(ValueError, match="k must be a positive integer, got 0"):
        build_teacher_cache(teacher, data, k=0)
    with pytest.raises(ValueError, match="input_ids"):
        build_teacher_cache(teacher, data.rename_column("input_ids", "ids"), k=4)
    with pytest.raises(ValueError, match="already has"):
        build_teacher_cache(teacher, build_teacher_cache(teacher, data, k=4), k=4)
    with pytest.raises(ValueError, match="vocabulary size 99"):
        build_teacher_cache(teacher, data, k=VOCAB + 1)


def test_a_teacher_named_beside_its_cache_is_not_loaded(tmp_path, caplog):
    """Logit KD from a top-k cache reads the teacher's soft targets from the data: a teacher known by name
    (``teacher_model_name_or_path``, or a path as ``teacher_model``) is not loaded, so its weights need not be there;
    a term the cache does not hold loads it, and says why."""
    from conftest import tiny_tokenizer

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.data import DistillationDataCollator
    from hf_distill.models import build_student
    from hf_distill.teachers import TopKCacheTeacher

    folder = tmp_path / "teacher"
    tiny_llama(seed=1).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    teacher = AutoModelForCausalLM.from_pretrained(folder)
    cached = build_teacher_cache(teacher, lm_dataset(n=8), k=4, temperature=1.0, output_dir=str(tmp_path / "cache"))
    student = build_student(teacher, layers=[0, 3])
    before = {k: v.clone() for k, v in student.state_dict().items()}
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")  # from_pretrained would fail on it

    def config(**kw):
        return DistillationConfig(
            output_dir=str(tmp_path / "out"), report_to="none", per_device_train_batch_size=4, max_steps=2,
            save_strategy="no", disable_tqdm=True, use_cpu=True, alpha_task=0.0, alpha_logits=1.0, temperature=1.0,
            logging_steps=1, **kw,
        )  # fmt: skip

    collator = DistillationDataCollator(pad_token_id=0)
    for named, teacher_model in ((str(folder), None), (None, str(folder))):
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher_model, args=config(teacher_model_name_or_path=named),
            train_dataset=cached, data_collator=collator,
        )  # fmt: skip
        assert [type(t) for t in trainer.teachers] == [TopKCacheTeacher] and trainer.teachers[0].model is None
    trainer.train()
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in before.items())
    logged = [h["loss/logits"] for h in trainer.state.log_history if "loss/logits" in h]
    assert logged and all(v > 0 for v in logged)
    # its tokenizer, saved beside it, is still compared with the student's: no weights are needed for that
    with pytest.raises(ValueError, match="differ, first at id 93: student 'zebra', teacher 'w0'"):
        DistillationTrainer(
            model=student, args=config(teacher_model_name_or_path=str(folder)), train_dataset=cached,
            data_collator=collator, processing_class=tiny_tokenizer(extra_words=("zebra",)),
        )  # fmt: skip
    # hidden-state KD needs the teacher itself, which the cache does not hold: it is loaded, and the log says why
    tiny_llama(seed=1).save_pretrained(folder)
    with caplog.at_level("INFO", logger="hf_distill.distillation_plan"):
        trainer = DistillationTrainer(
            model=student, args=config(teacher_model_name_or_path=str(folder), alpha_hidden=1.0),
            train_dataset=cached, data_collator=collator,
        )  # fmt: skip
    assert trainer.teachers[0].model is not None
    assert f"loading the teacher {folder}: alpha_hidden > 0 needs" in caplog.text
