"""Every command checks its inputs before it trains: a bad one is one line naming the value and the flag, exit code 2,
no traceback, and no training started (``--debug`` shows the traceback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import transformers
from conftest import WORDS, tiny_bert, tiny_llama, tiny_tokenizer, word_tokenizer
from transformers import BertConfig, BertForSequenceClassification, BertModel, TrainingArguments

from hf_distill.cli import main, parse_with_config, split_debug
from hf_distill.distillation_config import DistillationConfig
from hf_distill.models import build_student
from hf_distill.recipes.glue import GlueArguments, teacher_budget
from hf_distill.validation import clear_previous_run, looks_local, previous_run

ROOT = Path(__file__).resolve().parents[1]
SST2_ROWS = ["the good old house\t1", "a bad dog\t0", "the king is good\t1", "they saw a bad tree\t0"] * 4


class TrainingStarted(Exception):
    """Raised by the patched ``Trainer.train``: the job got past its checks."""


@pytest.fixture(autouse=True)
def no_training(monkeypatch):
    """``Trainer.train`` (the teacher's fine-tuning and every student's training) raises :class:`TrainingStarted`."""
    calls = []

    def train(self, *args, **kwargs):
        calls.append(self)
        raise TrainingStarted

    monkeypatch.setattr(transformers.Trainer, "train", train)
    return calls


def save_bert(folder, tokenizer=True, **kw):
    tiny_bert(num_layers=4, **kw).save_pretrained(folder)
    if tokenizer:
        word_tokenizer(WORDS[:94]).save_pretrained(folder)  # most of the model's 99 embedding rows
    return str(folder)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return save_bert(tmp_path_factory.mktemp("teacher"))


@pytest.fixture(scope="module")
def sst2(tmp_path_factory):
    folder = tmp_path_factory.mktemp("SST-2")
    for name in ("train.tsv", "dev.tsv"):
        (folder / name).write_text("sentence\tlabel\n" + "\n".join(SST2_ROWS) + "\n")
    return str(folder)


def glue(teacher, sst2, out, *flags):
    return [
        "glue", "--teacher_model_name_or_path", teacher, "--data_dir", sst2, "--output_dir", str(out),
        "--student_layers", "1,3", "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
        "--use_cpu", "true", "--disable_tqdm", "true", "--save_strategy", "no", *flags,
    ]  # fmt: skip


def refused(capsys, argv, *needles):
    """Run the CLI on ``argv``; it must exit 2 with one stderr line holding every needle, and no traceback."""
    capsys.readouterr()  # what the test's set-up printed
    code = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hf-distill {argv[0]}: error: ") and "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# ------------------------------------------------------------------------------------------------------ config files


def test_config_file_missing_not_yaml_or_not_a_mapping(capsys, tmp_path, teacher, sst2, no_training):
    missing = str(tmp_path / "nope.yaml")
    refused(capsys, ["glue", "--config", missing], "--config", missing, "does not exist")
    bad = tmp_path / "bad.yaml"
    bad.write_text("task_name: sst2\nstudent_layers: [1, 3\n")
    refused(capsys, ["glue", "--config", str(bad)], "--config", str(bad), "not valid YAML", "line 3")
    listed = tmp_path / "list.yaml"
    listed.write_text("- task_name\n- sst2\n")
    refused(capsys, ["causal-lm", "--config", str(listed)], str(listed), "holds a list, not a mapping")
    refused(capsys, ["glue", "--config", str(tmp_path)], f"--config {tmp_path} is a folder")
    assert not no_training


def test_config_file_that_cannot_be_read_is_one_line(capsys, tmp_path, monkeypatch):
    from hf_distill import validation

    locked = tmp_path / "locked.yaml"
    locked.write_text("max_steps: 1\n")

    def no_permission(path, *args, **kwargs):  # what open() raises on a file without read permission (not as root)
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(validation, "open", no_permission, raising=False)
    refused(capsys, ["glue", "--config", str(locked)], f"--config {locked} cannot be read (Permission denied)")


def test_yaml_paths_are_relative_to_the_yaml_file_and_output_dir_to_the_cwd(tmp_path, monkeypatch, teacher, sst2):
    cfg = tmp_path / "configs" / "deep"
    cfg.mkdir(parents=True)
    os.symlink(sst2, tmp_path / "SST-2")
    os.symlink(teacher, tmp_path / "teacher")
    (cfg / "job.yaml").write_text(
        "data_dir: ../../SST-2\nteacher_model_name_or_path: ../../teacher\noutput_dir: out/job\n"
        "student_model_name_or_path: org/name\ncache_dir: ../hub_cache\n"
    )
    (cfg / "lm.yaml").write_text("teacher_cache_dir: cache/topk\n")
    monkeypatch.chdir(tmp_path / "configs")  # anywhere but the YAML's folder
    glue_args, args = parse_with_config([GlueArguments, DistillationConfig], ["--config", "deep/job.yaml"], "t")
    assert os.path.samefile(glue_args.data_dir, sst2) and os.path.samefile(args.teacher_model_name_or_path, teacher)
    assert glue_args.cache_dir == "hub_cache"  # configs/hub_cache, seen from the working directory configs/
    from hf_distill.recipes.causal_lm import CausalLMArguments

    lm_types = [CausalLMArguments, DistillationConfig]
    lm, _ = parse_with_config(lm_types, ["--config", "deep/lm.yaml"], "t")
    assert lm.teacher_cache_dir == os.path.join("deep", "cache", "topk")
    lm, _ = parse_with_config(lm_types, ["--config", "deep/lm.yaml", "--teacher_cache_dir", "cache/topk"], "t")
    assert lm.teacher_cache_dir == "cache/topk"  # on the command line: relative to the working directory
    assert args.output_dir == "out/job" and glue_args.student_model_name_or_path == "org/name"  # CWD, Hub name
    # flags on the command line stay relative to the working directory
    glue_args, _ = parse_with_config(
        [GlueArguments, DistillationConfig], ["--config", "deep/job.yaml", "--data_dir", "here"], "t"
    )
    assert glue_args.data_dir == "here"


def test_shipped_configs_find_their_data_from_any_folder(tmp_path, monkeypatch):
    from hf_distill.recipes.causal_lm import CausalLMArguments

    monkeypatch.chdir(tmp_path)
    demo = ROOT / "examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml"
    glue_args, args = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(demo)], "t")
    assert Path(glue_args.data_dir) == ROOT.parent / "shared/data/glue/SST-2"
    assert args.output_dir == "out/glue-sst2-minilm_l3"  # where the user runs it
    assert args.teacher_model_name_or_path == "sentence-transformers/all-MiniLM-L6-v2"
    lm_config = ROOT / "examples/causal_lm/configs/kd-smollm2_15l_from_smollm2_135m-shakespeare.yaml"
    lm, _ = parse_with_config([CausalLMArguments, DistillationConfig], ["--config", str(lm_config)], "t")
    assert Path(lm.train_file) == ROOT.parent / "shared/data/text/tinyshakespeare/input.txt"
    assert [Path(p) for p in lm.validation_files] == [ROOT.parent / "shared/data/text/wikitext-2/valid.txt"]


# ------------------------------------------------------------------------------------------------ models and paths


def test_missing_teacher_or_student_path_is_refused_without_the_hub(capsys, tmp_path, teacher, sst2, no_training):
    out = tmp_path / "out"
    refused(
        capsys,
        glue("./no/such_teacher", sst2, out),
        "--teacher_model_name_or_path ./no/such_teacher does not exist",
        "Hub name such as org/name",
    )
    student = str(tmp_path / "students" / "small")
    argv = [a for a in glue(teacher, sst2, out) if a not in ("--student_layers", "1,3")]
    refused(capsys, [*argv, "--student_model_name_or_path", student], f"--student_model_name_or_path {student}")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    refused(capsys, glue(str(empty), sst2, out), str(empty), "has no config.json")
    assert not no_training and not out.exists()


def test_model_folder_without_weights_is_refused(capsys, tmp_path, teacher, sst2, lm_teacher, no_training):
    """A folder with config.json and tokenizer but no weights (a copy cut short, weights in another folder)."""
    out = tmp_path / "out"
    bare = tmp_path / "no_weights"
    BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
               intermediate_size=37).save_pretrained(bare)  # fmt: skip
    word_tokenizer(WORDS[:94]).save_pretrained(bare)
    refused(
        capsys, glue(str(bare), sst2, out), f"--teacher_model_name_or_path {bare} has no weights", "model.safetensors"
    )
    # the GLUE job loads with use_safetensors=True: a pytorch_model.bin alone is refused, with the fix
    torch.save(
        BertForSequenceClassification(BertConfig.from_pretrained(bare)).state_dict(), bare / "pytorch_model.bin"
    )
    refused(capsys, glue(str(bare), sst2, out), f"{bare} has no weights", "re-save it with save_pretrained")
    lm_bare = tmp_path / "lm_no_weights"
    lm_bare.mkdir()
    for name in os.listdir(lm_teacher):
        if not name.endswith(".safetensors"):
            (lm_bare / name).write_bytes((Path(lm_teacher) / name).read_bytes())
    text = tmp_path / "train.txt"
    text.write_text("the cat saw a dog\n" * 50)
    refused(capsys, causal_lm(str(lm_bare), out, "--train_file", str(text)), f"{lm_bare} has no weights")
    refused(
        capsys,
        causal_lm(lm_teacher, out, "--train_file", str(text), "--student_model_name_or_path", str(lm_bare)),
        f"--student_model_name_or_path {lm_bare} has no weights",
    )
    assert not no_training and not out.exists()


def test_causal_lm_student_that_cannot_read_the_teachers_tokens_is_refused_before_the_teacher_loads(
    capsys, tmp_path, monkeypatch, lm_teacher, no_training
):
    from hf_distill.recipes import causal_lm as job

    monkeypatch.setattr(job.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("teacher loaded"))
    out, text = tmp_path / "out", tmp_path / "train.txt"
    text.write_text("the cat saw a dog\n" * 50)
    other, uncased = tmp_path / "other_tokenizer", tmp_path / "uncased_tokenizer"
    for folder in (other, uncased):
        tiny_llama(num_layers=2).save_pretrained(folder)
    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS[:94]])}
    # 99 tokens, as many as the teacher's, other ids; cased, as the teacher's: the texts both read are the same
    transformers.BertTokenizerFast(vocab=vocab, do_lower_case=False).save_pretrained(other)
    word_tokenizer(WORDS[:94]).save_pretrained(uncased)  # lowercases and strips accents
    argv = causal_lm(lm_teacher, out, "--train_file", str(text), "--student_model_name_or_path")
    # another tokenizer is distilled across tokenizers (tests/test_cross_tokenizer_teacher.py); what that cannot do
    # yet is refused before the teacher loads
    refused(
        capsys,
        [*argv, str(other), "--alpha_hidden", "1"],
        f"--student_model_name_or_path {other} has another tokenizer than the teacher",
        "does not support --alpha_hidden 1.0 yet",
    )
    refused(
        capsys, [*argv, str(uncased)], "normalises text as nothing and the student's", "as Lowercase, StripAccents"
    )
    small = tmp_path / "small_vocab"
    student = tiny_llama(num_layers=2)
    student.resize_token_embeddings(50)
    student.save_pretrained(small)
    tiny_tokenizer().save_pretrained(small)
    refused(capsys, [*argv, str(small)], f"{small} has 50 embedding rows, fewer than the teacher's 99 tokens")
    untokenized = tmp_path / "no_tokenizer"
    tiny_llama(num_layers=2).save_pretrained(untokenized)
    refused(capsys, [*argv, str(untokenized)], f"--student_model_name_or_path {untokenized} has no tokenizer files")
    refused(
        capsys, [*argv, str(tmp_path / "nope")], f"--student_model_name_or_path {tmp_path / 'nope'} does not exist"
    )
    assert not no_training and not out.exists()


def test_causal_lm_builds_its_trainer_before_scoring_perplexities(
    capsys, tmp_path, monkeypatch, lm_teacher, no_training
):
    """What the trainer refuses (here attention-map KD between 2 and 4 heads) is refused before the minutes that
    scoring the teacher's and the student's perplexities take on a full validation file."""
    from hf_distill.recipes import causal_lm as job

    monkeypatch.setattr(job, "perplexity", lambda *a, **k: pytest.fail("scoring started"))
    text = tmp_path / "train.txt"
    text.write_text("the cat saw a dog\n" * 50)
    student = tmp_path / "two_heads"
    tiny_llama(num_layers=2, heads=2, kv_heads=1, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(
        student
    )
    tiny_tokenizer().save_pretrained(student)
    argv = causal_lm(lm_teacher, tmp_path / "out", "--train_file", str(text), "--validation_files", str(text),
                     "--student_model_name_or_path", str(student), "--alpha_attention", "1", "--attention_loss", "kl")  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 2  # after the teacher's and the student's loading bars
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(
        "hf-distill causal-lm: error: Attention KD on maps needs equal head counts (student 2, teacher 4)"
    )
    assert not no_training


def test_looks_local():
    for name in ("./t", "../t", "/abs/t", "~/t", "a/b/c", "model.safetensors", "teacher.json"):
        assert looks_local(name), name
    for name in ("org/name", "bert-base-uncased", "EleutherAI/gpt-neo-1.3B", "Qwen/Qwen2.5-0.5B-Instruct"):
        assert not looks_local(name), name


def test_teacher_folder_without_tokenizer_files_is_refused(capsys, tmp_path, sst2, no_training):
    bare = save_bert(tmp_path / "bare", tokenizer=False)  # transformers 5 would build a 5-token tokenizer
    refused(
        capsys,
        glue(bare, sst2, tmp_path / "out"),
        f"--teacher_model_name_or_path {bare} has no tokenizer files",
        "save the tokenizer in the folder",
    )
    word_tokenizer(["cat", "dog"]).save_pretrained(bare)  # a tokenizer far smaller than the embedding
    refused(
        capsys,
        glue(bare, sst2, tmp_path / "out"),
        f"--teacher_model_name_or_path {bare}: its tokenizer has 7 tokens but the model has 99 embedding rows",
        "save the tokenizer in the folder",
    )
    llama = tmp_path / "llama"
    tiny_llama().save_pretrained(llama)
    text = tmp_path / "train.txt"
    text.write_text("the cat saw a dog\n" * 50)
    argv = ["causal-lm", "--teacher_model_name_or_path", str(llama), "--train_file", str(text), "--output_dir",
            str(tmp_path / "lm")]  # fmt: skip
    refused(capsys, argv, f"--teacher_model_name_or_path {llama} has no tokenizer files")
    assert not no_training


# ---------------------------------------------------------------------------------------------------- student spec


def test_student_layers_bad_format_or_out_of_range(capsys, tmp_path, teacher, sst2, no_training):
    out = tmp_path / "out"
    refused(capsys, [*glue(teacher, sst2, out), "--student_layers", "a,b"], "--student_layers 'a,b'", "1,3,5")
    refused(
        capsys,
        [*glue(teacher, sst2, out), "--student_layers", "0,9"],
        "--student_layers 0,9",
        "layer 9 is out of range",
        "the teacher has 4 layers",
    )
    refused(capsys, [*glue(teacher, sst2, out), "--student_layers", "3,1"], "--student_layers 3,1", "increasing")
    assert not no_training


def test_layer_maps_the_models_cannot_match_are_refused_before_teacher_fine_tuning(
    capsys, tmp_path, teacher, sst2, lm_teacher, no_training
):
    out = tmp_path / "out"
    tuned = [*glue(teacher, sst2, out), "--finetune_teacher", "true", "--teacher_max_steps", "1"]  # student 1,3
    refused(
        capsys,
        [*tuned, "--alpha_hidden", "1", "--layer_map", "0:0,3:4"],
        "--layer_map 0:0,3:4: pair 3:4 names a layer the models lack",
        "the student has layers 0..2 and the teacher 0..4",
    )
    refused(capsys, [*tuned, "--alpha_hidden", "1", "--layer_map", "1:9"], "pair 1:9", "the teacher 0..4")
    refused(
        capsys,
        [*tuned, "--alpha_attention", "1", "--attention_layer_map", "0:0"],
        "--attention_layer_map 0:0: attention KD needs a pair of transformer blocks",
    )
    separate = [a for a in tuned if a not in ("--student_layers", "1,3")] + ["--student_model_name_or_path", teacher]
    refused(capsys, [*separate, "--alpha_hidden", "1", "--layer_map", "init"], "--layer_map init", "build_student")
    text = tmp_path / "train.txt"
    text.write_text("the cat saw a dog\n" * 50)
    refused(capsys, causal_lm(lm_teacher, out, "--train_file", str(text), "--layer_map", "1:7"), "--layer_map 1:7")
    assert not no_training and not out.exists()
    with pytest.raises(TrainingStarted):  # a map within range passes: the teacher's fine-tuning starts
        main([*tuned, "--alpha_hidden", "1", "--layer_map", "0:0,2:4"])


def test_build_student_with_a_string_of_layers_is_a_clear_error():
    with pytest.raises(ValueError, match=r"layers='0,2' is a string; pass a list .* layers=\[0, 2\]"):
        build_student(tiny_bert(), layers="0,2")
    with pytest.raises(ValueError, match=r"layers=\[0, 1.5\]: pass a list of 0-based teacher layers \(ints\)"):
        build_student(tiny_bert(), layers=[0, 1.5])


# ---------------------------------------------------------------------------------------------------- label heads


def test_label_shape_mismatches_are_refused(capsys, tmp_path, teacher, sst2, no_training):
    out = tmp_path / "out"
    stsb = tmp_path / "STS-B"
    stsb.mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (stsb / name).write_text("a\tb\tc\td\te\tf\tg\tsentence1\tsentence2\tscore\n")
    # a regression task with a (2-label) classification teacher
    refused(
        capsys,
        [*glue(teacher, str(stsb), out), "--task_name", "stsb"],
        f"--teacher_model_name_or_path {teacher} has a 2-label classification head",
        "stsb is a regression task",
    )
    # a 3-label teacher on SST-2, without --finetune_teacher and with it
    three = save_bert(tmp_path / "three", num_labels=3)
    refused(capsys, glue(three, sst2, out), "3-label classification head", "sst2 is a 2-label classification task")
    refused(capsys, [*glue(three, sst2, out), "--finetune_teacher", "true"], "3-label", "pass a base model")
    # a base model (no head) without --finetune_teacher: its head would start random
    base = tmp_path / "base"
    BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=37)).save_pretrained(base)  # fmt: skip
    word_tokenizer(WORDS[:94]).save_pretrained(base)
    refused(capsys, glue(str(base), sst2, out), "is a BertModel without a classification head", "--finetune_teacher")
    # a student that cannot read the teacher's token ids
    small = str(tmp_path / "small_vocab")
    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=37)).save_pretrained(small)  # fmt: skip
    argv = [a for a in glue(teacher, sst2, out) if a not in ("--student_layers", "1,3")]
    refused(capsys, [*argv, "--student_model_name_or_path", small], "has 50 embedding rows, fewer than the teacher's")
    # the task's label names in another order
    swapped = save_bert(tmp_path / "swapped", id2label={0: "positive", 1: "negative"})
    refused(capsys, glue(swapped, sst2, out), "orders its labels ['positive', 'negative']", "permuted")
    assert not no_training


# ------------------------------------------------------------------------------------------------------------- data


def test_wrong_data_dir_is_an_error_not_a_switch_to_the_hub(capsys, tmp_path, teacher, sst2, no_training):
    missing = str(tmp_path / "no_glue_here")
    refused(capsys, glue(teacher, missing, tmp_path / "out"), f"--data_dir {missing} does not exist", "train.tsv")
    half = tmp_path / "half"
    half.mkdir()
    (half / "train.tsv").write_text("sentence\tlabel\nthe dog\t1\n")
    refused(capsys, glue(teacher, str(half), tmp_path / "out"), f"--data_dir {half} has no dev.tsv")
    assert not no_training


@pytest.fixture(scope="module")
def lm_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lm_teacher")
    tiny_llama(pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def causal_lm(teacher, out, *flags):
    return ["causal-lm", "--teacher_model_name_or_path", teacher, "--output_dir", str(out), "--block_size", "8",
            "--max_steps", "1", "--report_to", "none", "--use_cpu", "true", *flags]  # fmt: skip


def test_dataset_name_that_cannot_be_loaded_is_one_line_before_the_teacher_loads(
    capsys, tmp_path, monkeypatch, lm_teacher, no_training
):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    from hf_distill.recipes import causal_lm as job

    monkeypatch.setattr(job.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: pytest.fail("teacher loaded"))
    asked = []

    def not_on_the_hub(name, *args, **kwargs):
        asked.append(name)
        raise DatasetNotFoundError(f"Dataset '{name}' doesn't exist on the Hub or cannot be accessed.")

    monkeypatch.setattr(datasets, "load_dataset", not_on_the_hub)
    out = tmp_path / "out"
    typo = str(tmp_path / "data" / "wikitxt")
    refused(capsys, causal_lm(lm_teacher, out, "--dataset_name", typo), f"--dataset_name {typo} does not exist")
    text = tmp_path / "train.txt"
    text.write_text("the cat saw a dog\n" * 50)
    refused(capsys, causal_lm(lm_teacher, out, "--dataset_name", str(text)), "is a file; pass it with --train_file")
    assert asked == []  # a name that looks local never reaches the Hub
    refused(
        capsys,
        causal_lm(lm_teacher, out, "--dataset_name", "org/wikitxt"),
        "--dataset_name org/wikitxt: cannot load its 'train' split (Dataset 'org/wikitxt' doesn't exist on the Hub",
        "check the name",
    )
    assert asked == ["org/wikitxt"] and not no_training


def test_empty_blank_or_missing_training_files_are_refused(capsys, tmp_path, lm_teacher, no_training):
    out = tmp_path / "out"
    for name, content in (("empty.txt", ""), ("blank.txt", "\n  \n\t\n"), ("blank.jsonl", "\n\n")):
        (tmp_path / name).write_text(content)
        path = str(tmp_path / name)
        refused(capsys, causal_lm(lm_teacher, out, "--train_file", path), f"--train_file {path} is empty or blank")
    missing = str(tmp_path / "nope.txt")
    refused(capsys, causal_lm(lm_teacher, out, "--train_file", missing), f"--train_file {missing} does not exist")
    for name in ("train.csv", "train"):  # a kind the job does not read: refused before the teacher is loaded
        (tmp_path / name).write_text("text\nthe cat saw a dog\n")
        path = str(tmp_path / name)
        refused(capsys, causal_lm(lm_teacher, out, "--train_file", path), f"--train_file {path}: the causal-LM job does not read",
                "only .txt, .json, .jsonl")  # fmt: skip
    good = tmp_path / "good.txt"
    good.write_text("the cat saw a dog\n" * 50)
    refused(
        capsys,
        causal_lm(lm_teacher, out, "--train_file", str(good), "--validation_files", missing),
        f"--validation_files {missing} does not exist",
    )
    refused(
        capsys,
        causal_lm(lm_teacher, out, "--train_file", str(good), "--student_layers", "0,7"),
        "--student_layers 0,7",
        "the teacher has 4 layers",
    )
    assert not no_training and not out.exists()


# ---------------------------------------------------------------------------------------------- budget and output


def test_meaningless_step_budgets_are_refused(capsys, tmp_path, teacher, sst2, lm_teacher, no_training):
    out = tmp_path / "out"
    for steps in ("-5", "0"):
        refused(capsys, [*glue(teacher, sst2, out), "--max_steps", steps], f"--max_steps {steps}", "-1 (the default)")
    refused(capsys, [*glue(teacher, sst2, out), "--max_steps", "abc"], "--max_steps", "'abc'")  # argparse: one line
    refused(
        capsys,
        [*glue(teacher, sst2, out), "--finetune_teacher", "true", "--teacher_max_steps", "-3"],
        "--teacher_max_steps -3",
    )
    refused(
        capsys,
        [*glue(teacher, sst2, out), "--finetune_teacher", "true", "--teacher_num_train_epochs", "0"],
        "--teacher_num_train_epochs 0",
    )
    refused(capsys, causal_lm(lm_teacher, out, "--data_free_samples", "4", "--max_steps", "-2"), "--max_steps -2")
    refused(capsys, ["quickstart", "--max_steps", "-1", "--output_dir", str(out)], "--max_steps -1")
    assert not no_training


def test_teacher_fine_tuning_says_how_many_steps_it_takes():
    targs = TrainingArguments(output_dir="unused", per_device_train_batch_size=32, use_cpu=True, report_to="none")
    line = teacher_budget(GlueArguments(finetune_teacher=True), targs, 67_349)
    assert "67349 examples, 2105 steps" in line and "--teacher_max_steps" in line
    assert "500 steps (--teacher_max_steps)" in teacher_budget(GlueArguments(teacher_max_steps=500), targs, 67_349)


def test_finetune_teacher_obeys_teacher_max_steps(capsys, tmp_path, teacher, sst2, no_training):
    with pytest.raises(TrainingStarted):
        main([*glue(teacher, sst2, tmp_path / "out"), "--finetune_teacher", "true", "--teacher_max_steps", "3"])
    assert no_training[0].args.max_steps == 3  # the teacher's Trainer
    assert "16 examples, 3 steps (--teacher_max_steps)" in capsys.readouterr().out


def test_output_dir_holding_a_run_is_refused_unless_overwritten(capsys, tmp_path, teacher, sst2, no_training):
    out = tmp_path / "out"
    (out / "teacher").mkdir(parents=True)
    (out / "student_no_kd").mkdir()
    (out / "results.json").write_text("{}")
    (out / "model.safetensors").write_bytes(b"x")
    (out / "notes.txt").write_text("mine")
    refused(capsys, glue(teacher, sst2, out), f"--output_dir {out} already holds a run", "--overwrite_output_dir true")
    refused(capsys, ["quickstart", "--output_dir", str(out)], "already holds a run")
    refused(
        capsys,
        [*glue(teacher, sst2, out), "--resume_from_checkpoint", str(tmp_path / "checkpoint-9")],
        "--resume_from_checkpoint",
        "does not exist",
    )
    assert not no_training and previous_run(str(out)) == [
        "results.json", "model.safetensors", "teacher/", "student_no_kd/"
    ]  # fmt: skip
    with pytest.raises(TrainingStarted):  # overwriting clears the earlier run, then trains
        main([*glue(teacher, sst2, out), "--overwrite_output_dir", "true"])
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_overwrite_output_dir_never_deletes_the_jobs_inputs(capsys, tmp_path, teacher, sst2, lm_teacher, no_training):
    """An output_dir that is, or holds, the teacher, the student, the data or the teacher cache is refused with
    --overwrite_output_dir, before anything is deleted: clearing the earlier run would delete weights, config and
    tokenizer files, or teacher/."""
    import shutil

    own = Path(shutil.copytree(teacher, tmp_path / "bert"))
    before = sorted(os.listdir(own))
    overwrite = ("--overwrite_output_dir", "true")
    refused(capsys, [*glue(str(own), sst2, own), *overwrite],
            f"--output_dir {own} is also --teacher_model_name_or_path {own}, which --overwrite_output_dir would delete")  # fmt: skip
    refused(capsys, [*glue(teacher, sst2, sst2), *overwrite], f"--output_dir {sst2} is also --data_dir {sst2}")
    run = tmp_path / "run"  # a teacher fine-tuned by an earlier run, reused as the teacher of the next one
    shutil.copytree(teacher, run / "teacher")
    refused(capsys, [*glue(str(run / "teacher"), sst2, run), *overwrite],
            f"--output_dir {run} holds --teacher_model_name_or_path {run / 'teacher'}", "another --output_dir")  # fmt: skip
    student = [a for a in glue(teacher, sst2, own) if a not in ("--student_layers", "1,3")]
    refused(
        capsys,
        [*student, "--student_model_name_or_path", str(own), *overwrite],
        "is also --student_model_name_or_path",
    )
    compare = ["compare", "--teacher_model_name_or_path", teacher, "--student_model_name_or_path", str(own),
               "--data_dir", sst2, "--output_dir", str(own), *overwrite]  # fmt: skip
    refused(capsys, compare, f"--output_dir {own} is also --student_model_name_or_path {own}")
    lm_own = Path(shutil.copytree(lm_teacher, tmp_path / "llama"))
    text = lm_own / "train.txt"
    text.write_text("the cat saw a dog\n" * 50)
    refused(
        capsys,
        [*causal_lm(str(lm_own), lm_own, "--train_file", str(text)), *overwrite],
        "is also --teacher_model_name_or_path",
    )
    refused(
        capsys, [*causal_lm(lm_teacher, lm_own, "--train_file", str(text)), *overwrite], f"holds --train_file {text}"
    )
    cache = tmp_path / "out" / "cache"
    cache.mkdir(parents=True)
    refused(capsys, [*causal_lm(lm_teacher, tmp_path / "out", "--train_file", str(text), "--teacher_cache_dir", str(cache)),
                     *overwrite], f"holds --teacher_cache_dir {cache}")  # fmt: skip
    assert sorted(os.listdir(own)) == before and "model.safetensors" in os.listdir(run / "teacher")
    assert "model.safetensors" in os.listdir(lm_own) and not no_training


def test_clear_previous_run_leaves_other_files(tmp_path):
    for name in ("checkpoint-5/", "eval/", "lora_adapter/", "config.json", "tokenizer.json", "report.png", "x.csv"):
        path = tmp_path / name.rstrip("/")
        path.mkdir() if name.endswith("/") else path.write_text("x")
    removed = clear_previous_run(str(tmp_path))
    assert sorted(removed) == ["checkpoint-5", "config.json", "eval", "lora_adapter", "report.png", "tokenizer.json"]
    assert os.listdir(tmp_path) == ["x.csv"]


def test_glue_without_output_dir_says_where_it_writes(capsys, tmp_path, monkeypatch, teacher, sst2):
    monkeypatch.chdir(tmp_path)
    argv = [a for a in glue(teacher, sst2, "x") if a not in ("--output_dir", "x")]
    with pytest.raises(TrainingStarted):
        main(argv)
    out = capsys.readouterr().out
    assert f"no --output_dir given: writing to {tmp_path / 'trainer_output'}" in out and "--output_dir" in out


def test_compare_checks_its_models_and_output(capsys, tmp_path, teacher, sst2):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "results.json").write_text(json.dumps({}))
    base = ["compare", "--teacher_model_name_or_path", teacher, "--data_dir", sst2]
    missing = str(tmp_path / "gone" / "student")
    refused(capsys, [*base, "--student_model_name_or_path", missing, "--output_dir", str(tmp_path / "o")], missing)
    refused(capsys, [*base, "--student_model_name_or_path", teacher, "--output_dir", str(out)], "already holds a run")


# ----------------------------------------------------------------------------------------------------------- debug


def test_debug_shows_the_traceback(tmp_path, teacher, sst2):
    argv = glue("./no/such_teacher", sst2, tmp_path / "out")
    with pytest.raises(ValueError, match="does not exist"):
        main(["--debug", *argv])
    with pytest.raises(ValueError, match="does not exist"):
        main([*argv, "--debug"])
    # `--debug VALUE` after the command is TrainingArguments' own flag
    assert split_debug(["glue", "--debug", "underflow_overflow"]) == (False, ["glue", "--debug", "underflow_overflow"])
    assert split_debug(["--debug", "glue", "--max_steps", "1"]) == (True, ["glue", "--max_steps", "1"])
    assert split_debug(["glue", "--debug", "--max_steps", "1"]) == (True, ["glue", "--max_steps", "1"])


def test_hub_failures_are_one_line_and_local_paths_never_reach_the_hub(capsys, tmp_path, monkeypatch, teacher, sst2):
    import datasets

    asked = []

    def unreachable(name, *args, **kwargs):
        asked.append(str(name))
        raise ConnectionError("Couldn't reach 'huggingface.co' (offline)")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", unreachable)
    out = tmp_path / "out"
    refused(capsys, glue("org/teacher", sst2, out), "--teacher_model_name_or_path org/teacher", "Couldn't reach")
    refused(capsys, glue("../org/teacher", sst2, out), "../org/teacher does not exist")
    assert asked == ["org/teacher"]  # a name that looks local is never tried on the Hub
    monkeypatch.undo()
    monkeypatch.setattr(transformers.Trainer, "train", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    argv = [a for a in glue(teacher, sst2, out) if a not in ("--data_dir", sst2)]
    refused(capsys, argv, "Cannot load sst2 from the Hub", "Couldn't reach", "pass --data_dir")


def test_column_maps_are_refused_by_the_jobs_in_one_line(capsys, tmp_path, teacher, sst2, lm_teacher, no_training):
    """The jobs tokenize their own data: a map cannot name its columns (a map for the API, or bad JSON)."""
    out = tmp_path / "out"
    mapped = '{"input_ids": "teacher_input_ids"}'
    refused(capsys, [*glue(teacher, sst2, out), "--teacher_columns", mapped], "--teacher_columns", "Python API")
    refused(
        capsys,
        causal_lm(lm_teacher, out, "--data_free_samples", "4", "--student_columns", mapped),
        "--student_columns",
    )
    refused(
        capsys, [*glue(teacher, sst2, out), "--teacher_columns", "input_ids"], "teacher_columns must be a non-empty"
    )
    assert not no_training and not out.exists()
