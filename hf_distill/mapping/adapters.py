"""Trainable projections that carry student hidden states into the teacher's width (TinyBERT's ``W_h``).

They live in one ``nn.Module`` that the trainer attaches to the student as the submodule
``hf_distill_adapters``: the Trainer then moves, optimises, wraps (DDP/FSDP/DeepSpeed), checkpoints and restores
them with the student, and DDP averages their gradients. ``save_model`` strips them from the saved student. With
several teachers, each teacher's projections (to its own width) sit in the same module, keyed by teacher.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..models.facts import unwrap
from .layer_map import LayerMatch

ADAPTERS_ATTR = "hf_distill_adapters"
ADAPTERS_FILE = "distillation_adapters.safetensors"


class DistillationAdapters(nn.Module):
    """One ``nn.Linear(student_width, teacher_width)`` per hidden-state match that needs a projection, for every
    teacher, in one ``ModuleDict`` keyed by :attr:`LayerMatch.key` (teacher 0's keys carry no prefix)."""

    def __init__(self, matches: list[LayerMatch], student_hidden_size: int, teacher_hidden_size: int | Sequence[int]):
        super().__init__()
        widths = [teacher_hidden_size] if isinstance(teacher_hidden_size, int) else list(teacher_hidden_size)
        self.projections = nn.ModuleDict(
            {
                m.key: nn.Linear(student_hidden_size, widths[m.teacher])
                for m in matches
                if m.feature == "hidden" and m.projection == "linear"
            }
        )

    def __len__(self) -> int:
        return len(self.projections)

    def project(self, match: LayerMatch, hidden: torch.Tensor) -> torch.Tensor:
        """``(B, T, Ds) -> (B, T, Dt)`` for a projected match; the identity otherwise."""
        if match.key not in self.projections:
            return hidden
        proj = self.projections[match.key]
        return proj(hidden.to(proj.weight.dtype))


def attach_adapters(model: nn.Module, matches: list[LayerMatch], teacher_hidden_sizes: Sequence[int]):
    """Attach the projection adapters of every teacher's matches to ``model`` (a transformers model, PEFT-wrapped or
    not) as the submodule ``ADAPTERS_ATTR``, left out of a plain ``save_pretrained`` too; returns them, or ``None``
    when no match needs one."""
    inner = unwrap(model)
    adapters = DistillationAdapters(matches, inner.config.hidden_size, teacher_hidden_sizes)
    if not len(adapters):
        return None
    inner.add_module(ADAPTERS_ATTR, adapters)
    # training-only weights: a plain `student.save_pretrained()` leaves them out too, not just save_model
    ignored = {f"{ADAPTERS_ATTR}.{key}" for key in adapters.state_dict()}
    inner._keys_to_ignore_on_save = set(inner._keys_to_ignore_on_save or ()) | ignored
    return adapters


def projection_hook(matches: list[LayerMatch]):
    """A forward hook for the student that projects its matched hidden states to each teacher's width *inside* the
    forward, so that DDP sees the adapters as used parameters and averages their gradients.

    The projections are appended to ``output.hidden_states``, one per hidden match in the order of ``matches`` (DDP
    rebuilds model outputs from their fields, so a new field would not survive); :func:`projected_states` reads
    them back by match key.
    """
    hidden = [m for m in matches if m.feature == "hidden"]

    def hook(module, args, output):
        if not hidden:
            return output
        adapters = getattr(module, ADAPTERS_ATTR, None)
        output.hidden_states = tuple(output.hidden_states) + tuple(
            adapters.project(m, output.hidden_states[m.student_layer])
            if adapters is not None
            else output.hidden_states[m.student_layer]
            for m in hidden
        )
        return output

    return hook


def projected_states(matches: list[LayerMatch], hidden_states: tuple) -> dict[str, torch.Tensor]:
    """``{match.key: (B, T, Dt)}`` of the projections :func:`projection_hook` appended to ``hidden_states``."""
    hidden = [m for m in matches if m.feature == "hidden"]
    if not hidden:
        return {}
    tail = hidden_states[len(hidden_states) - len(hidden) :]
    return {m.key: state for m, state in zip(hidden, tail, strict=True)}


def strip_adapters(state_dict: dict) -> dict:
    """A state dict without the adapter entries (what ``save_model`` writes as the student)."""
    prefix = ADAPTERS_ATTR + "."
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix) and f".{prefix}" not in k}


def adapter_state(state_dict: dict) -> dict:
    """Only the adapter entries of a full state dict, keys relative to the adapters module."""
    prefix = ADAPTERS_ATTR + "."
    return {k.split(prefix, 1)[1]: v for k, v in state_dict.items() if prefix in k}
