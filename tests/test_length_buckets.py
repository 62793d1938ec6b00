"""Length groups: the grouping is optimal, and work done on groups (the teacher's forward, the self-relation loss)
equals the same work on the whole padded batch."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from conftest import classification_dataset, tiny_bert
from numerics import assert_fp32_close, cross_entropy_scale, divergence_scale, forward_chain, grad_scales
from transformers import BertConfig, BertForTokenClassification

from hf_distill import DistillationConfig, DistillationTrainer, build_student
from hf_distill.losses import get_loss
from hf_distill.losses.lengths import length_groups, valid_lengths
from hf_distill.teachers.length_buckets import merge_outputs, split_batch

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`


def _cost(groups, power):
    return sum(len(rows) * length**power for rows, length in groups)


def _brute_force(lengths, max_groups, power, multiple):
    """Least cost over every split of the sorted (rounded) lengths into at most ``max_groups`` contiguous runs."""
    padded = sorted(-(-n // multiple) * multiple for n in lengths if n > 0)
    best = math.inf
    for k in range(1, max_groups + 1):
        for cuts in itertools.combinations(range(1, len(padded)), k - 1):
            bounds = [0, *cuts, len(padded)]
            best = min(best, sum((b - a) * padded[b - 1] ** power for a, b in itertools.pairwise(bounds)))
    return best


@pytest.mark.parametrize("power,multiple", [(1, 1), (2, 1), (2, 16)])
def test_length_groups_are_optimal_and_cover_every_row_once(power, multiple):
    g = torch.Generator().manual_seed(0)
    for _ in range(25):
        lengths = torch.randint(0, 50, (9,), generator=g)
        groups = length_groups(lengths, max_groups=3, power=power, multiple=multiple, min_gain=0.0)
        rows = torch.cat([r for r, _ in groups]).sort().values
        assert rows.tolist() == [i for i, n in enumerate(lengths.tolist()) if n > 0]  # rows of length 0 left out
        for r, length in groups:
            assert length % multiple == 0 and length >= int(lengths[r].max())
        assert _cost(groups, power) == _brute_force(lengths.tolist(), 3, power, multiple)


def test_length_groups_split_only_when_it_pays():
    assert len(length_groups(torch.full((8,), 30))) == 1
    assert len(length_groups(torch.tensor([30] * 7 + [29]), min_gain=0.05)) == 1  # saves 0.4%: not worth a group
    short_long = torch.tensor([4] * 16 + [64] * 16)
    groups = length_groups(short_long)
    assert [(len(r), n) for r, n in groups] == [(16, 4), (16, 64)]
    assert set(groups[0][0].tolist()) == set(range(16))
    assert [n for _, n in length_groups(torch.tensor([3, 17, 40]), power=2, multiple=16, min_gain=0)] == [16, 32, 48]
    assert length_groups(torch.zeros(4, dtype=torch.long)) == []
    with pytest.raises(ValueError, match="max_groups"):
        length_groups(short_long, max_groups=0)


def test_valid_lengths_only_for_right_padding():
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert valid_lengths(right).tolist() == [2, 3]
    assert valid_lengths(torch.tensor([[0, 1, 1], [1, 1, 1]])) is None
    assert valid_lengths(torch.tensor([[1, 0, 1], [1, 1, 1]])) is None


def _relation_reference(s, t, mask, heads):
    """The definition on each row's real tokens (in order), one row and relation head at a time; and the size of the
    terms it sums (tests/numerics.py)."""
    total, rows, scale = 0.0, 0, 0.0
    for b in range(s.shape[0]):
        keep = mask[b].bool()
        xs_all, xt_all = s[b, keep], t[b, keep]
        ds, dt = s.shape[-1] // heads, t.shape[-1] // heads
        for r in range(heads):
            xs, xt = xs_all[:, r * ds : (r + 1) * ds], xt_all[:, r * dt : (r + 1) * dt]
            log_s = (xs @ xs.T / math.sqrt(ds)).log_softmax(-1)
            p_t = (xt @ xt.T / math.sqrt(dt)).softmax(-1)
            total = total + (p_t * (p_t.log() - log_s)).sum() / heads
            scale += divergence_scale(log_s, p_t.log()) * len(xs) / heads
        rows += int(keep.sum())
    return total / rows, scale / rows


@pytest.mark.parametrize("chunk", ["default", "one example", "uneven"])
@pytest.mark.parametrize("padding", ["right", "left", "gaps", "none"])
def test_grouped_relation_kd_equals_the_definition(padding, chunk, monkeypatch):
    """Value and gradient (computed in the forward, scaled by the upstream gradient in the backward) against autograd
    through the definition, with each group computed at once, one example at a time, or in chunks of 3 examples
    (the last one short); without gradients the value is the same."""
    import hf_distill.losses.attention as attention

    elements = {"default": attention._CHUNK_ELEMENTS, "one example": 1, "uneven": 3 * 2 * 48 * 48}[chunk]
    monkeypatch.setattr(attention, "_CHUNK_ELEMENTS", elements)
    g = torch.Generator().manual_seed(1)
    batch, seq, heads = 10, 40, 2
    lengths = torch.tensor([3, 5, 9, 12, 17, 20, 26, 33, 38, 40])
    positions = torch.arange(seq)[None]
    mask = {
        "right": positions < lengths[:, None],
        "left": positions >= seq - lengths[:, None],
        "gaps": torch.rand(batch, seq, generator=g) < 0.5,
        "none": torch.ones(batch, seq, dtype=torch.bool),
    }[padding].long()
    mask[:, 0] = 1
    s = torch.randn(batch, seq, 8, generator=g, requires_grad=True)
    t = torch.randn(batch, seq, 12, generator=g)
    rel = get_loss("attention", "relation")
    got = rel(s, t, mask=mask, num_relation_heads=heads)
    (2.5 * got).backward()
    ref_s = s.detach().clone().requires_grad_(True)
    want, scale = _relation_reference(ref_s, t, mask, heads)
    (2.5 * want).backward()
    n = 12 + seq + heads + int(mask.sum())  # the relations' widths, keys, heads, rows
    assert_fp32_close(got, want, scale=scale, n=n)
    assert_fp32_close(s.grad, ref_s.grad, n=2 * n)
    assert not s.grad[~mask.bool()].any()  # padded positions get no gradient
    whole = rel(s.detach(), t, mask=mask, num_relation_heads=heads, max_groups=1)
    assert_fp32_close(got, whole, scale=scale, n=n)
    with torch.no_grad():
        assert_fp32_close(rel(s, t, mask=mask, num_relation_heads=heads), want, scale=scale, n=n)
    if padding == "right":
        assert len(length_groups(mask.sum(1), power=2, multiple=16)) > 1  # the test really ran several groups


def test_relation_kd_refuses_heads_that_do_not_divide_the_width():
    with pytest.raises(ValueError, match="3 relation heads"):
        get_loss("attention", "relation")(torch.randn(2, 4, 8), torch.randn(2, 4, 8), num_relation_heads=3)


def test_merged_token_outputs_equal_the_whole_batch_forward():
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
        num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    model = BertForTokenClassification(config).eval()
    lengths = torch.tensor([2, 3, 9, 10, 3, 10])
    mask = (torch.arange(10)[None] < lengths[:, None]).long()
    inputs = {"input_ids": torch.randint(1, 50, (6, 10)) * mask, "attention_mask": mask}
    groups = length_groups(lengths, min_gain=0)
    assert len(groups) > 1
    with torch.no_grad():
        whole = model(**inputs, output_hidden_states=True, output_attentions=True)
        parts = [
            model(**split_batch(inputs, rows, n, 10), output_hidden_states=True, output_attentions=True)
            for rows, n in groups
        ]
    merged = merge_outputs(parts, groups, 6, 10, token_logits=True)
    keep = mask.bool()
    n = forward_chain(config, 10)  # shorter padded rows: every product and softmax of the forward runs on other shapes
    assert_fp32_close(merged.logits[keep], whole.logits[keep], n=n, msg="logits")
    for layer, (a, b) in enumerate(zip(merged.hidden_states, whole.hidden_states, strict=True)):
        assert_fp32_close(a[keep], b[keep], n=n, msg=f"hidden states {layer}")
    pair = keep[:, None, :, None] & keep[:, None, None, :]  # real query and key
    for layer, (a, b) in enumerate(zip(merged.attentions, whole.attentions, strict=True)):
        assert_fp32_close(a[pair.expand_as(a)], b[pair.expand_as(b)], n=n, msg=f"attentions {layer}")


def _kd_step(out, groups, calls):
    teacher = tiny_bert(hidden=48, heads=4, seed=1, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    student = build_student(teacher, layers=[1, 3], hidden_size=32, intermediate_size=40, num_attention_heads=2)
    hook = teacher.register_forward_hook(lambda *_: calls.append(1))
    args = DistillationConfig(
        output_dir=out, report_to="none", use_cpu=True, per_device_train_batch_size=16, max_steps=1,
        alpha_task=0.5, alpha_logits=0.5, alpha_hidden=1.0, alpha_attention=1.0, attention_loss="relation",
        teacher_length_groups=groups, disable_tqdm=True, seed=0,
    )  # fmt: skip
    data = classification_dataset(n=16, seq_len=24, seed=4)  # ragged: 16 rows of different lengths
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    batch = next(iter(trainer.get_train_dataloader()))
    student.train()
    loss = trainer.compute_loss(student, batch)
    loss.backward()
    terms = {k: v[-1] for k, v in trainer._metrics["train"].items()}
    grads = {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}
    hook.remove()
    with torch.no_grad():  # the sizes of the terms behind the logged losses (tests/numerics.py)
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        s_logits, t_logits = student.eval()(**inputs).logits, teacher(**inputs).logits
    relation = 4 * math.log(batch["input_ids"].shape[1])  # a KL over <= 24 keys: 2 (H_s + H_t) + its own value
    scales = {
        "loss/task": cross_entropy_scale(s_logits),
        "loss/logits": divergence_scale(s_logits, t_logits, temperature=args.temperature),
        "loss/hidden": terms["loss/hidden"],  # an MSE adds squares
        "loss/attention": relation + 2 * terms["loss/attention"],
    }
    return loss.detach(), terms, grads, scales


def test_teacher_in_length_groups_gives_the_same_loss_and_gradients(tmp_path):
    calls_whole, calls_grouped = [], []
    loss_whole, terms_whole, grads_whole, scales = _kd_step(str(tmp_path / "a"), 1, calls_whole)
    loss_grouped, terms_grouped, grads_grouped, _ = _kd_step(str(tmp_path / "b"), 4, calls_grouped)
    assert len(calls_whole) == 1 and len(calls_grouped) > 1  # the teacher really ran on groups
    assert (
        terms_grouped.keys() == terms_whole.keys() == {f"loss/{k}" for k in ("task", "logits", "hidden", "attention")}
    )
    # the teacher's forward on shorter padded rows, then the losses over its outputs
    n = forward_chain(tiny_bert(hidden=48, heads=4).config, 24) + 16 * 24
    for name in terms_whole:
        assert_fp32_close(terms_grouped[name], terms_whole[name], scale=scales[name], n=n, msg=name)
    total = 0.5 * scales["loss/task"] + 0.5 * scales["loss/logits"] + scales["loss/hidden"] + scales["loss/attention"]
    assert_fp32_close(loss_grouped, loss_whole, scale=total, n=n, msg="loss")
    grad_scale = grad_scales(grads_whole)
    for name in grads_whole:  # and back through the student
        assert_fp32_close(grads_grouped[name], grads_whole[name], scale=grad_scale[name], n=2 * n, msg=name)


def test_teacher_length_groups_is_validated():
    with pytest.raises(ValueError, match="teacher_length_groups must be >= 1"):
        DistillationConfig(output_dir="out/x", teacher_length_groups=0, report_to="none")
