"""The hidden-state and attention KD terms: registry losses summed over the layer matches, with their weights.

Layer indices are hidden-state indices (0 = embeddings, block ``i`` = ``i``), as in
:class:`hf_distill.mapping.LayerMatch`. ``mask`` is ``(B, T)`` with 1 for real tokens; ``normalizer`` the number of
real tokens (one item is one token, or one query row).
"""

from __future__ import annotations

import math

import torch

from .attention import match_heads
from .registry import get_loss, loss_needs


def hidden_term(matches, student_hidden, teacher_hidden, *, mask=None, normalizer=None) -> torch.Tensor:
    """``Σ_m w_m · loss_m(student, teacher[m.teacher_layer])`` over the hidden matches.

    Args:
        matches: layer matches; those with ``feature == "hidden"`` are used, in order.
        student_hidden: one ``(B, T, Dt)`` tensor per hidden match, in order: the student's states already projected
            to the teacher's width.
        teacher_hidden: the teacher's ``hidden_states``, ``(B, T, Dt)`` each.
    """
    total = 0.0
    hidden = [m for m in matches if m.feature == "hidden"]
    for m, student in zip(hidden, student_hidden, strict=True):
        loss = get_loss("hidden", m.loss)(student, teacher_hidden[m.teacher_layer], mask=mask, normalizer=normalizer)
        total = total + m.weight * loss
    return total


def attention_term(
    matches,
    *,
    student_attentions=None,
    teacher_attentions=None,
    student_qkv=None,
    teacher_qkv=None,
    mask=None,
    normalizer=None,
    relation_heads: int = 1,
    head_reduction: str = "none",
) -> torch.Tensor:
    """``Σ_m w_m · loss_m`` over the attention matches.

    Map losses (``kl``, ``mse``) compare ``attentions[layer - 1]``, ``(B, H, T, T)`` each (``head_reduction`` as in
    :func:`match_heads`). A loss that needs ``"qkv"`` (``relation``) averages over queries, keys and values, from
    ``qkv[layer] = [q, k, v]`` (``(B, T, D_x)`` each, see :func:`hf_distill.models.capture_qkv`).
    """
    total = 0.0
    for m in (m for m in matches if m.feature == "attention"):
        fn = get_loss("attention", m.loss)
        if "qkv" in loss_needs("attention", m.loss):
            pairs = zip(student_qkv[m.student_layer], teacher_qkv[m.teacher_layer])
            kw = {"mask": mask, "normalizer": normalizer, "num_relation_heads": relation_heads}
            loss = sum(fn(s, t, **kw) for s, t in pairs) / 3
        else:
            if student_attentions is None or teacher_attentions is None:
                raise RuntimeError("The models returned no attention maps: attention-map KD needs eager attention.")
            s_attn, t_attn = match_heads(
                student_attentions[m.student_layer - 1], teacher_attentions[m.teacher_layer - 1], head_reduction
            )
            loss = fn(s_attn, t_attn, mask=mask, normalizer=normalizer)
        total = total + m.weight * loss
    return total


def default_relation_heads(student_config, teacher_config) -> int:
    """Relation heads that split every Q/K/V width of both models: the student's head count when it does, else the
    gcd of the widths (grouped-query K/V are narrower than Q)."""
    widths = []
    for cfg in (student_config, teacher_config):
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        kv = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        widths += [cfg.num_attention_heads * head_dim, kv * head_dim]
    heads = student_config.num_attention_heads
    return heads if all(w % heads == 0 for w in widths) else math.gcd(*widths)
