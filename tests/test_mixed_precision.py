"""bf16 runs keep the KD maths in float32.

(a) Every loss, given bf16 tensors, returns a float32 value equal (to float32 rounding, tests/numerics.py) to its value
on float32 copies of the same bf16 numbers: nothing after the inputs is computed in bf16 (which would miss by about
2**-9 of the terms, a thousand times the tolerance). For the chunked losses the student's (and
teacher's) head matmul is part of the function; its output is bf16 as a bf16 model's logits are, so the reference
is the unchunked loss on those bf16 logits, upcast.
(b) A ``bf16=True`` training run (student under autocast, teacher in bf16) logs the same ``loss/logits`` as the
float32 run of the same models and data, to the tolerance stated at ``BF16_RTOL``, and not exactly the same (bf16 was
applied); likewise ``fp16=True`` with an fp16 teacher. On the CPU, and on a GPU when there is one. On the CPU
accelerate applies no fp16 autocast, so there the fp16 run has only its teacher in fp16 (the test says so).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import classification_dataset, lm_dataset, tiny_bert, tiny_llama
from numerics import assert_fp32_close, cross_entropy_scale, divergence_scale, forward_chain

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.losses import (
    TeacherTargets,
    available_losses,
    fused_causal_lm_loss,
    get_loss,
    mix_teacher_logits,
    task_loss,
    teacher_topk,
    topk_token_kd,
)

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

B, T, D, V = 3, 6, 16, 101
N_LOSS = 2 * D + V + B * T  # the chains of additions behind a loss here: widths, vocabulary, tokens


def bf16(*shape, scale=4.0, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).bfloat16()


def assert_fp32_match(got, want, scale=None):
    """``got`` is float32 and equals ``want`` to float32 rounding of terms of size ``scale`` (default: ``want``'s)."""
    assert got.dtype == torch.float32, got.dtype
    assert_fp32_close(got, want, scale=scale, n=N_LOSS)


def loss_scale(name, s, t, **kw):
    """The size of the terms a logit or attention loss sums: a divergence's, or an MSE's squares (its value)."""
    if name in ("mse", "cosine"):
        return 2.0 if name == "cosine" else None  # 1 - cos, |cos| <= 1
    return divergence_scale(s.float(), t.float(), temperature=kw.get("temperature", 1.0), mask=kw.get("mask"))


MASK = torch.rand(B, T, generator=torch.Generator().manual_seed(1)) > 0.3
DIVERGENCES = [name for name in available_losses("logits") if name != "mse"]


# ---- (a) the loss functions ----


@pytest.mark.parametrize("name", available_losses("logits"))
def test_logit_losses_compute_in_fp32(name):
    s, t = bf16(B, T, V), bf16(B, T, V, seed=1)
    fn = get_loss("logits", name)
    kw = {"mask": MASK, "temperature": 2.0, "beta": 0.3}
    assert_fp32_match(fn(s, t, **kw), fn(s.float(), t.float(), **kw), loss_scale(name, s, t, **kw))


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_mixing_teachers_computes_in_fp32(loss):
    teachers = [bf16(B, T, V, seed=i) for i in (1, 2)]
    got = mix_teacher_logits(teachers, [0.3, 0.7], 2.0, loss)
    assert_fp32_match(got, mix_teacher_logits([z.float() for z in teachers], [0.3, 0.7], 2.0, loss))


@pytest.mark.parametrize("name", available_losses("hidden"))
def test_hidden_losses_compute_in_fp32(name):
    s, t = bf16(B, T, D), bf16(B, T, D, seed=1)
    fn = get_loss("hidden", name)
    assert_fp32_match(fn(s, t, mask=MASK), fn(s.float(), t.float(), mask=MASK), loss_scale(name, s, t))


@pytest.mark.parametrize("name", available_losses("attention"))
def test_attention_losses_compute_in_fp32(name):
    if name == "relation":  # query/key/value states (B, T, D)
        s, t, kw = bf16(B, T, D), bf16(B, T, 2 * D, seed=1), {"num_relation_heads": 4}
        scale = 4 * math.log(T) + 2 * get_loss("attention", name)(s, t, mask=MASK, **kw).item()  # KL over T keys
    else:  # attention maps (B, H, T, T)
        s, t = (bf16(B, 2, T, T, seed=i).float().softmax(-1).bfloat16() for i in (0, 1))
        kw = {}
        scale = loss_scale(name, s.float().log(), t.float().log())
    fn = get_loss("attention", name)
    assert_fp32_match(fn(s, t, mask=MASK, **kw), fn(s.float(), t.float(), mask=MASK, **kw), scale)


def test_task_loss_computes_in_fp32():  # causal LM: logits (B, T-1, V) already aligned, labels (B, T) not
    logits, labels = bf16(B, T - 1, V), torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    labels[0, :2] = -100
    got = task_loss(logits, labels, task="causal_lm", label_smoothing=0.1)
    want = task_loss(logits.float(), labels, task="causal_lm", label_smoothing=0.1)
    assert_fp32_match(got, want, cross_entropy_scale(logits.float()))


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_topk_losses_compute_in_fp32(name, tail):
    s, t = bf16(B, T, V), bf16(B, T, V, seed=1)
    ids, logprobs = teacher_topk(t, 8, temperature=2.0)
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs, teacher_topk(t.float(), 8, temperature=2.0)[1], rtol=0, atol=0)
    kw = {"mask": MASK, "loss": name, "temperature": 2.0, "beta": 0.3, "tail": tail}
    got = topk_token_kd(s, ids, logprobs.half(), **kw)  # a float16 cache, as stored on disk
    scale = loss_scale(name, s, t, mask=MASK, temperature=2.0)
    assert_fp32_match(got, topk_token_kd(s.float(), ids, logprobs.half().float(), **kw), scale)


def bf16_heads():
    """A bf16 student (hidden, head) and teacher (hidden, head), and their bf16 logits ``(B, T, V)``."""
    hidden, head = bf16(B, T, D, scale=1.0), bf16(V, D, scale=0.5, seed=1)
    t_hidden, t_head = bf16(B, T, 2 * D, scale=1.0, seed=2), bf16(V, 2 * D, scale=0.5, seed=3)
    return hidden, head, t_hidden, t_head, F.linear(hidden, head), F.linear(t_hidden, t_head)


@pytest.mark.parametrize("name", available_losses("logits"))
def test_chunked_kd_term_computes_in_fp32(name):
    hidden, head, t_hidden, t_head, s_logits, t_logits = bf16_heads()
    kw = {"labels": None, "mask": MASK, "alpha_task": 0.0, "alpha_logits": 1.0, "loss": name, "temperature": 2.0}
    kw.update(beta=0.3, chunk_size=4)
    want = get_loss("logits", name)(s_logits.float(), t_logits.float(), mask=MASK, temperature=2.0, beta=0.3)
    scale = loss_scale(name, s_logits, t_logits, mask=MASK, temperature=2.0)
    got, _ = fused_causal_lm_loss(hidden, head, teacher=TeacherTargets(logits=[t_logits]), **kw)
    assert_fp32_match(got, want, scale)
    got, _ = fused_causal_lm_loss(hidden, head, teacher=TeacherTargets(hidden=[t_hidden], heads=[t_head]), **kw)
    assert_fp32_match(got, want, scale)


@pytest.mark.parametrize("name", ["kl", "jsd"])  # kl: the closed-form path, jsd: the autograd path
def test_fused_causal_lm_loss_computes_in_fp32(name):
    hidden, head, t_hidden, t_head, s_logits, t_logits = bf16_heads()
    labels = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(4)).masked_fill(~MASK, -100)
    total, terms = fused_causal_lm_loss(
        hidden,
        head,
        labels=labels,
        mask=MASK,
        teacher=TeacherTargets(hidden=[t_hidden], heads=[t_head]),
        alpha_task=0.5,
        alpha_logits=1.0,
        loss=name,
        temperature=2.0,
        chunk_size=4,
    )
    ce = F.cross_entropy(s_logits.float()[MASK], labels[MASK])
    kd = get_loss("logits", name)(s_logits.float(), t_logits.float(), mask=MASK, temperature=2.0)
    scales = cross_entropy_scale(s_logits.float()), loss_scale(name, s_logits, t_logits, mask=MASK, temperature=2.0)
    assert_fp32_match(terms["task"], ce, scales[0])
    assert_fp32_match(terms["logits"], kd, scales[1])
    assert_fp32_match(total, 0.5 * ce + kd, 0.5 * scales[0] + scales[1])


# ---- (b) a bf16 training run against the float32 one ----

# The bf16 run: accelerate autocasts the student's forward (the Trainer prepares only the student) and
# teacher_dtype="bfloat16" puts the teacher in bf16, so both models' matmuls run in bf16 (8 mantissa bits), the
# losses in float32. The teacher's output head is scaled up so that its soft targets are peaked and the KD term is
# far from 0 (a random tiny model is nearly uniform). The tolerance is the rounding of the teacher's forward in the
# half format (tests/numerics.py: its unit roundoff, 2**-9 for bf16, 2**-11 for fp16, times sqrt of the model's
# chains): about 37% (bf16) and 9% (fp16) of the KD term, which the perturbed logits move in proportion. A log-softmax
# in bf16 misses by far more (the encoder's KD term then reads 0.0002 and -0.0024, a negative KL, where float32 maths
# gives 0.0055 and 0.0045). Measured on one CPU: bf16 within 0.7% (encoder) and 0.12% (causal LM, chunked) of the
# float32 run over the first two steps, fp16 (teacher in fp16; on the CPU the student stays fp32, see
# logged_kd_losses) within 0.021% and 0.009%.

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


HALF = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def logged_kd_losses(kind, device, precision, out):
    """The ``loss/logits`` of the first two steps with ``precision`` ("no", "bf16" or "fp16"), and the chains of
    additions of the teacher's forward (tests/numerics.py); checks that the run really uses the precision:
    accelerate's mixed precision and the teacher's weights."""
    if kind == "encoder":
        teacher, student, data, extra = tiny_bert(seed=1), tiny_bert(2, 16, 2, seed=2), classification_dataset(), {}
    else:
        teacher, data, extra = tiny_llama(seed=1), lm_dataset(), {"kd_chunk_size": 7}
        student = tiny_llama(num_layers=2, hidden=16, heads=2, kv_heads=1, seed=2)
    args = DistillationConfig(
        output_dir=out,
        report_to="none",
        per_device_train_batch_size=8,
        max_steps=2,
        logging_steps=1,
        temperature=2.0,
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        teacher_dtype={"no": None, "bf16": "bfloat16", "fp16": "float16"}[precision],
        seed=0,
        **extra,
    )
    head = teacher.classifier if kind == "encoder" else teacher.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(20.0)  # a peaked teacher
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    assert trainer._fused == (kind == "lm")
    assert trainer.accelerator.mixed_precision == precision
    assert {p.dtype for p in trainer.teachers[0].model.parameters()} == {HALF[precision]}
    # the student's forward is autocast, except fp16 on the CPU: accelerate applies no fp16 autocast there
    assert trainer.accelerator.native_amp == (precision == "bf16" or (precision == "fp16" and device != "cpu"))
    trainer.train()
    n = forward_chain(teacher.config, max(len(ids) for ids in data["input_ids"]))
    return [log["loss/logits"] for log in trainer.state.log_history if "loss/logits" in log], n


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["encoder", "lm"])
def test_half_precision_run_matches_fp32_run(tmp_path, kind, device, precision):
    fp32, n = logged_kd_losses(kind, device, "no", str(tmp_path / "fp32"))
    half, _ = logged_kd_losses(kind, device, precision, str(tmp_path / precision))
    assert len(fp32) == len(half) == 2
    print(f"{kind} on {device}: fp32 {fp32}, {precision} {half}")  # -s shows the numbers in docs/distributed.md
    assert half != fp32  # the half-precision run did compute in half precision
    assert_fp32_close(half, fp32, scale=0.0, n=n, dtype=HALF[precision])  # relative: the term moves in proportion
