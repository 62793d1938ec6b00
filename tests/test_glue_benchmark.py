"""The GLUE quality benchmark's arguments: the variants, and the budget of issue #3 pinned over the recipe's."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import glue_quality  # noqa: E402 (an import error fails the module, it never skips it)


def test_every_variant_sets_known_fields():
    known = glue_quality.GLUE_FIELDS | set(glue_quality.DistillationConfig.__dataclass_fields__)
    for name, overrides in glue_quality.VARIANTS.items():
        assert set(overrides) <= known, name
    # "_drop" twins keep the teacher's dropout; the others, the recipe's
    for name, overrides in glue_quality.VARIANTS.items():
        assert ("student_dropout" in overrides) == name.endswith("_drop"), name


def test_variant_arguments_put_each_override_on_the_dataclass_that_has_it():
    recipe = str(glue_quality.RECIPE)
    glue_args, args = glue_quality.parse_with_config(
        [glue_quality.GlueArguments, glue_quality.DistillationConfig], ["--config", recipe], "test"
    )
    assert glue_args.student_dropout == 0.0 and args.alpha_attention == 5.0  # the recipe as shipped
    glue, cfg = glue_quality.variant_arguments("no_kd_drop", glue_args, args, output_dir="out/x")
    assert glue.student_dropout is None and glue.student_layers == glue_args.student_layers
    assert (cfg.alpha_task, cfg.alpha_logits, cfg.alpha_hidden, cfg.alpha_attention) == (1.0, 0.0, 0.0, 0.0)
    assert cfg.output_dir == "out/x" and cfg.temperature == args.temperature
    glue, cfg = glue_quality.variant_arguments("kd_decay", glue_args, args)
    assert glue == glue_args and cfg.intermediate_schedule == "linear" and cfg.output_dir == args.output_dir


def test_the_benchmark_keeps_its_budget_whatever_the_demo_recipe_sets():
    """The recipe's YAML holds the demo's budget (4k labels + 16k unlabelled, 2-epoch teacher, length groups); the
    benchmark measures issue #3's: up to 16k labelled examples, one epoch for everyone, random batches."""
    glue_args, args = glue_quality.bench_arguments("cola", 43, train_samples=16000, epochs=3.0, work_dir="out/b")
    assert (glue_args.task_name, glue_args.max_train_samples, glue_args.unlabelled_train_samples) == ("cola", 16000, 0)
    assert glue_args.teacher_num_train_epochs == 3.0 and glue_args.teacher_max_steps is None
    assert not glue_args.baseline_no_kd and glue_args.data_dir.endswith("glue/CoLA")
    assert args.num_train_epochs == 3.0 and args.seed == 43 and args.output_dir == "out/b/cola-43-3ep"
    assert str(args.train_sampling_strategy) == "random"
    # the KD settings stay the recipe's
    assert (args.temperature, args.alpha_hidden, args.alpha_attention, glue_args.student_dropout) == (
        4.0,
        1.0,
        5.0,
        0.0,
    )


def test_a_run_records_every_resolved_argument_and_each_variants_overrides():
    opts = glue_quality.build_parser().parse_args(["--tasks", "sst2", "--variants", "no_kd", "kd_t2"])
    config = glue_quality.run_config(opts, "sst2", 44)
    assert (config["task"], config["seed"], config["epochs"], config["train_samples"]) == ("sst2", 44, 1.0, 16000)
    assert config["variant_overrides"] == {"no_kd": glue_quality.NO_KD, "kd_t2": {"temperature": 2.0}}
    assert config["distillation_config"]["seed"] == 44 and config["distillation_config"]["temperature"] == 4.0
    assert config["glue_arguments"]["unlabelled_train_samples"] == 0
    assert len(config["distillation_config"]) > 100  # every TrainingArguments field, not only the recipe's
