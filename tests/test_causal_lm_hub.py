"""Publishing a causal-LM student: the model card rendered from the causal-LM job's results.json (perplexities per
evaluation text, no GLUE scores), and a push through the local Hub (tests/hub_server.py) loaded back with
AutoModelForCausalLM."""

from __future__ import annotations

import json
import random
import shutil

import pytest
import torch
from conftest import WORDS, tiny_llama, tiny_tokenizer
from huggingface_hub import ModelCard
from numerics import assert_fp32_close, forward_chain
from test_hub import TOKEN, hub  # noqa: F401 (hub is a fixture)
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.cli import main, parse_with_config
from hf_distill.distillation_config import DistillationConfig
from hf_distill.publish import render_model_card, student_files
from hf_distill.recipes.causal_lm import CausalLMArguments
from hf_distill.recipes.causal_lm_job import run

REPO_ID = "tester/tiny-llama-student"


def write_text(path, lines, seed):
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(lines)))
    return str(path)


def job(root, out: str, *flags):
    """The causal-LM job's arguments for 2 steps on a tiny Llama teacher saved (once) in ``root/teacher``."""
    teacher = root / "teacher"
    if not teacher.exists():
        tiny_llama(seed=1, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(teacher)
        tiny_tokenizer().save_pretrained(teacher)
    argv = [
        "--teacher_model_name_or_path", str(teacher), "--output_dir", str(root / out), "--block_size", "16",
        "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none", "--disable_tqdm", "true",
        "--use_cpu", "true", "--kd_chunk_size", "8", "--save_strategy", "no", *flags,
    ]  # fmt: skip
    return parse_with_config([CausalLMArguments, DistillationConfig], argv, "test")


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """The causal-LM job, 2 steps on a tiny Llama: a student keeping teacher layers 0 and 3, scored on valid.txt and
    on the held-out end of input.txt; returns its output folder."""
    root = tmp_path_factory.mktemp("lm_run")
    args = job(
        root, "out", "--student_layers", "0,3", "--train_file", write_text(root / "input.txt", 200, seed=0),
        "--validation_split_percentage", "10", "--validation_files", write_text(root / "valid.txt", 60, seed=1),
    )  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run fastest on one thread, and far faster on a busy machine
    try:
        run(*args)
    finally:
        torch.set_num_threads(threads)
    return root / "out"


@pytest.fixture
def student_dir(lm_run, tmp_path):
    """A private copy of the run's output folder."""
    return shutil.copytree(lm_run, tmp_path / "lm")


def results_of(folder) -> dict:
    return json.loads((folder / "results.json").read_text())


def table_row(label: str, entry: dict, texts: list[str]) -> str:
    """The card's table row for one model, written out independently of the card code."""
    n = entry["num_parameters"]
    cells = [f"{entry['perplexity'][t]:.2f}" for t in texts] + [f"{n / 1e3:.1f}k ({n:,})"]
    return f"| {label} | {' | '.join(cells)} |"


def test_card_reports_perplexities(student_dir):
    results = results_of(student_dir)
    texts = ["valid.txt", "input.txt (held out)"]
    assert list(results["student"]["perplexity"]) == texts  # the run's evaluation texts, in the table's order
    card = ModelCard(render_model_card(str(student_dir), REPO_ID))
    data = card.data
    assert data.pipeline_tag == "text-generation" and data.model_name == "tiny-llama-student"
    assert {"distillation", "hf-distill", "text-generation"} <= set(data.tags)
    assert data.datasets is None  # local text files are no Hub datasets
    got = {(r.dataset_name, r.metric_type, r.metric_value, r.task_type) for r in data.eval_results}
    expected = {(t, "perplexity", round(results["student"]["perplexity"][t], 4), "text-generation") for t in texts}
    assert got == expected
    model_index = data.to_dict()["model-index"][0]["results"]
    assert [entry["dataset"]["name"] for entry in model_index] == texts
    body = card.text
    assert "| model | valid.txt | input.txt (held out) | parameters |" in body
    assert table_row("teacher", results["teacher"], texts) in body
    assert table_row("student before training", results["student_before_training"], texts) in body
    assert table_row("student (distilled)", results["student"], texts) in body
    share = results["student"]["num_parameters"] / results["teacher"]["num_parameters"] * 100
    ppl = {role: f"{results[role]['perplexity']['valid.txt']:.2f}" for role in ("teacher", "student")}
    assert (
        f"It keeps a perplexity of {ppl['student']} on valid.txt against the teacher's {ppl['teacher']}, "
        f"with {share:.0f} % of the teacher's parameters." in body
    )
    assert "2 optimizer steps" in body and "not evaluated" not in body
    # the distillation section reads distillation_config.json as for GLUE students
    assert "logit KD: forward KL" in body and "teacher layers 0, 3 (0-based)" in body
    assert f'AutoModelForCausalLM.from_pretrained("{REPO_ID}")' in body
    assert "accuracy" not in body and "latency" not in body


def test_card_without_teacher_scores_or_distillation_config(student_dir):
    """`--eval_teacher false` leaves the teacher out of results.json; the card says so instead of comparing."""
    results = results_of(student_dir)
    del results["teacher"]
    (student_dir / "results.json").write_text(json.dumps(results))
    (student_dir / "distillation_config.json").unlink()
    card = ModelCard(render_model_card(str(student_dir), REPO_ID))
    assert card.data.pipeline_tag == "text-generation"  # known from results.json alone
    assert len(card.data.eval_results) == 2
    body = card.text
    assert "| teacher |" not in body and "| student before training |" in body
    student, before = (f"{results[r]['perplexity']['valid.txt']:.2f}" for r in ("student", "student_before_training"))
    assert f"It reaches a perplexity of {student} on valid.txt, from {before} before distillation." in body
    assert "The teacher was not evaluated" in body
    assert "AutoModelForCausalLM" in body and "no `distillation_config.json`" in body


def test_cli_push_then_from_pretrained_round_trip(student_dir, hub, tmp_path, capsys):  # noqa: F811
    assert main(["push", str(student_dir), "--repo_id", REPO_ID]) == 0
    assert "pushed" in capsys.readouterr().out
    files = hub.files(REPO_ID)
    assert set(files) == {*student_files(str(student_dir)), "README.md", ".gitattributes"}
    assert "training_args.bin" not in files and "results.json" in files
    text = files["README.md"].decode()
    assert text == render_model_card(str(student_dir), REPO_ID)
    card = ModelCard(text)
    card.validate()  # the server's validate-yaml route
    assert [r.metric_type for r in card.data.eval_results] == ["perplexity", "perplexity"]
    assert TOKEN.encode() not in b"".join(files.values())

    cache = tmp_path / "download"
    model = AutoModelForCausalLM.from_pretrained(REPO_ID, cache_dir=cache).eval()
    local = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    assert model.config.num_hidden_layers == 2
    tokenizer = AutoTokenizer.from_pretrained(REPO_ID, cache_dir=cache)
    inputs = tokenizer("the king said to the queen", return_tensors="pt")
    assert (
        inputs["input_ids"].tolist()
        == AutoTokenizer.from_pretrained(student_dir)("the king said to the queen", return_tensors="pt")[
            "input_ids"
        ].tolist()
    )
    with torch.no_grad():  # the same weights, loaded twice
        n = forward_chain(local.config, inputs["input_ids"].shape[1])
        assert_fp32_close(model(**inputs).logits, local(**inputs).logits, n=n)
    assert hub.unknown == []  # every request the client made is one the server implements


def lora_job(root, *flags):
    train = write_text(root / "input.txt", 60, seed=0)
    return job(
        root, "lora", "--eval_teacher", "false", "--train_file", train, "--use_peft", "true", "--lora_r", "4", *flags
    )


def test_lora_adapter_on_a_hub_base_is_pushed_and_loads_with_peft(hub, tmp_path):  # noqa: F811
    """A LoRA student saved as an adapter on a base model from the Hub: the adapter names the base by its Hub id,
    the card loads it with AutoPeftModelForCausalLM, and the pushed adapter reproduces the local one."""
    from huggingface_hub import HfApi
    from peft import AutoPeftModelForCausalLM

    base = tmp_path / "base"
    tiny_llama(num_layers=2, seed=2, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    HfApi().create_repo("tester/tiny-base")
    HfApi().upload_folder(repo_id="tester/tiny-base", folder_path=str(base))
    run(*lora_job(tmp_path, "--student_model_name_or_path", "tester/tiny-base"))
    folder = tmp_path / "lora"
    adapter = json.loads((folder / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "tester/tiny-base"
    assert "config.json" not in {p.name for p in folder.iterdir()}

    assert main(["push", str(folder), "--repo_id", "tester/tiny-lora"]) == 0
    files = hub.files("tester/tiny-lora")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    card = ModelCard(files["README.md"].decode())
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "text-generation"
    assert 'AutoPeftModelForCausalLM.from_pretrained("tester/tiny-lora")' in card.text
    assert "LoRA adapter (peft) on `tester/tiny-base`" in card.text

    pushed = AutoPeftModelForCausalLM.from_pretrained("tester/tiny-lora", cache_dir=tmp_path / "dl").eval()
    local = AutoPeftModelForCausalLM.from_pretrained(str(folder)).eval()
    ids = torch.tensor([[1, 5, 9, 13, 7]])
    with torch.no_grad():  # the same weights, loaded twice
        n = forward_chain(local.get_base_model().config, ids.shape[1])
        assert_fp32_close(pushed(input_ids=ids).logits, local(input_ids=ids).logits, n=n)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in pushed.named_parameters())  # the trained adapter
    assert hub.unknown == []


def test_adapter_without_a_hub_base_is_refused(tmp_path):
    """An adapter on a student built from teacher layers would name the (deeper) teacher as its base: the job
    refuses to save it unmerged, and push refuses an adapter whose base is no Hub id."""
    with pytest.raises(ValueError, match="--merge_lora true"):
        run(*lora_job(tmp_path, "--student_layers", "0,3"))
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path)}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    from hf_distill.publish import check_student_folder

    with pytest.raises(ValueError, match="not a Hub repository"):
        check_student_folder(str(folder))
