"""Checks run before training: label spaces and attention backends of teacher and student (vocabularies: models/vocab.py)."""

from __future__ import annotations

import logging

from torch import nn

logger = logging.getLogger(__name__)


def _is_default_id2label(id2label: dict | None) -> bool:
    return not id2label or all(str(v) == f"LABEL_{int(k)}" for k, v in id2label.items())


def check_label_spaces(student_config, teacher_config) -> None:
    """Refuse teacher/student pairs whose class outputs differ in count or order.

    A silently permuted label order (teacher ``{0: negative, 1: positive}``, student the other way round) is the
    classic GLUE distillation bug: the soft targets then teach the opposite of the labels.
    """
    s_n, t_n = student_config.num_labels, teacher_config.num_labels
    if s_n != t_n:
        raise ValueError(f"The student has {s_n} labels and the teacher {t_n}; logit KD needs the same label set.")
    s_map = {int(k): v for k, v in (student_config.id2label or {}).items()}
    t_map = {int(k): v for k, v in (teacher_config.id2label or {}).items()}
    if _is_default_id2label(s_map) or _is_default_id2label(t_map):
        if not (_is_default_id2label(s_map) and _is_default_id2label(t_map)):
            logger.warning(
                "Only one of student/teacher has named labels (student %s, teacher %s); assuming the same order.",
                s_map,
                t_map,
            )
        return
    if s_map != t_map:
        hint = " (same names, different order)" if sorted(s_map.values()) == sorted(t_map.values()) else ""
        raise ValueError(
            f"Student id2label {s_map} and teacher id2label {t_map} differ{hint}. Build the student from the teacher "
            "(build_student) or pass the teacher's id2label/label2id when creating the student."
        )


def ensure_eager_attention(model: nn.Module, role: str) -> None:
    """Attention-map KD needs eager attention (SDPA and flash kernels return no maps): switch to it or fail now."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current in (None, "eager"):
        return
    try:
        model.set_attn_implementation("eager")
    except Exception as err:  # a model without the switch
        raise ValueError(
            f"Attention KD on maps needs eager attention, but the {role} uses {current!r} and could not be switched "
            f"({err}). Load it with attn_implementation='eager' or use attention_loss='relation'."
        ) from err
    logger.warning("Switched the %s from %r to eager attention: attention-map KD needs the maps.", role, current)
