"""build_student: layer selection, parity with the teacher, width changes, save/reload."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert, tiny_gpt2, tiny_llama, tiny_qwen2
from numerics import assert_fp32_close, forward_chain
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from hf_distill import build_student
from hf_distill.models import get_layers

pytestmark = pytest.mark.numerics  # run again at 1 and 3 threads by `make test-numerics`

FACTORIES = {"bert": tiny_bert, "llama": tiny_llama, "qwen2": tiny_qwen2, "gpt2": tiny_gpt2}


@pytest.mark.parametrize("arch", list(FACTORIES))
def test_copying_every_layer_reproduces_the_teacher(arch):
    teacher = FACTORIES[arch]()
    student = build_student(teacher, layers=list(range(4))).eval()
    ids = torch.randint(1, 99, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        torch.testing.assert_close(
            student(input_ids=ids, attention_mask=mask).logits,
            teacher(input_ids=ids, attention_mask=mask).logits,
            rtol=0,
            atol=0,
        )


@pytest.mark.parametrize("arch", list(FACTORIES))
def test_selected_layers_are_copied(arch):
    teacher = FACTORIES[arch]()
    student = build_student(teacher, layers=[1, 3])
    assert student.config.num_hidden_layers == 2 and student.config.distillation_teacher_layers == [1, 3]
    t_layers, s_layers = get_layers(teacher), get_layers(student)
    for j, i in enumerate([1, 3]):
        for (name, p_s), (_, p_t) in zip(s_layers[j].named_parameters(), t_layers[i].named_parameters()):
            assert torch.equal(p_s, p_t), name
    assert type(student) is type(teacher)
    # embeddings and head copied too
    assert torch.equal(student.get_input_embeddings().weight, teacher.get_input_embeddings().weight)


def test_default_is_every_other_layer_and_layer_types_follow():
    teacher = tiny_qwen2(
        num_layers=4,
        layer_types=["full_attention", "sliding_attention", "full_attention", "sliding_attention"],
        use_sliding_window=True,
        sliding_window=4,
    )
    student = build_student(teacher)
    assert student.config.distillation_teacher_layers == [0, 2]  # a decoder keeps its first block
    assert student.config.layer_types == ["full_attention", "full_attention"]
    # encoders: every other layer, ending with the last
    assert build_student(tiny_bert(num_layers=5)).config.distillation_teacher_layers == [0, 2, 4]
    assert build_student(tiny_bert(num_layers=6)).config.distillation_teacher_layers == [1, 3, 5]
    assert build_student(tiny_gpt2(num_layers=5)).config.distillation_teacher_layers == [0, 2, 4]
    assert build_student(tiny_llama(num_layers=6)).config.distillation_teacher_layers == [0, 2, 4]


def test_width_change_starts_fresh_where_shapes_differ():
    teacher = tiny_bert()
    student = build_student(teacher, layers=[0, 1], intermediate_size=20)
    s_layer, t_layer = get_layers(student)[0], get_layers(teacher)[0]
    assert student.config.intermediate_size == 20
    assert torch.equal(s_layer.attention.self.query.weight, t_layer.attention.self.query.weight)  # same shape: copied
    assert s_layer.intermediate.dense.weight.shape == (20, 32)


@pytest.mark.parametrize(
    "layers, message", [([4], "out of range"), ([2, 1], "strictly increasing"), ([], "at least one")]
)
def test_bad_layers(layers, message):
    with pytest.raises(ValueError, match=message):
        build_student(tiny_bert(), layers=layers)


def test_bad_override():
    with pytest.raises(ValueError, match="not fields of BertConfig"):
        build_student(tiny_bert(), layers=[0], hidden_sizes=3)


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_saved_student_loads_with_from_pretrained(tmp_path, arch):
    teacher = FACTORIES[arch]()
    student = build_student(teacher, layers=[0, 2]).eval()
    student.save_pretrained(tmp_path)
    auto = AutoModelForSequenceClassification if arch == "bert" else AutoModelForCausalLM
    reloaded = auto.from_pretrained(tmp_path).eval()
    ids = torch.randint(1, 99, (2, 7))
    with torch.no_grad():
        want = student(input_ids=ids).logits
        assert_fp32_close(reloaded(input_ids=ids).logits, want, n=forward_chain(student.config, ids.shape[1]))
