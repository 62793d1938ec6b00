"""What a distillation checkpoint holds beyond the Trainer's files, and whether one is whole enough to resume from.

Beside the student's weights and the Trainer's optimizer, scheduler and RNG states, a checkpoint holds the projection
adapters (``ADAPTERS_FILE``, every teacher's in one file, see :mod:`hf_distill.mapping.adapters`) and, with on-policy
or sequence-level KD, the sampling stream (``SAMPLING_STATE_FILE``, one per process). The Trainer writes
``trainer_state.json`` last, so a save cut short has none; :func:`checkpoint_problems` names what a folder lacks.
"""

from __future__ import annotations

import logging
import os
import re

import safetensors.torch
import torch
from torch import nn
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .file_checks import WEIGHT_INDEXES, file_problem, json_problem
from .mapping import ADAPTERS_FILE

logger = logging.getLogger(__name__)

# the on-policy / sequence-level KD random stream in a checkpoint (one file per process, as the Trainer's RNG states)
SAMPLING_STATE_FILE = "hf_distill_sampling_state{}.pth"
# the state of a teacher that changes during training (an EMA of the student), one file per teacher that has one
TEACHER_STATE_FILE = "hf_distill_teacher_{}.safetensors"
# the student's weights in a checkpoint, one of these (FSDP and DeepSpeed checkpoints hold their own formats)
CHECKPOINT_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
    *WEIGHT_INDEXES,
)


def checkpoint_problems(
    folder: str, *, sharded: bool, save_only_model: bool, has_adapters: bool, teacher_states: tuple[int, ...] = ()
) -> list[str]:
    """What keeps ``folder`` from being a checkpoint to resume from (empty when it is whole): ``trainer_state.json``
    (written last), student weights that read back, the optimizer and scheduler states (unless ``save_only_model``;
    ``sharded``: FSDP/DeepSpeed keep their own formats), the adapters' weights when the run has adapters, and the
    state of each teacher numbered in ``teacher_states`` (those that change during training)."""
    if not os.path.isdir(folder):
        return ["not a folder"]
    names = set(os.listdir(folder))
    problems = []
    if "trainer_state.json" not in names:
        problems.append("no trainer_state.json, which the Trainer writes last: the save did not finish")
    elif problem := json_problem(os.path.join(folder, "trainer_state.json")):
        problems.append(f"trainer_state.json {problem}")
    weights = [n for n in CHECKPOINT_WEIGHTS if n in names]
    if not weights and not sharded:
        problems.append("no model weights")
    problems += [f"{n} {p}" for n in weights if (p := file_problem(folder, n))]
    if not save_only_model and not sharded:
        problems += [f"no {n}" for n in ("optimizer.pt", "scheduler.pt") if n not in names]
    for i in teacher_states:
        name = TEACHER_STATE_FILE.format(i)
        if name not in names:
            problems.append(f"no {name} (the state of teacher {i}, which changes during training)")
        elif problem := file_problem(folder, name):
            problems.append(f"{name} {problem}")
    if has_adapters:
        if ADAPTERS_FILE not in names:
            problems.append(f"no {ADAPTERS_FILE} (the projection adapters' weights)")
        elif problem := file_problem(folder, ADAPTERS_FILE):
            problems.append(f"{ADAPTERS_FILE} {problem}")
    return problems


def newest_complete_checkpoint(output_dir: str, problems) -> str:
    """The newest ``checkpoint-N`` of ``output_dir`` for which ``problems(folder)`` is empty; newer ones that are not
    whole are skipped with a warning. A ``ValueError`` when none is."""
    pattern = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")
    found = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    steps = sorted((int(m.group(1)) for n in found if (m := pattern.match(n))), reverse=True)
    skipped = []
    for step in steps:
        folder = os.path.join(output_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
        if not os.path.isdir(folder):
            continue
        missing = problems(folder)
        if not missing:
            return folder
        logger.warning("Skipping %s, an incomplete checkpoint: %s.", folder, "; ".join(missing))
        skipped.append(os.path.basename(folder))
    if skipped:
        raise ValueError(
            f"resume_from_checkpoint=True but no checkpoint in {output_dir} is complete ({', '.join(skipped)} "
            "are not, see the warnings): train without resume_from_checkpoint to start afresh."
        )
    raise ValueError(
        f"resume_from_checkpoint=True but {output_dir} holds no {PREFIX_CHECKPOINT_DIR}-N folder: train without "
        "resume_from_checkpoint to start afresh."
    )


def checkpoint_to_resume(resume_from_checkpoint, output_dir: str, problems) -> str | None:
    """``Trainer.train``'s ``resume_from_checkpoint`` resolved: ``True`` is the newest complete checkpoint of
    ``output_dir``; a path must be complete (``problems(path)`` empty), else a ``ValueError`` says what it lacks."""
    if resume_from_checkpoint is True:
        return newest_complete_checkpoint(output_dir, problems)
    if isinstance(resume_from_checkpoint, str):
        missing = problems(resume_from_checkpoint)
        if missing:
            raise ValueError(
                f"{resume_from_checkpoint} is an incomplete checkpoint ({'; '.join(missing)}): resume from an "
                "earlier checkpoint, or pass resume_from_checkpoint=True to take the newest complete one."
            )
    return resume_from_checkpoint or None


def load_adapters(adapters: nn.Module, folder: str, required: bool) -> None:
    """Restore the projection adapters (every teacher's) from ``folder``; without the file, a ``ValueError`` when
    ``required`` (on resume: fresh adapters under a restored optimizer state would train wrong in silence)."""
    path = os.path.join(folder, ADAPTERS_FILE)
    if not os.path.isfile(path):
        if required:
            raise ValueError(
                f"{folder} has no {ADAPTERS_FILE}, the weights of this run's projection adapters: resume from a "
                "checkpoint this trainer saved with the same layer map and widths, or start afresh."
            )
        return
    state = safetensors.torch.load_file(path, device="cpu")
    missing = sorted(set(adapters.state_dict()) - set(state))
    unexpected = sorted(set(state) - set(adapters.state_dict()))
    if missing or unexpected:
        what = f"lacks {missing[0]!r}" if missing else f"holds {unexpected[0]!r}, which this run has no adapter for"
        raise ValueError(
            f"{path} {what} ({len(missing)} missing, {len(unexpected)} unexpected): it was saved by a run with other "
            "teachers, layer maps or widths; resume with the same teachers and config, or start afresh."
        )
    adapters.load_state_dict(state)


def sampling_state_name(process_index: int, world_size: int) -> str:
    """The file of this process's sampling stream in a checkpoint."""
    return SAMPLING_STATE_FILE.format(f"_{process_index}" if world_size > 1 else "")


def load_sampling_state(sampling, folder: str, name: str) -> None:
    """Restore the on-policy sampling stream ``sampling`` (a :class:`hf_distill.generation.SamplingRNG`) from
    ``folder/name``; a checkpoint without it gets a warning (the resumed run samples other completions)."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        logger.warning(
            "%s has no %s (saved by an older hf_distill, or with save_only_model): the resumed run samples other "
            "completions than an uninterrupted one would.",
            folder,
            name,
        )
        return
    sampling.load_state_dict(torch.load(path, weights_only=True))


def save_teacher_states(teachers, folder: str) -> None:
    """Write the state of each teacher that has one (:meth:`hf_distill.teachers.Teacher.state_dict`) to ``folder``."""
    for i, teacher in enumerate(teachers):
        state = teacher.state_dict()
        if state:  # copies: tied weights share memory, which safetensors refuses
            tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
            safetensors.torch.save_file(tensors, os.path.join(folder, TEACHER_STATE_FILE.format(i)))


def load_teacher_states(teachers, folder: str) -> None:
    """Restore the state of each teacher that has one from ``folder`` (a resumed run must continue it, not restart)."""
    for i, teacher in enumerate(teachers):
        if teacher.state_dict():
            path = os.path.join(folder, TEACHER_STATE_FILE.format(i))
            if not os.path.isfile(path):
                raise ValueError(
                    f"{folder} has no {TEACHER_STATE_FILE.format(i)}, the state of teacher {i} ({teacher.name}): "
                    "resume from a checkpoint this run's configuration saved, or start afresh."
                )
            teacher.load_state_dict(safetensors.torch.load_file(path, device="cpu"))


def checkpoint_folder(run_dir: str, step: int) -> str:
    """``run_dir/checkpoint-<step>``, created: the folder the Trainer is about to save a checkpoint in."""
    folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{step}")
    os.makedirs(folder, exist_ok=True)
    return folder


def save_adapters(adapters: dict[str, torch.Tensor], folder: str) -> None:
    """Write the projection adapters' weights (every teacher's, see :func:`load_adapters`) to ``folder``, if any."""
    if adapters:
        safetensors.torch.save_file(
            {k: v.contiguous() for k, v in adapters.items()}, os.path.join(folder, ADAPTERS_FILE)
        )
