"""Run a job on several processes: ``--accelerate_config NAME_OR_PATH`` / ``--num_processes N`` make the CLI start
itself again under ``torchrun`` (CPU) or ``accelerate launch`` (GPU), with those two flags removed.

On the CPU, ``accelerate launch`` starts a single process unless an MPI launcher is configured (every multi-process
launcher in ``accelerate.commands.launch.launch_command`` is guarded by ``not args.cpu``), so CPU runs go through
``python -m torch.distributed.run --standalone``, which does start N processes; the Trainer then runs DDP over gloo.
The processes started here carry ``HF_DISTILL_LAUNCHED=1``, and they (and those of an ``accelerate launch`` or
``torchrun`` of your own, which set ``LOCAL_RANK``) run the job instead of launching again. A ``--hub_token`` is
taken out of their command line (which ``ps`` shows every user of the machine) and passed in their environment as
``HF_TOKEN``, which ``huggingface_hub`` reads.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from argparse import ArgumentTypeError
from pathlib import Path

import yaml
from transformers.hf_argparser import string_to_bool

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "accelerate_configs"
LAUNCH_FLAGS = {"--accelerate_config": "accelerate_config", "--num_processes": "num_processes"}
# set in the processes `launch_if_asked` starts; LOCAL_RANK is set by torchrun and `accelerate launch` in every process
# they start (WORLD_SIZE is not a sign: a SLURM or Kubernetes job may leave it set for the launching process)
LAUNCHED_ENV = "HF_DISTILL_LAUNCHED"
SHARDED_TYPES = ("FSDP", "DEEPSPEED")


def shipped_configs() -> list[str]:
    """Names of the accelerate configs shipped in ``hf_distill/accelerate_configs`` (``fsdp``, ``multi_gpu``...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def resolve_config(name_or_path: str) -> str:
    """The YAML file of a shipped config name (``fsdp``) or of a path; an unknown name is a ValueError."""
    if os.path.isfile(name_or_path):
        return os.path.abspath(name_or_path)
    path = CONFIG_DIR / f"{name_or_path.removesuffix('.yaml')}.yaml"
    if path.is_file():
        return str(path)
    raise ValueError(
        f"--accelerate_config {name_or_path!r} is neither a shipped config ({', '.join(shipped_configs())}) "
        "nor a YAML file."
    )


def add_launch_arguments(parser) -> None:
    """Document the launch flags in ``--help``; they are read (and removed) by `split_launch_args` before parsing."""
    group = parser.add_argument_group("launching on several processes")
    group.add_argument(
        "--accelerate_config",
        default=None,
        help=f"Run on several processes with this accelerate config: a shipped name ({', '.join(shipped_configs())}) "
        "or a YAML file. CPU configs (or no CUDA) start the processes with torchrun, GPU ones with accelerate launch. "
        "Not TrainingArguments' --accelerator_config (options of the Accelerator object). Spell it out in full.",
    )
    group.add_argument(
        "--num_processes",
        type=int,
        default=None,
        help="Number of processes (default: the config's, or one per visible GPU). Alone: data parallel, "
        "multi_cpu without CUDA, multi_gpu with it. Spell it out in full.",
    )


def _flag_value(argv: list[str], i: int) -> tuple[str | None, int]:
    """``(value, tokens used)`` of the flag at ``argv[i]``, written ``--flag value`` or ``--flag=value``."""
    if "=" in argv[i]:
        return argv[i].split("=", 1)[1], 1
    if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
        return argv[i + 1], 2
    return None, 1


def split_launch_args(argv: list[str]) -> tuple[str | None, int | None, list[str]]:
    """``(accelerate_config, num_processes, the other arguments)``: the launch flags taken out of ``argv``."""
    found, rest, i = {}, [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name not in LAUNCH_FLAGS:
            rest.append(argv[i])
            i += 1
            continue
        value, used = _flag_value(argv, i)
        if value is None:
            raise ValueError(f"{name} needs a value, e.g. {name} {'multi_gpu' if 'config' in name else '2'}.")
        found[LAUNCH_FLAGS[name]] = value
        i += used
    num_processes = found.get("num_processes")
    if num_processes is not None:
        if not num_processes.isdigit() or int(num_processes) < 1:
            raise ValueError(f"--num_processes {num_processes!r}: give a whole number of processes, 1 or more.")
        num_processes = int(num_processes)
    return found.get("accelerate_config"), num_processes, rest


def _is_token_flag(arg: str) -> bool:
    """``--hub_token``, ``--hub-token`` (the dash alias ``HfArgumentParser`` adds to every field), ``--hub_token=...``
    or an abbreviation argparse would take for either (``--hub_tok``, ``--hub-t``)."""
    name = arg.split("=", 1)[0]
    if not name.startswith("--"):
        return False
    name = "--" + name[2:].replace("-", "_")
    return name.startswith("--hub_t") and "--hub_token".startswith(name)


def split_hub_token(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(token, argv without it)``: ``--hub_token VALUE`` / ``--hub_token=VALUE`` taken out of ``argv``, so that the
    token travels to the workers in their environment, never on a command line (the last one given wins, as in
    argparse)."""
    token, rest, i = None, [], 0
    while i < len(argv):
        if not _is_token_flag(argv[i]):
            rest.append(argv[i])
            i += 1
            continue
        value, used = _flag_value(argv, i)
        if value is None:
            raise ValueError("--hub_token needs a value; or leave it out and set HF_TOKEN (or run `hf auth login`).")
        token = value
        i += used
    return token, rest


def in_launched_worker(env=None) -> bool:
    """Whether this process was started by hf-distill (``HF_DISTILL_LAUNCHED=1``) or by a torchrun / accelerate
    launch of your own (``LOCAL_RANK``), so that it runs the job rather than launching again."""
    env = os.environ if env is None else env
    return env.get(LAUNCHED_ENV) == "1" or "LOCAL_RANK" in env


def wants_cpu(argv: list[str]) -> bool:
    """Whether the job's own flags say ``--use_cpu`` (bare, ``true``, ``=1``...: as ``HfArgumentParser`` reads it)."""
    for i, arg in enumerate(argv):
        if arg.split("=", 1)[0] == "--use_cpu":
            value, _ = _flag_value(argv, i)
            try:
                return value is None or string_to_bool(value)
            except ArgumentTypeError:
                return False  # the job's own parser reports the bad value
    return False


def read_config(path: str | None) -> dict:
    if path is None:
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def runs_on_cpu(config: dict, argv: list[str], cuda_devices: int) -> bool:
    """CPU processes when the config says so (``use_cpu`` / ``MULTI_CPU``), the job says ``--use_cpu``, or no CUDA."""
    return (
        bool(config.get("use_cpu"))
        or config.get("distributed_type") == "MULTI_CPU"
        or wants_cpu(argv)
        or not cuda_devices
    )


def build_launch_command(
    job: str,
    argv: list[str],
    *,
    config_path: str | None,
    num_processes: int | None,
    cuda_devices: int,
    python: str = sys.executable,
) -> list[str]:
    """The command that runs ``hf-distill job argv`` on several processes (``argv`` without the launch flags).

    CPU: ``python -m torch.distributed.run --standalone --nproc_per_node N -m hf_distill.cli job argv --use_cpu
    true``, N from ``num_processes`` or the config (``--standalone``: torchrun binds a free port itself, no port
    picked here that another job could take first). GPU: ``python -m accelerate.commands.launch --config_file YAML
    [--num_processes N] -m hf_distill.cli job argv``; without a config, ``multi_gpu`` (``single_gpu`` for one
    process); N as `_gpu_processes` says. The port is the config's ``main_process_port``, else accelerate's 29500,
    and accelerate goes standalone (a free port) on one machine when that one is taken.
    """
    config = read_config(config_path)
    module = ["-m", "hf_distill.cli", job, *argv]
    if runs_on_cpu(config, argv, cuda_devices):
        _warn_cpu_fallbacks(config_path, config, argv)
        n = num_processes or _config_processes(config)
        if n is None:
            raise ValueError(f"The accelerate config {config_path} sets no num_processes: pass --num_processes N.")
        use_cpu = [] if any(a.split("=", 1)[0] == "--use_cpu" for a in argv) else ["--use_cpu", "true"]
        runner = ["torch.distributed.run", "--standalone", "--nproc_per_node", str(n)]
        return [python, "-m", *runner, *module, *use_cpu]
    if config_path is None:
        config_path = resolve_config("single_gpu" if (num_processes or cuda_devices) == 1 else "multi_gpu")
        config = read_config(config_path)
    n = _gpu_processes(config, config_path, num_processes, cuda_devices)
    count = ["--num_processes", str(n)] if n else []
    runner = ["accelerate.commands.launch", "--config_file", config_path, *count]
    return [python, "-m", *runner, *module]


def _config_processes(config: dict) -> int | None:
    n = config.get("num_processes")
    return n if isinstance(n, int) and n > 0 else None


def _gpu_processes(config: dict, config_path: str, num_processes: int | None, cuda_devices: int) -> int | None:
    """``--num_processes`` for accelerate launch: the flag's; else one per visible GPU for a shipped config (their
    ``num_processes: 2`` is a placeholder); else None, leaving a config of your own its count (or none for one
    process)."""
    if config.get("distributed_type") == "NO":
        if (num_processes or 1) > 1:
            raise ValueError(f"{config_path} runs one process; for --num_processes {num_processes} use multi_gpu.")
        return None
    if num_processes:
        return num_processes
    shipped = Path(config_path).parent == CONFIG_DIR
    return cuda_devices if shipped or _config_processes(config) is None else None


def exit_code(returncode: int) -> int:
    """A child's exit status as a shell gives it: ``128 + N`` for a child killed by signal N (``returncode`` -N)."""
    return 128 - returncode if returncode < 0 else returncode


def _warn_cpu_fallbacks(config_path: str | None, config: dict, argv: list[str]) -> None:
    """What of a GPU config a CPU (torchrun) run does not apply: its sharding and its mixed precision."""
    if config.get("distributed_type") in SHARDED_TYPES:
        logger.warning(
            "%s is a GPU config (%s) but this run is on the CPU: plain DDP over gloo instead.",
            config_path,
            config["distributed_type"],
        )
    precision = str(config.get("mixed_precision", "no"))
    if precision != "no" and not any(a.split("=", 1)[0] in ("--bf16", "--fp16") for a in argv):
        logger.warning(
            "%s sets mixed_precision: %s, which torchrun does not apply (it reads no accelerate config): this CPU "
            "run is fp32. Pass --bf16 true for bf16.",
            config_path,
            precision,
        )


def launch_if_asked(job: str, argv: list[str]) -> tuple[int | None, list[str]]:
    """``(exit code, argv)`` of ``job`` re-launched on several processes when ``argv`` asks for it; ``(None, argv
    without the launch flags)`` when it does not, when it asks for ``--help``, or when this process is already one of
    the launched ones."""
    config_name, num_processes, rest = split_launch_args(argv)
    if config_name is None and num_processes is None:
        return None, rest
    if "-h" in rest or "--help" in rest:  # printed once, here, with the launch flags listed
        return None, rest
    if in_launched_worker():
        logger.warning(
            "Already in a launched process (%s or LOCAL_RANK set): ignoring the launch flags.", LAUNCHED_ENV
        )
        return None, rest
    import torch

    config_path = resolve_config(config_name) if config_name else None
    cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    token, job_args = split_hub_token(rest)
    cmd = build_launch_command(
        job, job_args, config_path=config_path, num_processes=num_processes, cuda_devices=cuda_devices
    )
    logger.info("launching: %s", " ".join(cmd))
    env = {**os.environ, LAUNCHED_ENV: "1", **({"HF_TOKEN": token} if token is not None else {})}
    result = subprocess.run(cmd, env=env)
    if result.returncode < 0:
        logger.error("The launcher was killed by %s.", signal.Signals(-result.returncode).name)
    return exit_code(result.returncode), rest
