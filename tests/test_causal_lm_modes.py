"""`hf-distill causal-lm --distill_mode ema | born_again | noisy_student | mutual | cotrain` end to end on tiny Llamas saved with a
tiny tokenizer: each mode's saved models load, results.json scores each of them, and what a mode cannot do is refused
in one line (exit code 2) before any model is loaded."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import WORDS, tiny_llama, tiny_tokenizer
from transformers import AutoModelForCausalLM

from hf_distill.cli import main

TEXT = "train.txt (held out)"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """``(teacher folder, student folder, training text)``: a 4-layer and a 2-layer Llama with the same tokenizer."""
    root = tmp_path_factory.mktemp("lm_modes")
    folders = []
    for name, layers, seed in (("teacher", 4, 1), ("student", 2, 2)):
        tiny_llama(num_layers=layers, seed=seed, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(
            root / name
        )
        tiny_tokenizer().save_pretrained(root / name)
        folders.append(str(root / name))
    rng = random.Random(0)
    with open(root / "train.txt", "w") as f:
        for _ in range(100):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n")
    return (*folders, str(root / "train.txt"))


def job(out, train, *flags) -> list[str]:
    return [
        "causal-lm", "--train_file", train, "--validation_split_percentage", "10", "--max_eval_blocks", "2",
        "--output_dir", str(out), "--block_size", "16", "--max_steps", "2", "--per_device_train_batch_size", "4",
        "--report_to", "none", "--disable_tqdm", "true", "--use_cpu", "true", "--save_strategy", "no", *flags,
    ]  # fmt: skip


def results(out) -> dict:
    with open(out / "results.json") as f:
        return json.load(f)


def ppl(entry: dict) -> float:
    return entry["perplexity"][TEXT]


def weights(folder) -> dict[str, torch.Tensor]:
    return dict(AutoModelForCausalLM.from_pretrained(folder).state_dict())


def differ(a: dict, b: dict) -> bool:
    return any(not torch.equal(a[k], b[k]) for k in a)


def test_ema_publishes_the_average_and_scores_it_and_the_raw_student(models, tmp_path):
    _, student, train = models
    out = tmp_path / "out"
    flags = ["--distill_mode", "ema", "--student_model_name_or_path", student, "--ema_decay", "0.5", "--save_ema"]
    assert main(job(out, train, *flags, "true")) == 0
    saved = results(out)
    assert saved["distill_mode"] == "ema" and saved["saved"] == "ema" and saved["ema_decay"] == 0.5
    assert saved["losses"]["alpha_task"] == 0.5  # the mode's default: the KD term alone would train nothing
    # the saved model is the average (results' teacher), the raw student is scored beside it
    assert ppl(saved["student"]) == ppl(saved["teacher"]) != ppl(saved["student_before_ema"])
    assert differ(weights(out), weights(student))
    assert json.load(open(out / "distillation_config.json"))["distill_mode"] == "ema"


def test_born_again_saves_and_scores_every_generation(models, tmp_path):
    teacher, _, train = models
    out = tmp_path / "out"
    flags = ["--distill_mode", "born_again", "--teacher_model_name_or_path", teacher, "--student_layers", "0,3"]
    assert main(job(out, train, *flags, "--generations", "2", "--ensemble_generations", "true")) == 0
    saved = results(out)
    gens = saved["generations"]
    assert [g["generation"] for g in gens] == [1, 2] and [g["folder"] for g in gens] == [
        "generation_1",
        "generation_2",
    ]
    assert len(gens[0]["teachers"]) == 1 and len(gens[1]["teachers"]) == 2  # the last: the teacher and generation 1
    first, second = weights(out / "generation_1"), weights(out / "generation_2")
    assert differ(first, second)
    assert not differ(second, weights(out))  # the last generation is the job's student
    assert ppl(saved["student"]) == ppl(gens[1]) and "teacher" in saved


def test_born_again_with_merged_lora_saves_every_generation_merged(models, tmp_path):
    """--use_peft --merge_lora on a student built from teacher layers: a generation saved as its adapter alone named
    the 4-layer teacher as its base, so generation_<g> loaded as the teacher plus an adapter, not the student."""
    teacher, _, train = models
    out = tmp_path / "out"
    flags = ["--distill_mode", "born_again", "--teacher_model_name_or_path", teacher, "--student_layers", "0,3"]
    assert main(job(out, train, *flags, "--generations", "2", "--use_peft", "true", "--merge_lora", "true")) == 0
    for g in (1, 2):
        folder = out / f"generation_{g}"
        assert not (folder / "adapter_config.json").exists() and (folder / "lora_adapter").is_dir()
        assert AutoModelForCausalLM.from_pretrained(folder).config.num_hidden_layers == 2
    assert not differ(weights(out / "generation_2"), weights(out))  # the last generation is the job's student


def test_noisy_student_trains_generations_with_dropout_on(models, tmp_path):
    teacher, _, train = models
    out = tmp_path / "out"
    flags = ["--distill_mode", "noisy_student", "--teacher_model_name_or_path", teacher, "--student_layers", "0,3"]
    assert main(job(out, train, *flags, "--generations", "2", "--student_dropout", "0.2")) == 0
    saved = results(out)
    assert saved["distill_mode"] == "noisy_student"
    gens = saved["generations"]
    assert [g["generation"] for g in gens] == [1, 2] and gens[1]["teachers"] == ["generation 1 student"]
    assert AutoModelForCausalLM.from_pretrained(out / "generation_2").config.attention_dropout == 0.2
    assert not differ(weights(out / "generation_2"), weights(out)) and ppl(saved["student"]) == ppl(gens[1])
    assert json.load(open(out / "distillation_config.json"))["distill_mode"] == "noisy_student"
    from hf_distill.publish import render_model_card

    card = render_model_card(str(out))  # no labelled examples in this job: the card says what it trained on
    assert "soft targets on its training text, with dropout on the student only" in card


def test_mutual_saves_every_peer_and_names_the_best(models, tmp_path):
    _, student, train = models
    out = tmp_path / "out"
    flags = ["--distill_mode", "mutual", "--student_model_name_or_path", student, "--num_peers", "3"]
    assert main(job(out, train, *flags, "--student_dropout", "0.1")) == 0
    saved = results(out)
    peers = saved["peers"]
    assert [p["folder"] for p in peers] == [".", "peer_1", "peer_2"]
    assert saved["best_peer"] == min(range(3), key=lambda i: ppl(peers[i]))
    loaded = [weights(out / p["folder"]) for p in peers]
    assert differ(loaded[0], loaded[1]) and differ(loaded[1], loaded[2])  # dropout made them differ
    assert ppl(peers[0]) == ppl(saved["student"]) and ppl(peers[1]) == ppl(saved["teacher"])


def test_cotrain_trains_the_teacher_beside_the_student_and_saves_it(models, tmp_path):
    teacher, _, train = models
    out = tmp_path / "out"
    flags = ["--distill_mode", "cotrain", "--teacher_model_name_or_path", teacher, "--student_layers", "0,3"]
    assert main(job(out, train, *flags, "--teacher_learning_rate", "1e-2")) == 0
    saved = results(out)
    assert differ(weights(out / "teacher"), weights(teacher))  # it was trained
    assert ppl(saved["teacher"]) != ppl(saved["teacher_before_training"])
    assert {"student", "student_before_training"} <= set(saved)


REFUSED = {
    "ema with a teacher": (
        ["--distill_mode", "ema", "--teacher_model_name_or_path", "{teacher}"],
        "--distill_mode ema takes no teacher (--teacher_model_name_or_path {teacher}): its teacher is the moving "
        "average of the student's own weights, which changes every step. Drop it, or use --distill_mode frozen.",
    ),
    "ema without a student": (
        ["--distill_mode", "ema"],
        "Set --student_model_name_or_path: with --distill_mode ema that model is trained and the moving average of "
        "the student's own weights, which changes every step teaches it (--student_layers keeps some of its layers).",
    ),
    "ema with a teacher cache": (
        ["--distill_mode", "ema", "--student_model_name_or_path", "{student}", "--teacher_cache_dir", "{tmp}/cache"],
        "--teacher_cache_dir {tmp}/cache caches a fixed teacher's log-probs, but with --distill_mode ema the teacher "
        "is the moving average of the student's own weights, which changes every step: drop --teacher_cache_dir.",
    ),
    "ema without the next-token loss": (
        ["--distill_mode", "ema", "--student_model_name_or_path", "{student}", "--alpha_task", "0"],
        "--alpha_task 0 with --distill_mode ema: the average starts as the student, so the KD term alone gives it no "
        "gradient and nothing trains; set --alpha_task > 0 (the job's default in this mode is 0.5).",
    ),
    "mutual with one peer": (
        ["--distill_mode", "mutual", "--student_model_name_or_path", "{student}", "--num_peers", "1"],
        "--num_peers 1: mutual learning needs at least 2 peers (the student and one more).",
    ),
    "mutual without dropout": (
        ["--distill_mode", "mutual", "--student_model_name_or_path", "{student}"],
        "--distill_mode mutual: {student} has no dropout, so its copies (the peers) would see the same batches and "
        "stay equal; set --student_dropout, e.g. 0.1.",
    ),
    "mutual with LoRA": (
        ["--distill_mode", "mutual", "--student_model_name_or_path", "{student}", "--use_peft", "true"],
        "--use_peft with --distill_mode mutual: the peers are trained whole, not as LoRA adapters; drop --use_peft.",
    ),
    "cotrain with a teacher cache": (
        ["--distill_mode", "cotrain", "--teacher_model_name_or_path", "{teacher}", "--teacher_cache_dir", "{tmp}/c"],
        "--teacher_cache_dir {tmp}/c caches one fixed teacher's log-probs, but with --distill_mode cotrain the teacher "
        "is trained in the same loop as the student and changes every step: drop --teacher_cache_dir.",
    ),
    "born_again with a teacher cache": (
        ["--distill_mode", "born_again", "--teacher_model_name_or_path", "{teacher}", "--teacher_cache_dir", "{tmp}/c"],
        "--teacher_cache_dir {tmp}/c caches one fixed teacher's log-probs, but with --distill_mode born_again each "
        "born_again generation has another teacher (the one before it): drop --teacher_cache_dir.",
    ),
    "born_again generations with the init layer map": (
        ["--distill_mode", "born_again", "--teacher_model_name_or_path", "{teacher}", "--generations", "2",
         "--layer_map", "init"],
        "--layer_map init pairs the student with the teacher blocks it was built from, but born_again generations "
        "after the first learn from a student of 2 blocks: set --layer_map uniform (the job's default with "
        "--generations > 1), or --alpha_hidden 0.",
    ),
    "born_again resumed": (
        ["--distill_mode", "born_again", "--teacher_model_name_or_path", "{teacher}", "--resume_from_checkpoint",
         "true"],
        "resume_from_checkpoint true: a born_again run does not resume (each generation is saved in "
        "output_dir/generation_<g> when it ends): start it afresh.",
    ),
    "noisy_student without dropout": (
        ["--distill_mode", "noisy_student", "--teacher_model_name_or_path", "{teacher}", "--student_layers", "0,3"],
        "The student's config (LlamaConfig) has no dropout, a noisy student's model noise: set --student_dropout > 0 "
        "(e.g. 0.1).",
    ),
    "noisy_student with dropout 0": (
        ["--distill_mode", "noisy_student", "--teacher_model_name_or_path", "{teacher}", "--student_dropout", "0"],
        "--student_dropout 0: a noisy student trains with dropout as its model noise; set --student_dropout > 0 "
        "(e.g. 0.1), or leave it unset for the model's own.",
    ),
    "noisy_student without soft targets": (
        ["--distill_mode", "noisy_student", "--teacher_model_name_or_path", "{teacher}", "--student_dropout", "0.1",
         "--alpha_logits", "0", "--alpha_task", "1"],
        "--alpha_logits 0.0: a noisy student learns the teacher's soft targets on unlabelled text; set "
        "--alpha_logits > 0.",
    ),
    "a teacher learning rate without cotrain": (
        ["--teacher_model_name_or_path", "{teacher}", "--teacher_learning_rate", "1e-3"],
        "--teacher_learning_rate 0.001 sets the learning rate of a teacher trained beside the student, but "
        "--distill_mode is frozen: set --distill_mode cotrain, or drop it.",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED)
def test_what_a_mode_cannot_do_is_one_line_before_any_model_is_loaded(case, models, tmp_path, capsys, monkeypatch):
    teacher, student, train = models

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the refusal")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", loaded)
    flags, message = REFUSED[case]
    fill = {"teacher": teacher, "student": student, "tmp": str(tmp_path)}
    capsys.readouterr()
    assert main(job(tmp_path / "out", train, *[f.format(**fill) for f in flags])) == 2
    assert capsys.readouterr().err == f"hf-distill causal-lm: error: {message.format(**fill)}\n"


def test_ema_needs_training_data_it_cannot_sample_from_a_teacher(models, tmp_path, capsys):
    _, student, _ = models
    argv = ["causal-lm", "--distill_mode", "ema", "--student_model_name_or_path", student, "--data_free_samples", "8",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "hf-distill causal-lm: error: No training data: with --distill_mode ema there is no teacher to sample it from "
        "(--data_free_samples); set --train_file or --dataset_name.\n"
    )


def test_init_layer_map_against_a_teacher_with_fewer_blocks_is_a_value_error():
    from hf_distill.mapping.layer_map import resolve_layer_pairs

    with pytest.raises(ValueError, match=r"built from, \[0, 3\], but this teacher has 2 blocks"):
        resolve_layer_pairs("init", 2, 2, [0, 3])  # a born-again generation's teacher: a student of 2 blocks
