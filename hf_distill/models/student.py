"""Build a smaller student from a teacher by keeping some of its layers (DistilBERT / TinyBERT initialisation)."""

from __future__ import annotations

import copy
import logging
import operator

import torch
from transformers import PreTrainedModel

from .facts import arch_facts, get_layers, layers_prefix

logger = logging.getLogger(__name__)


def _select_layers(teacher_layers: int, layers, causal: bool = False) -> list[int]:
    if layers is None and causal:  # decoders: every other layer, starting with the first one
        return list(range(0, teacher_layers, 2))
    if layers is None:  # encoders: every other layer, ending with the last one (so that the `uniform` map lines up)
        return list(range(teacher_layers - 1, -1, -2))[::-1]
    if isinstance(layers, str):  # "0,2" would be read character by character
        hint = layers.replace(" ", "").replace(",", ", ")
        raise ValueError(
            f"layers={layers!r} is a string; pass a list of 0-based teacher layers, e.g. layers=[{hint}]."
        )
    try:
        layers = [operator.index(i) for i in layers]
    except TypeError:
        raise ValueError(
            f"layers={layers!r}: pass a list of 0-based teacher layers (ints), e.g. layers=[1, 3]."
        ) from None
    if not layers:
        raise ValueError("layers must name at least one teacher layer.")
    bad = [i for i in layers if not 0 <= i < teacher_layers]
    if bad:
        raise ValueError(f"layers {bad} are out of range: the teacher has layers 0..{teacher_layers - 1} (0-based).")
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"layers must be strictly increasing, got {layers}.")
    return layers


def _student_config(teacher_config, layers: list[int], overrides: dict):
    config = copy.deepcopy(teacher_config)
    config.num_hidden_layers = len(layers)
    # per-layer lists (e.g. Qwen2's sliding/full attention `layer_types`) follow the chosen layers
    if isinstance(getattr(config, "layer_types", None), list | tuple):
        config.layer_types = [config.layer_types[i] for i in layers]
    for key, value in overrides.items():
        setattr(config, key, value)
    config.distillation_teacher_layers = layers
    return config


def _teacher_key(key: str, prefix: str, layers: list[int]) -> str:
    """Map a student state-dict key to the teacher key it is copied from (block ``j`` <- block ``layers[j]``)."""
    if not key.startswith(prefix + "."):
        return key
    index, rest = key[len(prefix) + 1 :].split(".", 1)
    return f"{prefix}.{layers[int(index)]}.{rest}"


def build_student(teacher: PreTrainedModel, layers=None, **config_overrides) -> PreTrainedModel:
    """A new model of the teacher's class with the chosen teacher layers, embeddings and head copied.

    Args:
        teacher: a transformers model whose ``config.model_type`` is in ``hf_distill.models.MODEL_FACTS``
            (BERT family, Llama/Qwen2/Mistral/Gemma, GPT-2...).
        layers: 0-based teacher block indices to keep, strictly increasing. Default for encoders: every other
            layer, ending with the last (``[1, 3, 5]`` of 6), which lines up with ``layer_map="uniform"``. Default
            for decoders (``causal`` in ``MODEL_FACTS``): every other layer, starting with the first (``[0, 2, 4]``
            of 6; pair it with ``layer_map="init"``). Measured on SmolLM2-135M to 15 layers (docs/causal_lm.md):
            dropping block 0 costs far more than dropping the last block.
        **config_overrides: config fields to change, e.g. ``hidden_size=256``. Tensors whose shape changes
            start from the model's random initialisation; all others are copied.

    The chosen layers are recorded as ``config.distillation_teacher_layers``. Copying every layer reproduces the
    teacher exactly; the result saves and loads with plain ``save_pretrained`` / ``from_pretrained``.
    """
    teacher_layers = len(get_layers(teacher))
    layers = _select_layers(teacher_layers, layers, causal=arch_facts(teacher).causal)
    unknown = [k for k in config_overrides if not hasattr(teacher.config, k)]
    if unknown:
        raise ValueError(f"config overrides {unknown} are not fields of {type(teacher.config).__name__}.")
    config = _student_config(teacher.config, layers, config_overrides)
    dtype = next(teacher.parameters()).dtype
    student = type(teacher)(config).to(dtype)
    prefix = layers_prefix(teacher)
    teacher_state = teacher.state_dict()
    state, fresh = student.state_dict(), []
    for key, value in state.items():
        source = teacher_state.get(_teacher_key(key, prefix, layers))
        if source is not None and source.shape == value.shape:
            with torch.no_grad():
                value.copy_(source)
        else:
            fresh.append(key)
    if fresh:
        logger.info("build_student: %d tensors start from random init (shapes changed): %s", len(fresh), fresh[:8])
    if getattr(teacher, "generation_config", None) is not None and hasattr(student, "generation_config"):
        student.generation_config = copy.deepcopy(teacher.generation_config)
    logger.info("build_student: kept teacher layers %s of %d", layers, teacher_layers)
    return student.to(next(teacher.parameters()).device).train(teacher.training)
