"""Pure distillation losses behind one registry (see :mod:`hf_distill.losses.registry`)."""

from . import attention, hidden, logits  # noqa: F401  (registers the built-in losses)
from .attention import match_heads
from .logits import mix_teacher_logits
from .matched import attention_term, default_relation_heads, hidden_term
from .reduction import count_items, flatten_valid, reduce_items
from .registry import LOSS_INPUTS, LOSS_KINDS, available_losses, get_loss, loss_needs, register_loss
from .task import align_logits, check_labels, target_mask, task_loss
from .token import TeacherTargets, fused_causal_lm_loss
from .topk import teacher_topk, topk_token_kd

__all__ = [
    "LOSS_INPUTS",
    "LOSS_KINDS",
    "TeacherTargets",
    "align_logits",
    "attention_term",
    "available_losses",
    "check_labels",
    "count_items",
    "default_relation_heads",
    "flatten_valid",
    "fused_causal_lm_loss",
    "get_loss",
    "hidden_term",
    "loss_needs",
    "match_heads",
    "mix_teacher_logits",
    "reduce_items",
    "register_loss",
    "target_mask",
    "task_loss",
    "teacher_topk",
    "topk_token_kd",
]
