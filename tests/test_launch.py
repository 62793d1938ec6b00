"""Launching on several processes: the shipped accelerate configs parse, the launch command is built right, and
`hf-distill glue|causal-lm --num_processes 2` really runs two CPU ranks of which only the first writes outputs."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import launch_command_parser
from conftest import WORDS, tiny_bert, tiny_llama, tiny_tokenizer, word_tokenizer

from hf_distill.cli import main
from hf_distill.launch import (
    CONFIG_DIR,
    LAUNCHED_ENV,
    build_launch_command,
    exit_code,
    in_launched_worker,
    resolve_config,
    shipped_configs,
    split_launch_args,
)

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared/data/glue/SST-2"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
PY = "/usr/bin/python3"
TOKEN = "hf_LaunchTokenNeverShown4b1e"


# ---- the shipped configs ----


def test_the_issue_configs_are_shipped():
    assert set(shipped_configs()) == {"single_gpu", "multi_gpu", "fsdp", "zero2", "zero3", "multi_cpu"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_with_accelerate_and_says_how_to_run_it(path):
    text = path.read_text()
    opening = text.split("\ncompute_environment")[0]
    assert text.startswith("#") and f"--accelerate_config {path.stem}" in opening, "open with the command to run it"
    config = load_config_from_file(str(path))  # what `accelerate launch --config_file` does
    assert isinstance(config, ClusterConfig) and config.num_processes >= 1
    # nested keys are copied onto `accelerate launch` flags (fsdp_config.x -> --fsdp_x): each must name one
    flags = {action.dest for action in launch_command_parser()._actions}
    for key in {**config.fsdp_config, **config.deepspeed_config}:
        assert key in flags, f"{path.name}: {key} is no `accelerate launch` option"
    gpu = not config.use_cpu
    assert config.mixed_precision == ("bf16" if gpu else "no")


def test_sharded_configs_say_what_the_issue_asks():
    fsdp = load_config_from_file(str(CONFIG_DIR / "fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_reshard_after_forward"] is True  # full shard
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False  # would leave the teachers empty on ranks > 0
    zero2 = load_config_from_file(str(CONFIG_DIR / "zero2.yaml")).deepspeed_config
    zero3 = load_config_from_file(str(CONFIG_DIR / "zero3.yaml")).deepspeed_config
    assert zero2["zero_stage"] == 2 and zero3["zero_stage"] == 3
    # off: the teacher would load partitioned under the Trainer's DeepSpeed config, and build_student and the
    # vocabulary check would read its empty weights
    assert zero3["zero3_init_flag"] is False and zero3["zero3_save_16bit_model"] is True
    for ds in (zero2, zero3):  # left to the training flags, so DeepSpeed and the Trainer cannot disagree
        assert "gradient_accumulation_steps" not in ds and "gradient_clipping" not in ds
    cpu = load_config_from_file(str(CONFIG_DIR / "multi_cpu.yaml"))
    assert cpu.use_cpu and cpu.distributed_type.value == "MULTI_CPU" and cpu.num_processes == 2


# ---- building the launch command ----


def test_config_names_and_paths_resolve(tmp_path):
    assert resolve_config("fsdp") == str(CONFIG_DIR / "fsdp.yaml")
    assert resolve_config("zero3.yaml") == str(CONFIG_DIR / "zero3.yaml")
    mine = tmp_path / "mine.yaml"
    mine.write_text("distributed_type: MULTI_GPU\n")
    assert resolve_config(str(mine)) == str(mine)
    with pytest.raises(
        ValueError, match="'fdsp' is neither a shipped config \\(fsdp, multi_cpu, multi_gpu, single_gpu"
    ):
        resolve_config("fdsp")


def test_launch_flags_are_split_from_the_job_flags():
    argv = ["--config", "a.yaml", "--accelerate_config", "fsdp", "--num_processes=4", "--max_steps", "2"]
    assert split_launch_args(argv) == ("fsdp", 4, ["--config", "a.yaml", "--max_steps", "2"])
    assert split_launch_args(["--max_steps", "2"]) == (None, None, ["--max_steps", "2"])
    for bad in (["--num_processes", "0"], ["--num_processes", "two"], ["--num_processes"], ["--accelerate_config"]):
        with pytest.raises(ValueError, match="--num_processes|--accelerate_config"):
            split_launch_args(bad)


def test_inside_a_launched_worker_nothing_is_launched_again():
    assert in_launched_worker({LAUNCHED_ENV: "1"})  # started by hf-distill
    assert in_launched_worker({"LOCAL_RANK": "0", "WORLD_SIZE": "2"})  # by an accelerate launch / torchrun of your own
    assert not in_launched_worker({})
    assert not in_launched_worker({"WORLD_SIZE": "4", "RANK": "0"})  # what a SLURM or Kubernetes job may leave set


def test_a_child_killed_by_a_signal_exits_128_plus_the_signal():
    assert exit_code(-9) == 137 and exit_code(-15) == 143 and exit_code(3) == 3 and exit_code(0) == 0


def test_cpu_builds_torchrun_with_n_processes():
    job = ["--config", "a.yaml", "--max_steps", "2"]
    kw = {"config_path": None, "num_processes": 2, "cuda_devices": 0, "python": PY}
    assert build_launch_command("glue", job, **kw) == [
        PY, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "hf_distill.cli", "glue", *job, "--use_cpu", "true",
    ]  # fmt: skip
    # the config's count, and the CPU even where CUDA is there, when the config says so
    kw.update(config_path=resolve_config("multi_cpu"), num_processes=None, cuda_devices=8)
    cmd = build_launch_command("causal-lm", ["--use_cpu", "true"], **kw)
    assert cmd[2:6] == ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cmd.count("--use_cpu") == 1
    # a GPU config on a machine without CUDA: DDP over gloo on CPU processes
    kw.update(config_path=resolve_config("fsdp"), num_processes=3, cuda_devices=0)
    assert build_launch_command("glue", [], **kw)[4:6] == ["--nproc_per_node", "3"]


def test_gpu_builds_accelerate_launch_with_the_config(tmp_path):
    fsdp = resolve_config("fsdp")
    kw = {"config_path": fsdp, "num_processes": None, "cuda_devices": 4, "python": PY}
    assert build_launch_command("causal-lm", ["--max_steps", "2"], **kw) == [
        PY, "-m", "accelerate.commands.launch", "--config_file", fsdp, "--num_processes", "4",
        "-m", "hf_distill.cli", "causal-lm", "--max_steps", "2",
    ]  # fmt: skip
    kw.update(config_path=None, num_processes=2)  # --num_processes alone: DDP with the multi_gpu config
    assert build_launch_command("glue", [], **kw)[3:7] == [
        "--config_file", resolve_config("multi_gpu"), "--num_processes", "2"
    ]  # fmt: skip
    mine = tmp_path / "mine.yaml"  # a config of your own keeps its count
    mine.write_text("distributed_type: MULTI_GPU\nnum_processes: 3\n")
    kw.update(config_path=str(mine), num_processes=None)
    assert "--num_processes" not in build_launch_command("glue", [], **kw)
    kw.update(config_path=resolve_config("single_gpu"), num_processes=None)
    cmd = build_launch_command("glue", [], **kw)
    assert "--num_processes" not in cmd and cmd[4] == resolve_config("single_gpu")
    kw.update(num_processes=2)
    with pytest.raises(ValueError, match="runs one process"):
        build_launch_command("glue", [], **kw)


@pytest.fixture
def fake_launcher(monkeypatch):
    """``subprocess.run`` of hf_distill.launch recording ``(cmd, env)`` and exiting with ``fake_launcher.code``;
    outside any launched process, without CUDA."""
    import hf_distill.launch as launch

    class Launcher(list):
        code = 3

        def __call__(self, cmd, env=None):
            self.append((cmd, env))
            return subprocess.CompletedProcess(cmd, self.code)

    launcher = Launcher()
    monkeypatch.setattr(launch.subprocess, "run", launcher)
    for key in ("LOCAL_RANK", LAUNCHED_ENV):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "8")  # left set by a cluster job: no sign of a launched process
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    return launcher


def test_cli_relaunches_once_and_returns_the_exit_code(fake_launcher, monkeypatch):
    import hf_distill.launch as launch

    assert main(["causal-lm", "--num_processes", "2", "--max_steps", "1"]) == 3
    (cmd, env), *_ = fake_launcher
    assert cmd[2:6] == ["torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    assert cmd[-6:] == ["hf_distill.cli", "causal-lm", "--max_steps", "1", "--use_cpu", "true"]
    assert env[LAUNCHED_ENV] == "1" and env["PATH"] == os.environ["PATH"]  # the workers are marked, nothing else
    fake_launcher.code = -9  # the launcher killed (the OOM killer, a scheduler): 128 + SIGKILL, as a shell says
    assert main(["causal-lm", "--num_processes", "2"]) == 137
    # inside a launched process the flags are dropped and the job runs in that process
    for marker in (LAUNCHED_ENV, "LOCAL_RANK"):
        with monkeypatch.context() as m:
            m.setenv(marker, "1" if marker == LAUNCHED_ENV else "0")
            assert launch.launch_if_asked("glue", ["--num_processes", "2", "--seed", "1"]) == (None, ["--seed", "1"])
    assert len(fake_launcher) == 2


def test_help_with_a_launch_flag_prints_once_and_launches_nothing(fake_launcher, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["glue", "--num_processes", "2", "--help"])
    assert exit_info.value.code == 0 and fake_launcher == []
    out = capsys.readouterr().out
    assert out.count("usage: hf-distill glue") == 1 and "--accelerate_config" in out
    assert "--accelerator_config" in out.split("--accelerate_config ACCELERATE_CONFIG")[-1]  # the look-alike is named


def test_an_abbreviated_launch_flag_is_an_error_not_one_process(fake_launcher, capsys):
    """argparse would take `--num_proc 2` for --num_processes and the job would run on one process."""
    for flags in (["--num_proc", "2"], ["--accelerate_conf", "fsdp"], ["--num_processe=2"]):
        assert main(["glue", *flags, "--max_steps", "1"]) == 2
        assert "out in full" in capsys.readouterr().err
    assert fake_launcher == []


def test_hub_token_goes_to_the_workers_in_their_environment(fake_launcher, caplog, capsys, monkeypatch):
    """A worker's command line is visible to every user of the machine (ps, /proc/PID/cmdline); its environment is
    not. The token is taken out of the command and given as HF_TOKEN, which wins over one already set."""
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("HF_TOKEN", "hf_an_older_token")
    spellings = (["--hub_token", TOKEN], [f"--hub_token={TOKEN}"], ["--hub_tok", TOKEN], ["--hub-token", TOKEN])
    for flags in (*spellings, [f"--hub-token={TOKEN}"], ["--hub-tok", TOKEN], [f"--hub-t={TOKEN}"]):
        assert main(["glue", "--num_processes", "2", *flags, "--max_steps", "1"]) == 3
        cmd, env = fake_launcher[-1]
        assert TOKEN not in " ".join(cmd) and env["HF_TOKEN"] == TOKEN and env[LAUNCHED_ENV] == "1"
        assert cmd[-4:] == ["--max_steps", "1", "--use_cpu", "true"]
    assert main(["glue", "--num_processes", "2", "--max_steps", "1"]) == 3  # no flag: the environment's, untouched
    assert fake_launcher[-1][1]["HF_TOKEN"] == "hf_an_older_token"
    out, err = capsys.readouterr()
    assert "launching:" in caplog.text and TOKEN not in caplog.text + out + err
    assert main(["glue", "--num_processes", "2", "--hub_token"]) == 2
    assert "--hub_token needs a value" in capsys.readouterr().err


def test_cpu_run_of_a_bf16_config_warns_that_bf16_is_not_applied(fake_launcher, caplog):
    caplog.set_level(logging.WARNING, logger="hf_distill")
    assert main(["causal-lm", "--accelerate_config", "fsdp", "--max_steps", "1"]) == 3
    assert "plain DDP over gloo" in caplog.text and "mixed_precision: bf16" in caplog.text
    assert "--bf16 true" in caplog.text
    caplog.clear()
    assert main(["causal-lm", "--accelerate_config", "fsdp", "--bf16", "true"]) == 3  # asked for: no warning
    assert "mixed_precision" not in caplog.text
    assert main(["causal-lm", "--accelerate_config", "multi_cpu"]) == 3
    assert "mixed_precision" not in caplog.text


def test_cli_reports_a_bad_config_name_and_yaml_launch_keys(tmp_path, capsys):
    assert main(["glue", "--accelerate_config", "nope"]) == 2
    assert "shipped config (fsdp, multi_cpu" in capsys.readouterr().err
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"num_processes": 2}))
    assert main(["glue", "--config", str(recipe)]) == 2
    assert "command-line flags only" in capsys.readouterr().err


# ---- the real launch path: two CPU ranks, outputs from the first only ----

# Loaded by every Python process of the launched job (it is first on PYTHONPATH): records, per rank, the files the
# process wrote and the world size it ran in. Files opened for writing from Python (JSON, the report picture...) are
# seen through an audit hook; torch.save and safetensors' save_file write from native code, so those two are wrapped
# as their modules are imported (before transformers and accelerate import them by name) to record their paths. Each
# rank first writes `started{rank}`, which its record must show, so that an empty record means "wrote nothing", not
# "the probe saw nothing"; rank 0's record must show the model.safetensors and the torch.save'd files it saved.
PROBE = """
import atexit, importlib.machinery, json, os, sys

RANK, PROBE_DIR = os.environ.get("RANK"), os.environ.get("RANK_PROBE_DIR")
# module -> the writer functions in it; torch/__init__ takes `save` from torch.serialization by name
NATIVE_WRITERS = {"torch.serialization": "save", "safetensors.torch": "save_file"}

if RANK is not None and PROBE_DIR:
    written = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2] or 0
            if (mode and any(c in mode for c in "wax+")) or flags & (os.O_WRONLY | os.O_RDWR):
                written.append(os.path.abspath(os.fsdecode(args[0])))

    def recording(save):
        def wrapper(obj, f, *args, **kwargs):
            if isinstance(f, (str, bytes, os.PathLike)):  # a file object was opened from Python: the hook saw it
                written.append(os.path.abspath(os.fsdecode(f)))
            return save(obj, f, *args, **kwargs)

        return wrapper

    class WrapWriters:
        def find_spec(self, name, path=None, target=None):
            if name not in NATIVE_WRITERS:
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is None:
                return None
            exec_module = spec.loader.exec_module

            def exec_and_wrap(module):
                exec_module(module)
                setattr(module, NATIVE_WRITERS[name], recording(getattr(module, NATIVE_WRITERS[name])))

            spec.loader.exec_module = exec_and_wrap
            return spec

    def dump():
        record = {"rank": int(RANK), "world_size": int(os.environ["WORLD_SIZE"]), "written": list(written),
                  "argv": sys.argv, "hf_token": os.environ.get("HF_TOKEN")}
        with open(os.path.join(PROBE_DIR, f"rank{RANK}.json"), "w") as f:
            json.dump(record, f)

    sys.meta_path.insert(0, WrapWriters())
    sys.addaudithook(hook)
    atexit.register(dump)
    with open(os.path.join(PROBE_DIR, f"started{RANK}"), "w") as f:
        f.write(RANK)
"""


def run_launched(tmp_path, job: str, *flags: str) -> tuple[Path, list[dict], str]:
    """``hf-distill job flags`` in a subprocess (a fresh environment, as a user runs it), with the rank probe;
    returns the output folder, the ranks' records and everything the run printed."""
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "sitecustomize.py").write_text(PROBE)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "HF_TOKEN")}
    env.update(PYTHONPATH=f"{probe}:{ROOT}", RANK_PROBE_DIR=str(probe), OMP_NUM_THREADS="1")
    common = ["--output_dir", str(out), "--max_steps", "2", "--per_device_train_batch_size", "4",
              "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "steps", "--save_steps", "2"]  # fmt: skip
    cmd = [sys.executable, "-m", "hf_distill.cli", job, *common, *flags]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    if result.returncode != 0:
        pytest.fail(result.stdout[-3000:] + result.stderr[-3000:])
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert not (probe / "rank2.json").exists()
    return out, ranks, result.stdout + result.stderr


def check_two_ranks_one_writer(out: Path, ranks: list[dict], outputs: list[str]) -> None:
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(any(p.endswith(f"started{r['rank']}") for p in r["written"]) for r in ranks)  # the probe works
    checkpoint = out / "checkpoint-2"  # the Trainer saves one RNG state per process
    assert (checkpoint / "rng_state_0.pth").exists() and (checkpoint / "rng_state_1.pth").exists()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["epoch"] == 0.5  # 32 rows, 8 a step over both ranks: 4 steps an epoch
    mine = [[Path(p).relative_to(out).as_posix() for p in r["written"] if Path(p).is_relative_to(out)] for r in ranks]
    assert mine[1] == ["checkpoint-2/rng_state_1.pth"], mine[1]  # rank 1 wrote its own RNG state, nothing else
    # the native writers are seen: rank 0 saved the student (safetensors) and its RNG state and optimizer (torch.save)
    for name in ("checkpoint-2/model.safetensors", "checkpoint-2/rng_state_0.pth", "checkpoint-2/optimizer.pt"):
        assert name in mine[0], (name, mine[0])
    for name in outputs:
        assert mine[0].count(name) == 1, (name, mine[0])
    results = json.loads((out / "results.json").read_text())
    assert results["max_steps"] == 2 and results["train_examples"] == 32


@pytest.fixture
def glue_teacher(tmp_path, shared_dir):
    words = sorted(
        {w for line in (SST2 / "dev.tsv").read_text().splitlines()[1:200] for w in line.split("\t")[0].split()}
    )
    folder = tmp_path / "teacher"
    tiny_bert(num_layers=4).save_pretrained(folder)
    word_tokenizer(words[:94]).save_pretrained(folder)
    return str(folder)


@pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared
def test_glue_num_processes_2_runs_two_ranks_and_rank0_writes(tmp_path, glue_teacher):
    out, ranks, _ = run_launched(
        tmp_path, "glue", "--teacher_model_name_or_path", glue_teacher, "--data_dir", str(SST2),
        "--student_layers", "1,3", "--max_seq_length", "32", "--max_train_samples", "32", "--max_eval_samples", "16",
        "--speed_batch_size", "2", "--speed_seq_len", "8", "--alpha_hidden", "1", "--num_processes", "2",
    )  # fmt: skip
    check_two_ranks_one_writer(out, ranks, ["results.json", "report.png", "config.json", "distillation_config.json"])


def test_causal_lm_multi_cpu_config_runs_two_ranks_and_rank0_writes(tmp_path):
    teacher = tmp_path / "teacher"
    tiny_llama(seed=1, pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    lines = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(12)) for i in range(80)]
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")
    out, ranks, printed = run_launched(
        tmp_path, "causal-lm", "--teacher_model_name_or_path", str(teacher), "--train_file", str(tmp_path / "train.txt"),
        "--validation_files", str(tmp_path / "train.txt"), "--block_size", "16", "--max_train_samples", "32",
        "--max_eval_blocks", "4", "--kd_chunk_size", "8", "--accelerate_config", "multi_cpu", "--hub_token", TOKEN,
    )  # fmt: skip
    check_two_ranks_one_writer(out, ranks, ["results.json", "config.json", "distillation_config.json"])
    # the token reached each worker through its environment, never through its command line or a log line
    assert [r["hf_token"] for r in ranks] == [TOKEN, TOKEN]
    assert all(TOKEN not in " ".join(r["argv"]) for r in ranks) and "causal-lm" in ranks[0]["argv"]
    assert "launching:" in printed and TOKEN not in printed
    for path in out.rglob("*"):  # training_args.bin pickles hub_token: it holds none
        assert path.is_dir() or TOKEN.encode() not in path.read_bytes(), path
