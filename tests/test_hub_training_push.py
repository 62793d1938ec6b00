"""Pushes during training (``push_to_hub=True``, ``hub_strategy``) against the local Hub (tests/hub_server.py): only
the student goes up at each save, with the hf_distill card; adapters, training_args.bin, the teacher and optimizer
state stay local, unless ``hub_strategy`` asks for checkpoints."""

from __future__ import annotations

import logging
import types

import pytest
import safetensors.torch
import torch
import transformers.trainer
import transformers.utils.hub
from conftest import classification_dataset, tiny_bert, word_tokenizer
from test_hub import TOKEN, hub  # noqa: F401 (hub is a fixture)
from transformers import TrainerCallback

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.mapping import ADAPTERS_FILE

REPO_ID = "tester/student-pushed-in-training"
STUDENT = {"config.json", "model.safetensors", "distillation_config.json", "README.md", "tokenizer.json"}


class WaitForPush(TrainerCallback):
    """Let each save's push finish before training goes on, so that every save is pushed and in order (by default the
    Trainer skips a save while the previous push is still uploading)."""

    trainer = None

    def on_save(self, args, state, control, **kwargs):
        self.trainer._finish_current_push()


def push_args(out, hub_strategy: str, **kw) -> DistillationConfig:
    """2 steps of batch 8 on the CPU, saving (and so pushing to REPO_ID) after each."""
    return DistillationConfig(
        output_dir=str(out),
        push_to_hub=True,
        hub_model_id=REPO_ID,
        hub_strategy=hub_strategy,
        save_strategy="steps",
        save_steps=1,
        max_steps=2,
        per_device_train_batch_size=8,
        report_to="none",
        disable_tqdm=True,
        use_cpu=True,
        **kw,
    )


def train_with_pushes(root, hub_strategy, **kw):
    """Two steps saved at each step, pushed as they are saved, in an output_dir that already holds what the GLUE job
    leaves there before distilling (teacher/, student_no_kd/) and a previous run's projection adapters."""
    tokenizer = word_tokenizer([f"w{i}" for i in range(94)])
    teacher, student = tiny_bert(num_layers=4, seed=0), tiny_bert(num_layers=2, hidden=16, seed=1)
    out = root / "out"
    teacher.save_pretrained(out / "teacher")
    tiny_bert(num_layers=2, hidden=16, seed=2).save_pretrained(out / "student_no_kd")
    safetensors.torch.save_file({"stale": torch.zeros(1)}, out / ADAPTERS_FILE)
    # widths 16 vs 32 with alpha_hidden: projection adapters exist and are saved in each checkpoint
    args = push_args(out, hub_strategy, alpha_hidden=1.0, dataloader_pin_memory=False, **kw)
    wait = WaitForPush()
    trainer = wait.trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=classification_dataset(n=16),
        processing_class=tokenizer,
        callbacks=[wait],
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # models this small run fastest on one thread, and far faster on a busy machine
    try:
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    trainer._finish_current_push()
    return out


@pytest.fixture
def hub_api(hub, monkeypatch):  # noqa: F811 (hub is the imported fixture)
    """The local Hub, with transformers' shared HfApi rebuilt for it (it keeps the endpoint it was created with)."""
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    return hub


def top_level(files) -> set[str]:
    return {name.split("/")[0] for name in files}


def test_every_save_pushes_the_student_alone(hub_api, tmp_path, caplog, capfd):
    caplog.set_level(logging.DEBUG, logger="hf_distill")
    out = train_with_pushes(tmp_path, "every_save")
    files = hub_api.files(REPO_ID)
    assert STUDENT <= set(files)
    for name in (ADAPTERS_FILE, "training_args.bin", "optimizer.pt", "teacher", "student_no_kd", "last-checkpoint"):
        assert name not in top_level(files), name
    assert not any(name.startswith("checkpoint-") for name in top_level(files))
    assert files["model.safetensors"] == (out / "checkpoint-2" / "model.safetensors").read_bytes()
    assert b"## How it was distilled" in files["README.md"]  # the hf_distill card, not the Trainer's
    assert hub_api.repos[REPO_ID].messages[1:] == ["Training in progress, step 1", "Training in progress, step 2"]
    assert (out / ADAPTERS_FILE).is_file() and (out / "checkpoint-2" / ADAPTERS_FILE).is_file()  # still local
    assert "Pushing 6 files to" in caplog.text  # through push_student, which logs what goes up
    stdout, stderr = capfd.readouterr()
    assert TOKEN not in caplog.text + stdout + stderr
    assert not any(TOKEN.encode() in data for data in files.values())


def test_checkpoint_strategy_also_pushes_the_last_checkpoint(hub_api, tmp_path):
    out = train_with_pushes(tmp_path, "checkpoint")
    files = hub_api.files(REPO_ID)
    assert STUDENT <= set(files)
    checkpoint = {name.removeprefix("last-checkpoint/") for name in files if name.startswith("last-checkpoint/")}
    assert {"model.safetensors", ADAPTERS_FILE, "optimizer.pt", "trainer_state.json"} <= checkpoint  # asked for
    assert files[f"last-checkpoint/{ADAPTERS_FILE}"] == (out / "checkpoint-2" / ADAPTERS_FILE).read_bytes()
    for name in (ADAPTERS_FILE, "training_args.bin", "optimizer.pt", "teacher", "student_no_kd", "checkpoint-2"):
        assert name not in top_level(files), name
    assert hub_api.repos[REPO_ID].messages[1:] == [
        "Training in progress, step 1",
        "Training in progress, step 1, checkpoint",
        "Training in progress, step 2",
        "Training in progress, step 2, checkpoint",
    ]


def test_a_checkpoint_holding_the_token_stays_local(hub_api, tmp_path, caplog, capfd):
    """hub_token given as an argument is pickled into training_args.bin: the student goes up, the checkpoint not."""
    caplog.set_level(logging.DEBUG, logger="hf_distill")
    train_with_pushes(tmp_path, "checkpoint", hub_token=TOKEN)
    files = hub_api.files(REPO_ID)
    assert STUDENT <= set(files)
    assert "last-checkpoint" not in top_level(files)
    assert "training_args.bin contains your Hub token" in caplog.text and "instead of hub_token" in caplog.text
    stdout, stderr = capfd.readouterr()
    assert TOKEN not in caplog.text + stdout + stderr
    assert not any(TOKEN.encode() in data for data in files.values())


@pytest.mark.parametrize("main_process", [True, False], ids=["process-zero", "other-process"])
def test_only_the_main_process_pushes(tmp_path, monkeypatch, main_process):
    """Under DDP every process runs the saves and ``push_to_hub``; only the world's process zero uploads (the others
    have no ``push_in_progress``: an AttributeError at the first save once). The uploads are recorded here (the Hub is
    never reached), with ``is_world_process_zero`` forced either way."""
    from hf_distill.publish import trainer_hub

    calls = []
    monkeypatch.setattr(trainer_hub, "push_student", lambda folder, repo_id, **kw: calls.append(("student", folder)))
    monkeypatch.setattr(
        trainer_hub,
        "push_from_checkpoint",
        lambda checkpoint, folder, repo_id, **kw: calls.append(("checkpoint", checkpoint)) or [],
    )
    # Trainer.init_hf_repo runs as it is (on process zero only), against a Hub that creates any repo
    hub_api = types.SimpleNamespace(create_repo=lambda name, **kw: types.SimpleNamespace(repo_id=name))
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub_api)
    monkeypatch.setattr(DistillationTrainer, "is_world_process_zero", lambda self: main_process)
    out = tmp_path / "out"
    args = push_args(out, "checkpoint")
    teacher, student = tiny_bert(num_layers=4, seed=0), tiny_bert(num_layers=2, hidden=16, seed=1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=classification_dataset(n=16)
    )
    trainer.train()
    result = trainer.push_to_hub()
    assert (out / "checkpoint-2" / "model.safetensors").is_file()  # every process went through the saves
    if main_process:
        assert calls == [
            ("checkpoint", str(out / "checkpoint-1")),
            ("checkpoint", str(out / "checkpoint-2")),
            ("student", str(out)),
        ]
    else:
        assert calls == [] and result is None


def test_a_damaged_shard_index_is_copied_for_the_push_to_name(tmp_path):
    """A save whose shard index does not parse: the index goes to the output folder anyway (never a stale one left
    there), where the push refuses it by name, instead of a JSONDecodeError in the background push."""
    from hf_distill.publish.hub import check_files
    from hf_distill.publish.trainer_hub import copy_student_files

    checkpoint, folder = tmp_path / "checkpoint-2", tmp_path / "out"
    checkpoint.mkdir(), folder.mkdir()
    (checkpoint / "config.json").write_text("{}")
    (checkpoint / "model.safetensors.index.json").write_text('{"weight_map": {"w": "model-00001-of-0')
    assert copy_student_files(str(checkpoint), str(folder)) == ["config.json", "model.safetensors.index.json"]
    with pytest.raises(ValueError, match=r"out/model\.safetensors\.index\.json is not valid JSON"):
        check_files(str(folder), ["config.json", "model.safetensors.index.json"])
