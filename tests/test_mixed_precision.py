"""bf16 runs keep the KD maths in float32.

(a) Every loss, given bf16 tensors, returns a float32 value equal (to 1e-6 relative) to its value on float32 copies
of the same bf16 numbers: nothing after the inputs is computed in bf16. For the chunked losses the student's (and
teacher's) head matmul is part of the function; its output is bf16 as a bf16 model's logits are, so the reference
is the unchunked loss on those bf16 logits, upcast.
(b) A ``bf16=True`` training run (student under autocast, teacher in bf16) logs the same ``loss/logits`` as the
float32 run of the same models and data, to the tolerance stated at ``BF16_RTOL``, and not exactly the same (bf16 was
applied); likewise ``fp16=True`` with an fp16 teacher. On the CPU, and on a GPU when there is one. On the CPU
accelerate applies no fp16 autocast, so there the fp16 run has only its teacher in fp16 (the test says so).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import classification_dataset, lm_dataset, tiny_bert, tiny_llama

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.losses import (
    available_losses,
    chunked_token_kd,
    get_loss,
    mix_teacher_logits,
    task_loss,
    teacher_topk,
    topk_token_kd,
)
from hf_distill.losses.token import TeacherTargets, fused_causal_lm_loss

B, T, D, V = 3, 6, 16, 101
REL = 1e-6


def bf16(*shape, scale=4.0, seed=0):
    return (torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale).bfloat16()


def assert_fp32_match(got, want):
    assert got.dtype == torch.float32, got.dtype
    torch.testing.assert_close(got, want.float(), rtol=REL, atol=1e-8)


MASK = torch.rand(B, T, generator=torch.Generator().manual_seed(1)) > 0.3
DIVERGENCES = [name for name in available_losses("logits") if name != "mse"]


# ---- (a) the loss functions ----


@pytest.mark.parametrize("name", available_losses("logits"))
def test_logit_losses_compute_in_fp32(name):
    s, t = bf16(B, T, V), bf16(B, T, V, seed=1)
    fn = get_loss("logits", name)
    kw = {"mask": MASK, "temperature": 2.0, "beta": 0.3}
    assert_fp32_match(fn(s, t, **kw), fn(s.float(), t.float(), **kw))


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_mixing_teachers_computes_in_fp32(loss):
    teachers = [bf16(B, T, V, seed=i) for i in (1, 2)]
    got = mix_teacher_logits(teachers, [0.3, 0.7], 2.0, loss)
    assert_fp32_match(got, mix_teacher_logits([z.float() for z in teachers], [0.3, 0.7], 2.0, loss))


@pytest.mark.parametrize("name", available_losses("hidden"))
def test_hidden_losses_compute_in_fp32(name):
    s, t = bf16(B, T, D), bf16(B, T, D, seed=1)
    fn = get_loss("hidden", name)
    assert_fp32_match(fn(s, t, mask=MASK), fn(s.float(), t.float(), mask=MASK))


@pytest.mark.parametrize("name", available_losses("attention"))
def test_attention_losses_compute_in_fp32(name):
    if name == "relation":  # query/key/value states (B, T, D)
        s, t, kw = bf16(B, T, D), bf16(B, T, 2 * D, seed=1), {"num_relation_heads": 4}
    else:  # attention maps (B, H, T, T)
        s, t = (bf16(B, 2, T, T, seed=i).float().softmax(-1).bfloat16() for i in (0, 1))
        kw = {}
    fn = get_loss("attention", name)
    assert_fp32_match(fn(s, t, mask=MASK, **kw), fn(s.float(), t.float(), mask=MASK, **kw))


def test_task_loss_computes_in_fp32():  # causal LM: logits (B, T-1, V) already aligned, labels (B, T) not
    logits, labels = bf16(B, T - 1, V), torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(2))
    labels[0, :2] = -100
    got = task_loss(logits, labels, task="causal_lm", label_smoothing=0.1)
    assert_fp32_match(got, task_loss(logits.float(), labels, task="causal_lm", label_smoothing=0.1))


@pytest.mark.parametrize("name", DIVERGENCES)
@pytest.mark.parametrize("tail", ["bucket", "renormalize"])
def test_topk_losses_compute_in_fp32(name, tail):
    s, t = bf16(B, T, V), bf16(B, T, V, seed=1)
    ids, logprobs = teacher_topk(t, 8, temperature=2.0)
    assert logprobs.dtype == torch.float32
    torch.testing.assert_close(logprobs, teacher_topk(t.float(), 8, temperature=2.0)[1], rtol=0, atol=0)
    kw = {"mask": MASK, "loss": name, "temperature": 2.0, "beta": 0.3, "tail": tail}
    got = topk_token_kd(s, ids, logprobs.half(), **kw)  # a float16 cache, as stored on disk
    assert_fp32_match(got, topk_token_kd(s.float(), ids, logprobs.half().float(), **kw))


def bf16_heads():
    """A bf16 student (hidden, head) and teacher (hidden, head), and their bf16 logits ``(B, T, V)``."""
    hidden, head = bf16(B, T, D, scale=1.0), bf16(V, D, scale=0.5, seed=1)
    t_hidden, t_head = bf16(B, T, 2 * D, scale=1.0, seed=2), bf16(V, 2 * D, scale=0.5, seed=3)
    return hidden, head, t_hidden, t_head, F.linear(hidden, head), F.linear(t_hidden, t_head)


@pytest.mark.parametrize("name", available_losses("logits"))
def test_chunked_token_kd_computes_in_fp32(name):
    hidden, head, t_hidden, t_head, s_logits, t_logits = bf16_heads()
    kw = {"mask": MASK, "loss": name, "temperature": 2.0, "beta": 0.3, "chunk_size": 4}
    want = get_loss("logits", name)(s_logits.float(), t_logits.float(), mask=MASK, temperature=2.0, beta=0.3)
    assert_fp32_match(chunked_token_kd(hidden, head, t_logits, **kw), want)
    assert_fp32_match(chunked_token_kd(hidden, head, teacher_hidden=t_hidden, teacher_head=t_head, **kw), want)


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
    assert_fp32_match(terms["task"], ce)
    assert_fp32_match(terms["logits"], kd)
    assert_fp32_match(total, 0.5 * ce + kd)


# ---- (b) a bf16 training run against the float32 one ----

# The bf16 run: accelerate autocasts the student's forward (the Trainer prepares only the student) and
# teacher_dtype="bfloat16" puts the teacher in bf16, so both models' matmuls run in bf16 (8 mantissa bits), the
# losses in float32. The teacher's output head is scaled up so that its soft targets are peaked and the KD term is
# far from 0 (a random tiny model is nearly uniform). Measured on this CPU: the bf16 run's loss/logits is within 0.7%
# (encoder) and 0.12% (causal LM, chunked) of the float32 run's over the first two steps. 2% leaves room for other
# kernels; a log-softmax in bf16 misses it by far (the encoder's KD term then reads 0.0002 and -0.0024, a
# negative KL, where float32 maths gives 0.0055 and 0.0045). The fp16 run (teacher in fp16; on the CPU the student
# stays fp32, see logged_kd_losses) is within 0.021% (encoder) and 0.009% (causal LM) on this CPU.
BF16_RTOL = 2e-2

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
]


HALF = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def logged_kd_losses(kind, device, precision, out):
    """The ``loss/logits`` of the first two steps with ``precision`` ("no", "bf16" or "fp16"); checks that the run
    really uses it: accelerate's mixed precision and the teacher's weights."""
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
    assert {p.dtype for p in trainer.teachers[0].parameters()} == {HALF[precision]}
    # the student's forward is autocast, except fp16 on the CPU: accelerate applies no fp16 autocast there
    assert trainer.accelerator.native_amp == (precision == "bf16" or (precision == "fp16" and device != "cpu"))
    trainer.train()
    return [log["loss/logits"] for log in trainer.state.log_history if "loss/logits" in log]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["encoder", "lm"])
def test_half_precision_run_matches_fp32_run(tmp_path, kind, device, precision):
    fp32 = logged_kd_losses(kind, device, "no", str(tmp_path / "fp32"))
    half = logged_kd_losses(kind, device, precision, str(tmp_path / precision))
    assert len(fp32) == len(half) == 2
    print(f"{kind} on {device}: fp32 {fp32}, {precision} {half}")  # -s shows the numbers in docs/distributed.md
    assert half != fp32  # the half-precision run did compute in half precision
    assert half == pytest.approx(fp32, rel=BF16_RTOL)
