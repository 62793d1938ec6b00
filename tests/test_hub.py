"""Publishing a student: which files go up, the model card, and pushes with the real huggingface_hub client against a
Hub-compatible server on 127.0.0.1 (tests/hub_server.py): round trip through from_pretrained, bad tokens, a dropped
connection, unfinished folders, the token never leaking, Trainer.push_to_hub and the CLI."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import classification_dataset, sst2_job_argv, tiny_bert, word_tokenizer
from hub_server import HubServer
from huggingface_hub import ModelCard, constants
from numerics import assert_fp32_close, forward_chain
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_distill import DISTILLATION_CONFIG_FILE, DistillationConfig, DistillationTrainer
from hf_distill.cli import main
from hf_distill.publish import push_student, render_model_card, student_files, write_model_card
from hf_distill.report import count_parameters
from hf_distill.version import __version__

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "hf_TestTokenNeverPublish7f3a9c"  # the server's only valid token; must never appear in output or uploads
TEACHER_ID = "tester/tiny-teacher"
STUDENT_FILES = {
    "README.md",
    "config.json",
    "distillation_config.json",
    "model.safetensors",
    "report.png",
    "results.json",
    "tokenizer.json",
    "tokenizer_config.json",
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step run: student (narrower than the teacher, so projection adapters exist), teacher/, checkpoints,
    training_args.bin, results.json and report.png, as a GLUE run leaves them."""
    root = tmp_path_factory.mktemp("run")
    tokenizer = word_tokenizer([f"w{i}" for i in range(94)])
    teacher, student = tiny_bert(num_layers=4, seed=0), tiny_bert(num_layers=2, hidden=16, seed=1)
    out = root / "out"
    args = DistillationConfig(
        output_dir=str(out),
        teacher_model_name_or_path=TEACHER_ID,
        hub_model_id="student-from-trainer",
        alpha_hidden=1.0,
        temperature=3.0,
        max_steps=2,
        save_steps=1,
        per_device_train_batch_size=8,
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=classification_dataset(n=16),
        processing_class=tokenizer,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run fastest on one thread, and far faster on a busy machine
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    trainer.save_model()
    teacher.save_pretrained(out / "teacher")
    # results.json as report.build_results writes it (the measurements themselves are tested in test_report.py)
    sizes = {
        "teacher": {
            "num_parameters": count_parameters(teacher),
            "size_mb": 0.14,
            "latency_ms": 2.0,
            "throughput": 2000.0,
        },
        "student": {
            "num_parameters": count_parameters(student),
            "size_mb": 0.05,
            "latency_ms": 0.8,
            "throughput": 5000.0,
        },
    }
    results = {
        "task": "sst2",
        "metric": "accuracy",
        "teacher": {"accuracy": 0.75, **sizes["teacher"]},
        "student": {"accuracy": 0.7, **sizes["student"]},
        "retention": 0.7 / 0.75,
        "speedup": 2.5,
        "speed": {"batch_size": 4, "seq_len": 16},
        "train_examples": 16,
        "max_steps": 2,
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "report.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    return trainer, out


@pytest.fixture
def student_dir(trained, tmp_path):
    """A private copy of the run's output folder."""
    return shutil.copytree(trained[1], tmp_path / "sst2")


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A Hub on 127.0.0.1; HF_ENDPOINT/HF_TOKEN point at it and the cache is fresh. huggingface_hub reads the
    environment once, at import, so its constants are patched too (as its own tests do)."""
    server = HubServer(token=TOKEN).start()
    home = tmp_path / "hf_home"
    env = {
        "HF_ENDPOINT": server.url,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(home),
        "HF_HUB_OFFLINE": "0",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": "127.0.0.1",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    patched = {
        "ENDPOINT": server.url,
        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for key, value in patched.items():
        monkeypatch.setattr(constants, key, value)
    # the module-level HfApi behind huggingface_hub.file_exists & co. (used by peft) took its endpoint at import
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", server.url)
    # transformers keeps one HfApi (transformers.utils.hub.hf_api) made with the endpoint of its first use: a stale
    # one would call the server of an earlier test and retry for minutes
    import transformers.utils.hub

    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    huggingface_hub.close_session()  # a fresh HTTP client, built from this environment
    yield server
    server.stop()


def tree_hash(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(folder).rglob("*"))
        if p.is_file()
    }


def student_logits(model, seed=0):
    ids = torch.randint(1, 99, (3, 10), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


# ---- what goes up, and the card (no server) ----


def test_only_the_student_is_selected(student_dir):
    names = set(os.listdir(student_dir))
    assert {"teacher", "checkpoint-1", "training_args.bin", "distillation_adapters.safetensors"} <= names
    assert set(student_files(student_dir)) == STUDENT_FILES - {"README.md"}
    with_teacher = set(student_files(student_dir, include_teacher=True)) - set(student_files(student_dir))
    assert with_teacher == {"teacher/config.json", "teacher/model.safetensors"}


def test_model_card_metadata_and_body(student_dir):
    text = render_model_card(str(student_dir), "tester/minilm-sst2")
    card = ModelCard(text)
    data = card.data
    assert data.base_model == TEACHER_ID
    assert {"distillation", "hf-distill", "sst2"} <= set(data.tags)
    assert data.datasets == ["nyu-mll/glue"] and data.pipeline_tag == "text-classification"
    assert data.model_name == "minilm-sst2"
    (result,) = data.eval_results
    assert (result.metric_type, result.metric_value) == ("accuracy", 0.7)
    assert (result.dataset_type, result.dataset_config, result.dataset_split) == ("nyu-mll/glue", "sst2", "validation")
    assert "model-index" in data.to_dict()
    body = card.text
    assert "T = 3" in body and "mean squared error between matched hidden states" in body
    assert "| hidden | 2 | 4 | mse |" in body and "linear" in body  # layer map, with the projection to width 32
    assert "| teacher | 0.7500 |" in body and "| student (distilled) | 0.7000 |" in body
    assert "93.3 %" in body and "2.50×" in body  # retention and speedup
    assert 'AutoModelForSequenceClassification.from_pretrained("tester/minilm-sst2")' in body
    # without results.json: still a valid card, no scores claimed
    os.remove(student_dir / "results.json")
    bare = ModelCard(render_model_card(str(student_dir)))
    assert bare.data.eval_results is None and bare.data.base_model == TEACHER_ID
    assert "No `results.json`" in bare.text
    assert "decay" not in bare.text  # the run had constant weights
    config_file = student_dir / DISTILLATION_CONFIG_FILE
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "intermediate_schedule": "cosine"}))
    decayed = ModelCard(render_model_card(str(student_dir))).text
    assert "the hidden-state and attention weights decay (cosine) from these values to 0 over training" in decayed


def test_license_comes_from_a_local_teacher_card(student_dir):
    teacher = student_dir / "teacher"
    (teacher / "README.md").write_text("---\nlicense: mit\n---\n# teacher\n")
    config = json.loads((student_dir / "distillation_config.json").read_text())
    config["teachers"] = [str(teacher)]
    (student_dir / "distillation_config.json").write_text(json.dumps(config))
    data = ModelCard(render_model_card(str(student_dir))).data
    assert data.license == "mit" and data.base_model is None  # a local folder is no Hub id
    path = write_model_card(str(student_dir), "tester/x")
    assert ModelCard.load(path).data.license == "mit"


def test_a_mode_this_card_does_not_know_is_named(student_dir):
    """A distill_mode without a sentence of its own (a newer one): the card names it and points at the record."""
    assert "distill_mode" not in render_model_card(str(student_dir))  # frozen: the plain distilled sentence
    config_file = student_dir / DISTILLATION_CONFIG_FILE
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "distill_mode": "distill_v9"}))
    text = render_model_card(str(student_dir))
    assert f"distilled from [{TEACHER_ID}](/{TEACHER_ID})" in text
    assert "It was trained with distill_mode `distill_v9`; see `distillation_config.json`." in text


# ---- the cards of the GLUE job's modes (hf-distill glue --distill_mode ...), from real tiny runs ----


def glue_run(out, *extra) -> dict:
    """Run the GLUE job (2-layer student, 3 steps) into ``out``; returns its results.json."""
    assert main(sst2_job_argv(out, "--student_layers", "1,3", "--max_steps", "3", *extra)) == 0
    return json.loads((Path(out) / "results.json").read_text())


def first_paragraph(card: str) -> str:
    return card.split("## Evaluation")[0].split("\n# ")[1]


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_a_born_again_card_says_how_many_generations_and_scores_each(tiny_teacher_dir, tmp_path):
    out = tmp_path / "ban"
    results = glue_run(
        out, "--distill_mode", "born_again", "--generations", "2", "--ensemble_generations", "true",
        "--teacher_model_name_or_path", tiny_teacher_dir, "--finetune_teacher", "true", "--teacher_max_steps", "1",
    )  # fmt: skip
    card = render_model_card(str(out))
    intro = first_paragraph(card)
    assert (
        f"trained with hf-distill {__version__} by born-again distillation: the last of 2 generation(s), each "
        "restarting from the same initial weights and taught by the one before, the first by a local teacher "
        "(`teacher`) (fine-tuned on the task first), the last by the ensemble of that teacher and every earlier "
        "generation." in intro
    )
    assert "fine-tuned on the task first," not in intro and "(`generation 1 student`)" not in intro
    first, second = results["generations"]
    assert f"| 1 | `{tiny_teacher_dir}` | {first['accuracy']:.4f} |" in card
    assert f"| 2 | `{tiny_teacher_dir}`, `generation 1 student` | {second['accuracy']:.4f} |" in card
    assert "generation 1 of 2, each restarting" in render_model_card(str(out / "generation_1"))


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_a_noisy_student_card_says_how_it_was_noised(tiny_teacher_dir, tmp_path):
    out = tmp_path / "ns"
    results = glue_run(
        out, "--distill_mode", "noisy_student", "--generations", "2", "--teacher_model_name_or_path",
        tiny_teacher_dir, "--finetune_teacher", "true", "--teacher_max_steps", "1", "--augment_prob", "0.5",
        "--augment_neighbours", "2", "--student_dropout", "0.2",
    )  # fmt: skip
    card = render_model_card(str(out))
    assert (
        f"trained with hf-distill {__version__} by noisy-student self-training: the last of 2 generation(s), each "
        "restarting from the same initial weights and taught by the one before, the first by a local teacher "
        "(`teacher`) (fine-tuned on the task first). Each generation learned the teacher's soft targets on the "
        "labelled examples and on text without labels, with dropout 0.2 on the student only (the teacher ran "
        "without it), and word replacement on 50 % of the examples, drawn afresh for each generation, the teacher "
        "reading each example's clean original." in first_paragraph(card)
    )
    second = results["generations"][1]
    assert f"| 2 | `generation 1 student` | {second['accuracy']:.4f} |" in card


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_a_mutual_card_names_the_peers_and_each_peer_gets_a_card(tiny_teacher_dir, tmp_path):
    out = tmp_path / "dml"
    results = glue_run(
        out, "--distill_mode", "mutual", "--num_peers", "3", "--student_model_name_or_path", tiny_teacher_dir
    )
    card = render_model_card(str(out))
    best = results["best_peer"]
    best_name = "this model" if best == 0 else f"peer {best} (`peer_{best}`)"
    assert (
        f"trained with hf-distill {__version__} by deep mutual learning, together with 2 peer(s) (`peer_1`, "
        "`peer_2` beside it): each learned from its labels and from the others' current predictions; the best of "
        f"the 3 was {best_name}." in first_paragraph(card)
    )
    assert "distilled from" not in card and "teacher's parameters" not in card and "Retention" not in card
    scores = [f"{p['accuracy']:.4f}" for p in results["peers"]]
    assert f"| this model (peer 0){', the best' if best == 0 else ''} | {scores[0]} | 20.0k" in card
    assert f"| peer 2 (`peer_2`){', the best' if best == 2 else ''} | {scores[2]} | - | - | - | - |" in card
    assert "keeps layers 1, 3 (0-based) of the model it started from" in card
    # a peer's folder: a peer's card with its own scores, not "no distillation_config.json"
    peer = ModelCard(render_model_card(str(out / "peer_2")))
    assert (
        "is a 2-layer `bert` model (hidden size 32): peer 2 of the 3 models of a deep mutual learning run with "
        f"hf-distill {__version__} on GLUE SST-2, trained together with the run's student" in peer.text
    )
    assert ("it scored best of them" in peer.text) == (best == 2) and "not a distilled model" not in peer.text
    assert f"| peer_2 | {scores[2]} |" in peer.text and peer.data.base_model is None
    (result,) = peer.data.eval_results
    assert result.metric_value == round(results["peers"][2]["accuracy"], 4)


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_a_cotrain_card_says_the_teacher_learned_in_the_same_loop(tiny_teacher_dir, tmp_path):
    out = tmp_path / "cotrain"
    results = glue_run(
        out, "--distill_mode", "cotrain", "--teacher_model_name_or_path", tiny_teacher_dir,
        "--teacher_learning_rate", "0.003",
    )  # fmt: skip
    assert json.loads((out / DISTILLATION_CONFIG_FILE).read_text())["teacher_learning_rate"] == 0.003
    card = render_model_card(str(out))
    assert (
        f"distilled with hf-distill {__version__} from a local teacher (`teacher`), fine-tuned on the task in the "
        "same training loop as the student (co-training, teacher learning rate 0.003) and saved in `teacher/`."
        in first_paragraph(card)
    )
    assert "fine-tuned on the task first" not in card
    teacher = render_model_card(str(out / "teacher"))
    assert (
        f"the teacher of a distillation run with hf-distill {__version__}, fine-tuned from a local model (`teacher`) "
        "on GLUE SST-2 in the same training loop as its student (co-training, learning rate 0.003)." in teacher
    )
    assert f"| teacher | {results['teacher']['accuracy']:.4f} |" in teacher


# ---- pushes against the local Hub ----


def test_a_pushed_teacher_folder_gets_a_teacher_card_not_a_students(student_dir, hub):
    """The GLUE job's output_dir/teacher/ has no distillation_config.json: it is the teacher, and its card says so."""
    teacher = student_dir / "teacher"
    push_student(str(teacher), "tester/the-teacher")
    card = ModelCard(hub.files("tester/the-teacher")["README.md"].decode())
    assert "student" not in card.text.split("## How to use")[0].replace("a smaller student learned from", "")
    assert "distilled from" not in card.text and "How it was distilled" not in card.text
    assert "is a 4-layer `bert` model (hidden size 32): the teacher of a distillation run" in card.text
    assert f"fine-tuned from [{TEACHER_ID}](/{TEACHER_ID}) on GLUE SST-2" in card.text
    # the teacher's score from the run's results.json, not the student's
    assert "| the-teacher | 0.7500 |" in card.text
    assert "distillation" not in card.data.tags and card.data.base_model == TEACHER_ID
    (result,) = card.data.eval_results
    assert (result.metric_type, result.metric_value, result.dataset_config) == ("accuracy", 0.75, "sst2")
    # any other folder without distillation_config.json: a plain card, which claims no teacher either
    plain = student_dir.parent / "plain"
    shutil.copytree(teacher, plain)
    text = render_model_card(str(plain), "tester/plain")
    assert "is a 4-layer `bert` model (hidden size 32). It is not a distilled model" in text
    assert "student" not in text and "teacher" not in text and "distillation\n" not in text.split("---")[1]


def test_push_then_from_pretrained_round_trip(student_dir, hub, tmp_path):
    hub.create_repo(TEACHER_ID, private=False)  # a teacher on the Hub with a license to carry over
    hub.commit(TEACHER_ID, "main", {"README.md": b"---\nlicense: apache-2.0\n---\n# teacher\n"}, "card")
    info = push_student(str(student_dir), "minilm-sst2", private=True)  # a bare name goes under the user
    assert info.repo_url.repo_id == "tester/minilm-sst2"
    files = hub.files("tester/minilm-sst2")
    assert set(files) == STUDENT_FILES | {".gitattributes"}
    for name in STUDENT_FILES - {"README.md"}:
        assert files[name] == (student_dir / name).read_bytes(), name
    assert hub.repos["tester/minilm-sst2"].private and hub.calls("commit") == 1
    card = ModelCard(files["README.md"].decode())
    assert card.data.license == "apache-2.0" and card.data.base_model == TEACHER_ID
    assert not (student_dir / "README.md").exists()  # the card went up from memory; the folder is untouched

    cache = tmp_path / "download"
    model = AutoModelForSequenceClassification.from_pretrained("tester/minilm-sst2", cache_dir=cache)
    local = AutoModelForSequenceClassification.from_pretrained(student_dir)
    assert_fp32_close(student_logits(model), student_logits(local), n=forward_chain(local.config, 10))  # loaded twice
    tokenizer = AutoTokenizer.from_pretrained("tester/minilm-sst2", cache_dir=cache)
    assert tokenizer("w1 w2")["input_ids"] == AutoTokenizer.from_pretrained(student_dir)("w1 w2")["input_ids"]
    assert hub.unknown == []  # every request the client made is one the server implements


def test_branch_push_and_repush_skips_unchanged(student_dir, hub):
    push_student(str(student_dir), "tester/s", revision="dev", commit_message="to dev")
    assert set(hub.files("tester/s", "dev")) == STUDENT_FILES | {".gitattributes"}
    assert set(hub.files("tester/s", "main")) == {".gitattributes"}
    assert hub.repos["tester/s"].messages[-1] == "to dev"
    commits = hub.calls("commit")
    push_student(str(student_dir), "tester/s", revision="dev")  # same files: nothing to commit
    assert hub.calls("commit") == commits
    # a README.md in the folder is the user's card and goes up as written; regenerate_card renders afresh
    (student_dir / "README.md").write_text("---\nlicense: mit\n---\n# my own card\n")
    push_student(str(student_dir), "tester/s", revision="dev")
    assert hub.files("tester/s", "dev")["README.md"] == b"---\nlicense: mit\n---\n# my own card\n"
    push_student(str(student_dir), "tester/s", revision="dev", regenerate_card=True)
    assert b"## How it was distilled" in hub.files("tester/s", "dev")["README.md"]


def test_rejected_or_missing_token_fails_before_any_upload(student_dir, hub, monkeypatch):
    hub.reject_tokens = True
    with pytest.raises(ValueError, match=r"rejected the token \(401.*hf auth login.*HF_TOKEN"):
        push_student(str(student_dir), "tester/s")
    hub.reject_tokens, hub.token_role = False, "read"
    with pytest.raises(ValueError, match="read-only and cannot push"):
        push_student(str(student_dir), "tester/s")
    monkeypatch.delenv("HF_TOKEN")  # and no token file in the fresh HF_HOME
    with pytest.raises(ValueError, match="No Hugging Face token found.*HF_TOKEN"):
        push_student(str(student_dir), "tester/s")
    assert {route for _, route in hub.requests} == {"whoami"}  # no repo, no pre-upload, no commit
    assert hub.repos == {}
    with socket.socket() as closed:  # a port on 127.0.0.1 where nothing listens
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{port}")
    with pytest.raises(RuntimeError, match="Could not reach the Hub at http://127.0.0.1"):
        push_student(str(student_dir), "tester/s")


def test_dropped_connection_fails_loudly_and_rerun_completes(student_dir, hub):
    before = tree_hash(student_dir)
    hub.drop_commits = 1
    with pytest.raises(RuntimeError, match="(?s)failed while uploading: .*run the same command again"):
        push_student(str(student_dir), "tester/s")
    assert tree_hash(student_dir) == before
    assert set(hub.files("tester/s")) == {".gitattributes"}  # no partial student on the Hub
    push_student(str(student_dir), "tester/s")
    assert set(hub.files("tester/s")) == STUDENT_FILES | {".gitattributes"}
    assert tree_hash(student_dir) == before


def test_unfinished_folders_are_refused(student_dir, hub):
    with pytest.raises(ValueError, match="is a training checkpoint.*trainer_state.json"):
        push_student(str(student_dir / "checkpoint-2"), "tester/s")
    os.remove(student_dir / "model.safetensors")
    os.remove(student_dir / "config.json")
    with pytest.raises(
        ValueError, match=r"not a finished student: it has no config.json .*; no weights \(\*.safetensors"
    ):
        push_student(str(student_dir), "tester/s")
    with pytest.raises(ValueError, match="is not a folder"):
        push_student(str(student_dir / "nope"), "tester/s")
    assert hub.requests == []  # refused before contacting the Hub


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda d: (d / "model.safetensors").write_bytes(b""), r"model.safetensors is empty \(0 bytes\)"),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-100]),
            r"model.safetensors is truncated: its header describes \d+ bytes but the file has \d+",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:40]),
            r"model.safetensors is truncated: its header needs \d+ bytes but the file has 40",
        ),
        (
            lambda d: (d / "tokenizer_config.json").write_text('{"model_max_length": 5'),
            r"tokenizer_config.json is not valid JSON \(Expecting ',' delimiter at line 1, column 23\)",
        ),
    ],
    ids=["empty", "truncated-data", "truncated-header", "bad-json"],
)
def test_damaged_files_are_refused_before_any_upload(student_dir, hub, capsys, damage, problem):
    damage(student_dir)
    fix = (
        r": write the folder again \(trainer.save_model\(\) or save_pretrained\) and push again; nothing was uploaded"
    )
    with pytest.raises(ValueError, match=problem + fix):
        push_student(str(student_dir), "tester/s")
    assert main(["push", str(student_dir), "--repo_id", "tester/s"]) == 2
    assert main(["push", str(student_dir), "--dry_run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith(f"hf-distill push: error: {student_dir}") for line in err)
    assert hub.requests == [] and hub.repos == {}  # refused before contacting the Hub


def test_a_sharded_student_is_checked_shard_by_shard(student_dir, hub):
    import safetensors.torch

    weights = safetensors.torch.load_file(student_dir / "model.safetensors")
    names = sorted(weights)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in shards.items():
        safetensors.torch.save_file({k: weights[k] for k in keys}, student_dir / shard, metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (student_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    os.remove(student_dir / "model.safetensors")
    second = student_dir / "model-00002-of-00002.safetensors"
    whole = second.read_bytes()
    second.write_bytes(whole[:-4])
    with pytest.raises(ValueError, match="model-00002-of-00002.safetensors is truncated"):
        push_student(str(student_dir), "tester/s")
    second.write_bytes(whole)
    (student_dir / "model.safetensors.index.json").write_text(json.dumps(index)[:-20])
    with pytest.raises(ValueError, match=r"model\.safetensors\.index\.json is not valid JSON \(.*: write the folder"):
        push_student(str(student_dir), "tester/s")
    assert hub.requests == []


def test_a_sharded_teacher_is_opened_shard_by_shard_beside_its_index(student_dir, hub, capsys):
    """--include_teacher with a sharded teacher/: the index's shards are found beside it (not in the student's
    folder) and every one is opened; a truncated or missing shard is one line, exit code 2, nothing uploaded."""
    teacher = student_dir / "teacher"
    model = AutoModelForSequenceClassification.from_pretrained(teacher)
    os.remove(teacher / "model.safetensors")
    model.save_pretrained(teacher, max_shard_size="20KB")
    shards = sorted(p.name for p in teacher.glob("model-*.safetensors"))
    assert len(shards) > 2 and (teacher / "model.safetensors.index.json").is_file()
    argv = ["push", str(student_dir), "--include_teacher", "true", "--dry_run", "true"]
    assert main(argv) == 0  # whole: every shard opened, the upload listed
    assert f"teacher/{shards[-1]}" in capsys.readouterr().out
    last, whole = teacher / shards[-1], (teacher / shards[-1]).read_bytes()
    last.write_bytes(whole[:-10])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"hf-distill push: error: {last} is truncated: its header describes")
    last.write_bytes(whole)
    os.remove(teacher / shards[0])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"model.safetensors.index.json names the shard {shards[0]}, which is missing" in err[0]
    assert hub.requests == [] and hub.repos == {}


def test_token_never_leaks(student_dir, hub, caplog, capfd):
    loggers = [logging.getLogger(name) for name in ("hf_distill", "huggingface_hub", "transformers")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(caplog.handler)
        lg.setLevel(logging.DEBUG)
    try:
        push_student(str(student_dir), "tester/s", token=TOKEN)
        assert main(["push", str(student_dir), "--repo_id", "tester/s2"]) == 0
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(caplog.handler)
            lg.setLevel(level)
    out, err = capfd.readouterr()
    assert "Pushing 8 files" in caplog.text and "pushed" in out
    assert TOKEN not in caplog.text + out + err
    for repo in ("tester/s", "tester/s2"):
        for name, data in hub.files(repo).items():
            assert TOKEN.encode() not in data, name
    # a token written into a file is caught before it is published
    results = json.loads((student_dir / "results.json").read_text())
    (student_dir / "results.json").write_text(json.dumps({**results, "note": TOKEN}))
    with pytest.raises(ValueError, match="results.json contains your Hub token"):
        push_student(str(student_dir), "tester/s3")
    assert "tester/s3" not in hub.repos


def test_trainer_push_to_hub_uses_the_same_card(trained, hub):
    trainer, out = trained
    info = trainer.push_to_hub(commit_message="End of training")
    repo = "tester/student-from-trainer"
    assert info.repo_url.repo_id == repo
    files = hub.files(repo)
    assert set(files) == STUDENT_FILES | {".gitattributes"}  # no adapters, training_args.bin, teacher or checkpoints
    assert files["README.md"].decode() == render_model_card(str(out), repo)
    assert hub.repos[repo].messages[-1] == "End of training"


# ---- the command line ----


def test_cli_push_help_lists_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["push", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--folder", "--repo_id", "--private", "--revision", "--commit_message", "--include_teacher",
                 "--regenerate_card", "--license", "--dry_run", "--config"):  # fmt: skip
        assert flag in text, flag


def test_cli_push_through_the_environment(student_dir, hub, tmp_path, capsys):
    """A real `hf-distill push` process: the endpoint and token come from HF_ENDPOINT / HF_TOKEN alone."""
    config = tmp_path / "push.yaml"
    config.write_text("repo_id: my-org/cli-student\nprivate: true\ncommit_message: from yaml\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    command = [sys.executable, "-m", "hf_distill.cli", "push", str(student_dir), "--config", str(config)]
    done = subprocess.run([*command, "--commit_message", "from the cli"], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert "pushed" in done.stdout and TOKEN not in done.stdout + done.stderr
    assert set(hub.files("my-org/cli-student")) == STUDENT_FILES | {".gitattributes"}
    assert hub.repos["my-org/cli-student"].private and hub.repos["my-org/cli-student"].messages[-1] == "from the cli"
    hub.reject_tokens = True  # errors are one line on stderr, not a traceback
    assert main(["push", str(student_dir), "--config", str(config)]) == 2
    assert "hf-distill push: error: The Hub at" in capsys.readouterr().err
    hub.reject_tokens, hub.drop_commits = False, 1
    assert main(["push", str(student_dir), "--repo_id", "my-org/other"]) == 1
    assert "run the same command again" in capsys.readouterr().err
