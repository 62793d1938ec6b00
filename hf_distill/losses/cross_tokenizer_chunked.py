"""The cross-tokenizer logit term of a batch, chunked: neither model's ``(B, T, V)`` logits ever exist.

The teacher gives its last hidden states and output head on its own rows, and the alignment of its positions with
the student's (:class:`CrossTokenizerTargets`, built by :class:`hf_distill.teachers.CrossTokenizerTeacher`). The
term walks over the ``G`` aligned groups ``chunk_size`` at a time: the chunk's student logits ``(n, V_s)`` come from
the student's hidden states at the compared positions (with exact gradients, :func:`hf_distill.losses.chunked
.chunked_linear_loss`), the teacher's ``(n, V_t)`` from its hidden states, and the parts of
:func:`hf_distill.losses.cross_tokenizer.cross_tokenizer_loss` (exact, ULD, chain rule) are summed over the chunk.
The chain rule's span log-probabilities are gathered first, chunk by chunk too. Peak memory: ``O(chunk_size x
(V_s + V_t))``, whatever the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .chunked import chunked_linear_loss, head_params
from .cross_tokenizer import (
    ULD_TOP_K,
    ChainRows,
    CrossTokenizerMix,
    chain_rule_divergence,
    shared_vocab_divergence,
    uld_loss,
)


@dataclass(frozen=True)
class CrossTokenizerTargets:
    """What a teacher with another tokenizer gives beside its hidden states: the alignment of one batch.

    Attributes:
        aligned: the ``G`` groups' compared positions (``teacher`` in the teacher's rows, ``student`` in the
            student's).
        chain: the teacher positions of the groups of one student token (``hf_distill.cross_tokenizer.align.chain_rule_rows``).
        shared: ``(student_ids, teacher_ids)``, ``(N,)`` each: the tokens both vocabularies spell alike.
        softcap: the teacher's final logit soft-capping (``cap * tanh(z / cap)``; Gemma-2), ``None`` for none.
    """

    aligned: object  # hf_distill.cross_tokenizer.align.AlignedPositions
    chain: ChainRows
    shared: tuple[torch.Tensor, torch.Tensor]
    softcap: float | None = None


def teacher_logits(hidden: torch.Tensor, head, softcap: float | None) -> torch.Tensor:
    """``(n, D_t) -> (n, V_t)`` float32 logits of the teacher's head (no gradient)."""
    weight, bias = head_params(head, "the teacher's head")
    logits = F.linear(hidden.to(weight.dtype), weight, bias).float()
    return softcap * torch.tanh(logits / softcap) if softcap else logits


@torch.no_grad()
def chain_logprobs(
    teacher_hidden: torch.Tensor, head, chain: ChainRows, temperature: float, softcap, chunk_size: int
) -> torch.Tensor:
    """``(C,)``: the teacher's log-probability of each chain group's stretch of text (the chain rule over its
    tokens, each factor at ``temperature``), computed ``chunk_size`` positions at a time."""
    rows = torch.zeros(len(chain.tokens), device=teacher_hidden.device)
    tokens = chain.tokens.to(teacher_hidden.device)
    for start in range(0, len(tokens), chunk_size):
        end = min(start + chunk_size, len(tokens))
        h = teacher_hidden[chain.batch[start:end], chain.positions[start:end]]  # (n, D_t)
        scaled = teacher_logits(h, head, softcap) / temperature  # (n, V_t)
        rows[start:end] = scaled.gather(-1, tokens[start:end, None]).squeeze(-1) - scaled.logsumexp(-1)
    group = torch.arange(len(chain.counts), device=rows.device).repeat_interleave(chain.counts.to(rows.device))
    return torch.zeros(len(chain.counts), device=rows.device).index_add_(0, group, rows)


def cross_tokenizer_term(
    student_hidden: torch.Tensor,
    student_head,
    teacher_hidden: torch.Tensor,
    teacher_head,
    targets: CrossTokenizerTargets,
    *,
    normalizer: float | torch.Tensor,
    mix: CrossTokenizerMix | None = None,
    loss: str = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    uld_top_k: int | None = ULD_TOP_K,
    chunk_size: int = 256,
    positions: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, parts)``: ``sum_parts mix.part * (sum over groups of the part) / normalizer`` and each part's value
    (detached), as :func:`hf_distill.losses.cross_tokenizer.cross_tokenizer_loss` defines them.

    Args:
        student_hidden: ``(B, T_s, D_s)`` the student's last hidden states (unshifted); ``student_head`` its output
            head (``nn.Linear``-like, weight ``(V_s, D_s)``). For a student whose logits are at hand, pass the
            logits ``(B, T_s, V_s)`` and ``student_head=None``.
        teacher_hidden: ``(B, T_t, D_t)`` the teacher's, on its own rows; ``teacher_head`` its head.
        targets: the batch's alignment and shared vocabulary.
        normalizer: the divisor of every part: the items of the whole gradient-accumulation window.
        mix, loss, temperature, beta, uld_top_k: the parts' weights and the divergence.
        chunk_size: the groups per chunk.
        positions: optional ``(B, T_s)`` bool, the student positions that may be compared (those whose next token
            is a target: not a prompt's, not padding); a group at another position is left out. ``None``: all.
    """
    mix = CrossTokenizerMix() if mix is None else mix
    aligned, device = targets.aligned, student_hidden.device
    b, s, t = (x.to(device) for x in (aligned.batch, aligned.student, aligned.teacher))
    student_ids, teacher_ids = (x.to(device) for x in targets.shared)
    # the teacher's hidden state at each group, placed at the group's student position (one group per position)
    t_rows = torch.zeros(
        *student_hidden.shape[:2], teacher_hidden.shape[-1], dtype=teacher_hidden.dtype, device=device
    )
    t_rows[b, s] = teacher_hidden.detach()[b, t.to(teacher_hidden.device)].to(device)
    mask = torch.zeros(student_hidden.shape[:2], dtype=torch.bool, device=device)
    mask[b, s] = True
    if positions is not None:
        mask &= positions.to(device, torch.bool)
    chain_token = torch.full(student_hidden.shape[:2], -1, dtype=torch.long, device=device)
    chain_logprob = torch.zeros(student_hidden.shape[:2], device=device)
    if mix.chain > 0 and len(targets.chain.groups):
        groups = targets.chain.groups.to(device)
        chain_token[b[groups], s[groups]] = targets.chain.student_tokens.to(device)
        chain_logprob[b[groups], s[groups]] = chain_logprobs(
            teacher_hidden, teacher_head, targets.chain, temperature, targets.softcap, chunk_size
        ).to(device)
    parts = {name: torch.zeros((), device=device) for name in ("exact", "uld", "chain") if getattr(mix, name) > 0}
    kw = {"loss": loss, "temperature": temperature, "beta": beta, "normalizer": 1.0}

    def chunk_loss(s_logits: torch.Tensor, chunk: dict) -> torch.Tensor:  # the chunk's summed, weighted parts
        t_logits = teacher_logits(chunk["teacher"], teacher_head, targets.softcap)  # (n, V_t)
        total = torch.zeros((), device=s_logits.device)
        if "exact" in parts:
            value = shared_vocab_divergence(s_logits, t_logits, student_ids, teacher_ids, **kw)
            parts["exact"] += value.detach()
            total = total + mix.exact * value
        if "uld" in parts:
            value = uld_loss(s_logits, t_logits, temperature=temperature, top_k=uld_top_k, normalizer=1.0)
            parts["uld"] += value.detach()
            total = total + mix.uld * value
        if "chain" in parts and bool((keep := chunk["chain_token"] >= 0).any()):
            value = chain_rule_divergence(
                s_logits[keep], chunk["chain_token"][keep], chunk["chain_logprob"][keep], **kw
            )
            parts["chain"] += value.detach()
            total = total + mix.chain * value
        return total

    columns = {"teacher": t_rows, "chain_token": chain_token, "chain_logprob": chain_logprob}
    if student_head is None:  # full logits: the chunks of the gathered rows, through autograd
        rows = student_hidden[mask]  # (G, V_s), in (row, position) order, the order of the groups
        flat = {k: v[mask] for k, v in columns.items()}
        total = sum(
            chunk_loss(rows[i : i + chunk_size], {k: v[i : i + chunk_size] for k, v in flat.items()})
            for i in range(0, len(rows), chunk_size)
        )
        total = total if isinstance(total, torch.Tensor) else student_hidden.sum() * 0.0
    else:
        total = chunked_linear_loss(
            student_hidden, student_head, chunk_loss, columns, mask=mask, chunk_size=chunk_size
        )
    return total / normalizer, {k: v / normalizer for k, v in parts.items()}
