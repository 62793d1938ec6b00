"""DistillationConfig: validation with ValueErrors that name the bad value, CLI and YAML round trips."""

from __future__ import annotations

import math

import pytest
import yaml
from transformers import HfArgumentParser

from hf_distill import DistillationConfig


def make(tmp_path, **kw):
    return DistillationConfig(output_dir=str(tmp_path), report_to="none", **kw)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"temperature": 0}, "temperature must be a finite number > 0, got 0."),
        ({"alpha_hidden": -1.0}, "alpha_hidden must be a finite number >= 0, got -1.0."),
        ({"alpha_task": 0, "alpha_logits": 0}, "all 0"),
        ({"logit_loss": "kld"}, "logit_loss='kld' is unknown"),
        ({"hidden_loss": "l2"}, "hidden_loss='l2' is unknown"),
        ({"attention_loss": "x"}, "attention_loss='x' is unknown"),
        ({"jsd_beta": 1.0}, "jsd_beta must be a finite number strictly between 0 and 1, got 1.0."),
        ({"layer_map": "1-2"}, "Bad layer_map entry '1-2'"),
        ({"projection": "mlp"}, "projection must be 'linear' or 'none', got 'mlp'"),
        ({"attention_head_reduction": "max"}, "got 'max'"),
        ({"teacher_dtype": "int8"}, "teacher_dtype='int8' is unknown"),
        ({"teacher_weights": [1.0, -1.0]}, "teacher_weights[1] must be a finite number >= 0, got -1.0."),
        ({"teacher_weights": [0.0, 0.0]}, "teacher_weights must have a positive sum, got [0.0, 0.0]."),
        ({"relation_heads": 0}, "relation_heads must be >= 1, got 0"),
        ({"adapter_learning_rate": 0.0}, "adapter_learning_rate must be a finite number > 0, got 0.0."),
    ],
)
def test_bad_values_raise_value_error(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        make(tmp_path, **kwargs)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    "name, value, valid",
    [
        ("temperature", NAN, "> 0"),
        ("temperature", INF, "> 0"),
        ("alpha_task", NAN, ">= 0"),
        ("alpha_logits", INF, ">= 0"),
        ("alpha_hidden", NAN, ">= 0"),
        ("alpha_attention", -INF, ">= 0"),
        ("jsd_beta", NAN, "strictly between 0 and 1"),
        ("learning_rate", NAN, "> 0"),
        ("learning_rate", INF, "> 0"),
        ("learning_rate", -1e-4, "> 0"),
        ("adapter_learning_rate", INF, "> 0"),
        ("adam_beta1", NAN, "in [0, 1)"),
        ("adam_beta2", 1.0, "in [0, 1)"),
        ("adam_epsilon", INF, ">= 0"),
        ("label_smoothing_factor", NAN, "in [0, 1]"),
        ("generation_temperature", INF, "> 0"),
    ],
)
def test_values_that_cannot_train_are_refused(tmp_path, name, value, valid):
    """nan and inf slipped through comparisons such as ``value < 0``; each is one line naming field, value, range."""
    with pytest.raises(ValueError) as err:
        make(tmp_path, **{name: value})
    assert str(err.value) == f"{name} must be a finite number {valid}, got {value!r}."


@pytest.mark.parametrize("weights", [[1.0, NAN], [INF, 1.0]])
def test_non_finite_teacher_weights_are_refused(tmp_path, weights):
    index = next(i for i, w in enumerate(weights) if not math.isfinite(w))
    with pytest.raises(
        ValueError, match=rf"^teacher_weights\[{index}\] must be a finite number >= 0, got {weights[index]}\.$"
    ):
        make(tmp_path, teacher_weights=weights)


@pytest.mark.parametrize("value", [NAN, INF, 0.0, -1e-5])
def test_glue_teacher_learning_rate_is_checked(value):
    from hf_distill.recipes.glue import GlueArguments

    with pytest.raises(ValueError) as err:
        GlueArguments(teacher_learning_rate=value)
    assert str(err.value) == (
        f"teacher_learning_rate must be a finite number > 0 (or unset for learning_rate), got {value!r}."
    )
    assert GlueArguments(teacher_learning_rate=None).teacher_learning_rate is None
    assert GlueArguments(teacher_learning_rate=3e-5).teacher_learning_rate == 3e-5


@pytest.mark.parametrize("value", [NAN, INF, -1.0])
def test_glue_teacher_epochs_are_checked(value):
    from hf_distill.recipes.glue import GlueArguments

    with pytest.raises(ValueError) as err:
        GlueArguments(teacher_num_train_epochs=value)
    assert str(err.value) == f"teacher_num_train_epochs must be a finite number >= 0, got {value!r}."


def test_non_finite_values_from_the_command_line_are_refused(tmp_path):
    parser = HfArgumentParser(DistillationConfig)
    with pytest.raises(ValueError, match="^temperature must be a finite number > 0, got nan.$"):
        parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), "--temperature", "nan"])


def test_layer_map_accepts_a_list_of_pairs(tmp_path):
    assert make(tmp_path, layer_map=[[0, 0], [1, 2]]).layer_map == "0:0,1:2"
    assert make(tmp_path, layer_map=["1:2", "2:4"]).layer_map == "1:2,2:4"


def test_cli_round_trip(tmp_path):
    parser = HfArgumentParser(DistillationConfig)
    (config,) = parser.parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--temperature",
            "4",
            "--alpha_hidden",
            "1",
            "--logit_loss",
            "jsd",
            "--jsd_beta",
            "0.3",
            "--layer_map",
            "0:0,1:2",
            "--teacher_weights",
            "0.7",
            "0.3",
            "--report_to",
            "none",
        ]
    )
    assert (config.temperature, config.alpha_hidden, config.logit_loss, config.jsd_beta) == (4.0, 1.0, "jsd", 0.3)
    assert config.layer_map == "0:0,1:2" and config.teacher_weights == [0.7, 0.3]


def test_help_documents_every_distillation_field():
    help_text = HfArgumentParser(DistillationConfig).format_help()
    for name in DistillationConfig.distillation_field_names():
        assert f"--{name}" in help_text
    for field in DistillationConfig.__dataclass_fields__.values():
        if field.name in DistillationConfig.distillation_field_names():
            assert field.metadata.get("help"), field.name


def test_yaml_round_trip(tmp_path):
    config = make(
        tmp_path,
        temperature=3.0,
        alpha_attention=0.5,
        attention_loss="relation",
        layer_map="last",
        teacher_model_name_or_path="some/teacher",
        learning_rate=3e-4,
    )
    path = tmp_path / "c.yaml"
    config.to_yaml(str(path))
    values = yaml.safe_load(path.read_text())
    assert values["temperature"] == 3.0 and values["attention_loss"] == "relation"
    loaded = DistillationConfig.from_yaml(str(path))
    assert loaded.distillation_dict() == config.distillation_dict()
    assert loaded.learning_rate == 3e-4 and loaded.output_dir == config.output_dir
    (parsed,) = HfArgumentParser(DistillationConfig).parse_yaml_file(str(path))
    assert parsed.distillation_dict() == config.distillation_dict()
    override = DistillationConfig.from_yaml(str(path), temperature=5.0)
    assert override.temperature == 5.0


@pytest.mark.parametrize(
    "fields, cached, needed",
    [
        ({"alpha_task": 1.0, "alpha_logits": 0.0}, False, False),  # a no-KD baseline
        ({"alpha_logits": 1.0}, False, True),
        ({"alpha_logits": 1.0}, True, False),  # soft targets from the cache
        ({"alpha_logits": 1.0, "lmbda": 0.5}, True, True),  # generated completions carry no cache
        ({"alpha_logits": 1.0, "alpha_hidden": 1.0}, True, True),  # internals come from the teacher only
        ({"alpha_task": 1.0, "alpha_logits": 0.0, "seq_kd": True}, True, True),  # the teacher writes the data
    ],
)
def test_live_teacher_needs(tmp_path, fields, cached, needed):
    args = DistillationConfig(output_dir=str(tmp_path), report_to="none", **fields)
    assert bool(args.live_teacher_needs(cached)) is needed
