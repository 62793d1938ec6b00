"""The causal-LM job (`hf-distill causal-lm`) end to end on a tiny Llama saved with a tiny tokenizer: text and JSONL
data, held-out text, results.json, LoRA students, data-free distillation, the teacher cache, the CLI."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
from pathlib import Path

import pytest
import torch
from conftest import WORDS, tiny_llama, tiny_tokenizer
from numerics import assert_fp32_close, cross_entropy_scale, forward_chain
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.cli import main, parse_with_config
from hf_distill.data.teacher_cache import CACHE_META_FILE
from hf_distill.distillation_config import DistillationConfig
from hf_distill.recipes.causal_lm import CausalLMArguments
from hf_distill.recipes.causal_lm_job import run


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    tiny_llama(seed=1, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def write_text(path, lines=200, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n")
    return str(path)


def job(tmp_path, teacher_dir, *flags):
    argv = [
        "--teacher_model_name_or_path", teacher_dir, "--output_dir", str(tmp_path / "out"), "--block_size", "16",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--kd_chunk_size", "8", "--save_strategy", "no", *flags,
    ]  # fmt: skip
    return parse_with_config([CausalLMArguments, DistillationConfig], argv, "test")


def test_text_job_writes_results_with_perplexities(tmp_path, teacher_dir):
    train = write_text(tmp_path / "train.txt")
    other = write_text(tmp_path / "other.txt", lines=60, seed=1)
    lm, args = job(
        tmp_path, teacher_dir, "--train_file", train, "--validation_split_percentage", "10",
        "--validation_files", other, "--student_layers", "0,3",
    )  # fmt: skip
    results = run(lm, args)
    saved = json.load(open(tmp_path / "out" / "results.json"))
    assert saved == json.loads(json.dumps(results))
    names = {"other.txt", "train.txt (held out)"}
    for role in ("teacher", "student_before_training", "student"):
        assert set(saved[role]["perplexity"]) == names
        assert all(1 < v < 1e4 for v in saved[role]["perplexity"].values())
    assert saved["student"]["num_parameters"] < saved["teacher"]["num_parameters"]
    assert saved["student"]["perplexity"] != saved["student_before_training"]["perplexity"]  # it trained
    assert saved["max_steps"] == 2 and saved["student_layers"] == [0, 3]
    assert os.path.isfile(tmp_path / "out" / "model.safetensors")


def test_max_eval_tokens_caps_the_scored_tokens_and_shows_progress(tmp_path, teacher_dir, capsys):
    train, valid = write_text(tmp_path / "train.txt"), write_text(tmp_path / "v.txt", lines=60, seed=1)
    flags = ["--train_file", train, "--validation_files", valid, "--student_layers", "0,3"]
    lm, args = job(tmp_path, teacher_dir, *flags, "--max_eval_tokens", "50", "--disable_tqdm", "false")
    saved = run(lm, args)
    captured = capsys.readouterr()
    # 50 // 15 = 3 blocks of 16 tokens, each predicting 15
    for role in ("teacher", "student_before_training", "student"):
        assert saved[role]["eval_tokens"] == {"v.txt": 45}
    assert "over 45 tokens in 3 blocks (capped by --max_eval_tokens)" in captured.out
    assert "perplexity of the distilled student on v.txt" in captured.err  # the progress bar
    # the reported perplexity is that of exactly those tokens: the first 3 blocks of the text
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    ids = torch.tensor(tokenizer(open(valid).read(), add_special_tokens=False)["input_ids"])
    assert len(ids) // 16 > 3  # the cap, not the text, limits the scoring
    blocks = ids[:48].view(3, 16)
    student = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        logits = student(input_ids=blocks).logits[:, :-1]  # (3, 15, V)
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), blocks[:, 1:].flatten()).item()
    # the job batches the blocks its own way: float32 rounding apart (tests/numerics.py), the same value
    scale, n = math.exp(nll) * cross_entropy_scale(logits), forward_chain(student.config, 16) + blocks.numel()
    assert_fp32_close(saved["student"]["perplexity"]["v.txt"], math.exp(nll), scale=scale, n=n, msg="perplexity")

    with pytest.raises(ValueError, match="--max_eval_tokens 10 is fewer than the 15 tokens one block"):
        run(*job(tmp_path, teacher_dir, *flags, "--max_eval_tokens", "10", "--overwrite_output_dir", "true"))
    lm, args = job(
        tmp_path, teacher_dir, *flags, "--overwrite_output_dir", "true"
    )  # the default scores every token, and --disable_tqdm true: no bar
    assert lm.max_eval_tokens is None
    results = run(lm, args)
    assert results["student"]["eval_tokens"]["v.txt"] == (len(ids) // 16) * 15
    assert "perplexity of the" not in capsys.readouterr().err


@pytest.mark.parametrize("merge", [False, True])
def test_lora_student_saved_as_adapter_or_merged(tmp_path, teacher_dir, merge):
    train = write_text(tmp_path / "train.txt")
    flags = ["--train_file", train, "--validation_files", train, "--use_peft", "true", "--lora_r", "4"]
    if merge:  # on a student built from teacher layers
        flags += ["--merge_lora", "true"]
    else:  # an adapter needs a base model of its own
        base = tmp_path / "base"
        tiny_llama(num_layers=2, seed=2, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(base)
        tiny_tokenizer().save_pretrained(base)
        flags += ["--student_model_name_or_path", str(base)]
    lm, args = job(tmp_path, teacher_dir, *flags)
    run(lm, args)
    files = os.listdir(tmp_path / "out")
    if merge:
        assert "model.safetensors" in files
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
        assert not any("lora" in n for n, _ in merged.named_parameters())
    else:
        assert "adapter_model.safetensors" in files and "adapter_config.json" in files


def test_prompt_completion_jsonl_with_on_policy_batches(tmp_path, teacher_dir):
    rng = random.Random(0)
    path = tmp_path / "data.jsonl"
    with open(path, "w") as f:
        for _ in range(16):
            words = [rng.choice(WORDS) for _ in range(8)]
            f.write(json.dumps({"prompt": " ".join(words[:4]), "completion": " ".join(words[4:])}) + "\n")
    lm, args = job(
        tmp_path, teacher_dir, "--train_file", str(path), "--lmbda", "0.5", "--seq_kd", "true",
        "--max_new_tokens", "4", "--validation_files", write_text(tmp_path / "v.txt", 40),
    )  # fmt: skip
    results = run(lm, args)
    assert results["train_examples"] == 16 and results["max_steps"] == 2


def test_data_free_distillation_from_teacher_samples(tmp_path, teacher_dir):
    lm, args = job(
        tmp_path, teacher_dir, "--data_free_samples", "8", "--validation_files", write_text(tmp_path / "v.txt", 40)
    )
    results = run(lm, args)
    assert results["train_examples"] == 8


def test_teacher_cache_is_built_once_then_trained_from(tmp_path, teacher_dir, capsys):
    teacher_dir = str(shutil.copytree(teacher_dir, tmp_path / "teacher"))  # its weights change below
    train = write_text(tmp_path / "train.txt")
    cache = str(tmp_path / "cache")
    flags = [
        "--train_file",
        train,
        "--validation_files",
        train,
        "--teacher_cache_dir",
        cache,
        "--teacher_cache_k",
        "4",
        "--overwrite_output_dir",  # the same output_dir three times
        "true",
    ]
    run(*job(tmp_path, teacher_dir, *flags))
    assert os.path.isfile(os.path.join(cache, CACHE_META_FILE))
    assert "caching the teacher" in capsys.readouterr().out
    run(*job(tmp_path, teacher_dir, *flags))
    assert "training from the teacher cache" in capsys.readouterr().out
    flags[1] = write_text(tmp_path / "other.txt", seed=3)  # other data, same cache folder: refused, not reused
    with pytest.raises(ValueError, match="built on other training data"):
        run(*job(tmp_path, teacher_dir, *flags))
    flags[1] = train  # the same data and teacher folder, but the teacher was trained on since: other weights
    tiny_llama(seed=2, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(teacher_dir)
    with pytest.raises(ValueError, match="built with other teacher weights than those of .*teacher"):
        run(*job(tmp_path, teacher_dir, *flags))


def test_a_finished_teacher_cache_trains_without_the_teachers_weights(tmp_path, teacher_dir, capsys):
    """With a finished --teacher_cache_dir, a separate student and --eval_teacher false, only the teacher's config and
    tokenizer are read: its weights may be gone (the student machine need not have them)."""
    teacher_dir = str(shutil.copytree(teacher_dir, tmp_path / "teacher"))  # its weights go below
    student_dir = str(tmp_path / "student")
    tiny_llama(num_layers=2, seed=3, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(student_dir)
    tiny_tokenizer().save_pretrained(student_dir)
    train, cache = write_text(tmp_path / "train.txt"), str(tmp_path / "cache")
    flags = ["--train_file", train, "--validation_files", train, "--teacher_cache_dir", cache,
             "--teacher_cache_k", "4", "--student_model_name_or_path", student_dir, "--eval_teacher", "false",
             "--overwrite_output_dir", "true"]  # fmt: skip
    run(*job(tmp_path, teacher_dir, *flags))  # builds the cache: the teacher is loaded for that
    assert "loading the teacher's weights to build the top-k cache" in capsys.readouterr().out
    os.remove(os.path.join(teacher_dir, "model.safetensors"))
    results = run(*job(tmp_path, teacher_dir, *flags))
    out = capsys.readouterr().out
    assert "training from the teacher cache" in out and "loading the teacher's weights" not in out
    assert "no weight files to check the cache against" in out
    assert results["max_steps"] == 2 and "teacher" not in results
    assert results["student"]["perplexity"] != results["student_before_training"]["perplexity"]  # it trained
    # scoring the teacher needs its weights: their absence is refused up front
    why = r"which this job needs to score its perplexities \(--eval_teacher false skips that\); pass the folder"
    with pytest.raises(ValueError, match=f"--teacher_model_name_or_path .* has no weights .*, {why}"):
        run(*job(tmp_path, teacher_dir, *flags[:-4], "--overwrite_output_dir", "true"))


def test_cli_lists_causal_lm_and_documents_its_flags(capsys):
    assert main([]) == 0
    assert "causal-lm" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["causal-lm", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--train_file",
        "--validation_files",
        "--kd_chunk_size",
        "--lmbda",
        "--teacher_cache_dir",
        "--use_peft",
    ):
        assert flag in out
    assert main(["causal-lm", "--output_dir", "x"]) == 2  # no teacher: a clear error, not a traceback


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "examples/causal_lm/configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_parses_and_says_how_to_run_it(path):
    text = path.read_text()
    assert text.startswith("#") and "hf-distill causal-lm" in text.split("\n\n")[0]
    cpu_only = [] if torch.cuda.is_available() or "bf16: true" not in text else ["--bf16", "false"]
    lm, args = parse_with_config([CausalLMArguments, DistillationConfig], ["--config", str(path), *cpu_only], "t")
    assert isinstance(args, DistillationConfig) and (lm.train_file or lm.dataset_name)


def test_a_kd_delay_is_parsed_with_the_next_token_weight_of_its_mode(tmp_path):
    """--kd_delay_steps needs a next-token loss: the job's default alpha_task 0 is refused with it, but ema and mutual,
    whose default is 0.5, parse (the mode is read before that default is known)."""
    from hf_distill.cli import parse_causal_lm

    out = ["--output_dir", str(tmp_path), "--kd_delay_steps", "5"]
    _, args = parse_causal_lm(["--distill_mode", "ema", "--student_model_name_or_path", "s", *out])
    assert (args.kd_delay_steps, args.alpha_task) == (5, 0.5)
    _, args = parse_causal_lm(["--distill_mode", "cotrain", "--alpha_task", "0.5", *out])
    assert (args.kd_delay_steps, args.alpha_task) == (5, 0.5)
    with pytest.raises(ValueError, match=r"^kd_delay_steps 5 with alpha_task 0\.0: .*set alpha_task > 0"):
        parse_causal_lm(["--distill_mode", "cotrain", *out])


def test_job_defaults_are_the_causal_lm_settings_and_flags_and_yaml_override_them(tmp_path):
    from hf_distill.cli import parse_causal_lm
    from hf_distill.recipes.causal_lm import JOB_DEFAULTS, loss_summary

    _, args = parse_causal_lm(["--output_dir", str(tmp_path)])
    for name, value in JOB_DEFAULTS.items():
        assert getattr(getattr(args, name), "value", getattr(args, name)) == value, name
    assert "1.0 x kl at T=1.0 + 0.0 x next-token + 1.0 x hidden cosine (init layer map)" in loss_summary(args)
    assert "lr 0.0002 constant_with_warmup, 10 warm-up steps" in loss_summary(args)
    # the Python API keeps DistillationConfig's own defaults
    assert DistillationConfig(output_dir=str(tmp_path)).temperature != JOB_DEFAULTS["temperature"]
    config = tmp_path / "c.yaml"
    config.write_text("temperature: 3.0\nalpha_hidden: 0.0\n")
    _, args = parse_causal_lm(["--config", str(config), "--learning_rate", "1e-5", "--output_dir", str(tmp_path)])
    assert (args.temperature, args.alpha_hidden, args.learning_rate) == (3.0, 0.0, 1e-5)
    assert args.alpha_logits == 1.0 and args.alpha_task == 0.0
    # a separate student has no teacher layers to match: no hidden-state term by default
    lm, args = parse_causal_lm(["--student_model_name_or_path", "s", "--output_dir", str(tmp_path)])
    assert lm.student_model_name_or_path == "s" and args.alpha_hidden == 0.0 and args.layer_map == "uniform"
    _, args = parse_causal_lm(["--student_model_name_or_path", "s", "--alpha_hidden", "2", "--output_dir", "o"])
    assert args.alpha_hidden == 2.0
    _, args = parse_causal_lm(["--teacher_cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path)])
    assert args.alpha_hidden == 0.0 and not args.live_teacher_needs(cached=True)
