"""Trainable projections that carry student hidden states into the teacher's width (TinyBERT's ``W_h``).

They live in one ``nn.Module`` that the trainer attaches to the student as the submodule
``hf_distill_adapters``: the Trainer then moves, optimises, wraps (DDP/FSDP/DeepSpeed), checkpoints and restores
them with the student, and DDP averages their gradients. ``save_model`` strips them from the saved student.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer_map import LayerMatch

ADAPTERS_ATTR = "hf_distill_adapters"
ADAPTERS_FILE = "distillation_adapters.safetensors"


class DistillationAdapters(nn.Module):
    """One ``nn.Linear(student_width, teacher_width)`` per hidden-state match that needs a projection."""

    def __init__(self, matches: list[LayerMatch], student_hidden_size: int, teacher_hidden_size: int):
        super().__init__()
        self.projections = nn.ModuleDict(
            {
                m.key: nn.Linear(student_hidden_size, teacher_hidden_size)
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


def strip_adapters(state_dict: dict) -> dict:
    """A state dict without the adapter entries (what ``save_model`` writes as the student)."""
    prefix = ADAPTERS_ATTR + "."
    return {k: v for k, v in state_dict.items() if not k.startswith(prefix) and f".{prefix}" not in k}


def adapter_state(state_dict: dict) -> dict:
    """Only the adapter entries of a full state dict, keys relative to the adapters module."""
    prefix = ADAPTERS_ATTR + "."
    return {k.split(prefix, 1)[1]: v for k, v in state_dict.items() if prefix in k}
