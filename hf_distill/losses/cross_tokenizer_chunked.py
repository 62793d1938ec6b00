"""The cross-tokenizer logit term of a batch, chunked: neither model's ``(B, T, V)`` logits ever exist.

The teacher gives its last hidden states and output head on its own rows, and the alignment of its positions with
the student's (:class:`CrossTokenizerTargets`, built by :class:`hf_distill.teachers.CrossTokenizerTeacher`). The
term walks over the ``G`` aligned groups ``chunk_size`` at a time: the chunk's student logits ``(n, V_s)`` come from
the student's hidden states at the compared positions (with exact gradients, :func:`hf_distill.losses.chunked
.chunked_linear_loss`), the teacher's ``(n, V_t)`` from its hidden states, and the parts of
:func:`hf_distill.losses.cross_tokenizer.cross_tokenizer_loss` (exact, ULD, chain rule) are summed over the chunk.
The chain rule's span log-probabilities are gathered first, chunk by chunk too. Peak memory: ``O(chunk_size x
(V_s + V_t))``, whatever the batch.

From a cross-tokenizer teacher cache (:class:`CachedCrossTokenizerTargets`, built by
:func:`hf_distill.data.build_teacher_cache` with a :class:`hf_distill.teachers.CrossTokenizerTeacher`) the teacher
side of a chunk is its stored top-k instead of logits from its hidden states (:class:`hf_distill.losses
.cross_tokenizer.TopKRows`: the exact part over the shared tokens found in the top-k, ULD over the top-k sorted
probabilities), and the chain part reads the stored span log-probabilities. The same chunks, the same parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .chunked import chunked_linear_loss, head_params
from .cross_tokenizer import (
    ULD_TOP_K,
    ChainRows,
    ChainTargets,
    CrossTokenizerMix,
    TopKRows,
    cross_tokenizer_loss,
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


@dataclass(frozen=True)
class CachedCrossTokenizerTargets:
    """What a cross-tokenizer teacher cache gives for one batch, laid out at the student's positions ``(B, T_s)``
    (one group per compared student position).

    Attributes:
        groups: ``(B, T_s)`` bool: the position is a group's compared student position.
        topk_ids, topk_logprobs: ``(B, T_s, k)``: the teacher's top-k ids and log-probabilities (at the training
            temperature, over its whole vocabulary) at the group's teacher position; anything elsewhere.
        chain_tokens: ``(B, T_s)`` long: the student's token of a group of one student token (``input_ids[b, s +
            1]``), ``-1`` elsewhere.
        chain_logprobs: ``(B, T_s)``: the teacher's log-probability of that group's stretch of text; anything where
            ``chain_tokens`` is ``-1``.
        shared: ``(student_ids, teacher_ids)``, ``(N,)`` each: the tokens both vocabularies spell alike.
    """

    groups: torch.Tensor
    topk_ids: torch.Tensor
    topk_logprobs: torch.Tensor
    chain_tokens: torch.Tensor
    chain_logprobs: torch.Tensor
    shared: tuple[torch.Tensor, torch.Tensor]


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


def teacher_columns(
    targets: CrossTokenizerTargets | CachedCrossTokenizerTargets,
    teacher_hidden: torch.Tensor | None,
    teacher_head,
    shape: torch.Size,
    device: torch.device,
    *,
    chain: bool,
    temperature: float,
    chunk_size: int,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(mask, columns)`` at the student's positions ``shape = (B, T_s)``: the compared positions, and the teacher
    side of each: its hidden state (live) or its top-k (cached), and the chain part's student token (``-1``: none)
    and teacher log-probability."""
    chain_token = torch.full(shape, -1, dtype=torch.long, device=device)
    chain_logprob = torch.zeros(shape, device=device)
    if isinstance(targets, CachedCrossTokenizerTargets):
        mask = targets.groups.to(device).bool()
        if chain:
            tokens = targets.chain_tokens.to(device)
            chain_token = tokens.masked_fill(~mask, -1)
            chain_logprob = torch.where(chain_token >= 0, targets.chain_logprobs.to(device, torch.float32), 0.0)
        columns = {"topk_ids": targets.topk_ids.to(device), "topk_logprobs": targets.topk_logprobs.to(device)}
        return mask, {**columns, "chain_token": chain_token, "chain_logprob": chain_logprob}
    aligned = targets.aligned
    b, s, t = (x.to(device) for x in (aligned.batch, aligned.student, aligned.teacher))
    # the teacher's hidden state at each group, placed at the group's student position (one group per position)
    t_rows = torch.zeros(*shape, teacher_hidden.shape[-1], dtype=teacher_hidden.dtype, device=device)
    t_rows[b, s] = teacher_hidden.detach()[b, t.to(teacher_hidden.device)].to(device)
    mask = torch.zeros(shape, dtype=torch.bool, device=device)
    mask[b, s] = True
    if chain and len(targets.chain.groups):
        groups = targets.chain.groups.to(device)
        chain_token[b[groups], s[groups]] = targets.chain.student_tokens.to(device)
        chain_logprob[b[groups], s[groups]] = chain_logprobs(
            teacher_hidden, teacher_head, targets.chain, temperature, targets.softcap, chunk_size
        ).to(device)
    return mask, {"teacher": t_rows, "chain_token": chain_token, "chain_logprob": chain_logprob}


def cross_tokenizer_term(
    student_hidden: torch.Tensor,
    student_head,
    teacher_hidden: torch.Tensor | None,
    teacher_head,
    targets: CrossTokenizerTargets | CachedCrossTokenizerTargets,
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
        teacher_hidden: ``(B, T_t, D_t)`` the teacher's, on its own rows; ``teacher_head`` its head. ``None`` both
            with cached targets.
        targets: the batch's alignment and shared vocabulary (live), or a teacher cache's targets.
        normalizer: the divisor of every part: the items of the whole gradient-accumulation window.
        mix, loss, temperature, beta, uld_top_k: the parts' weights and the divergence.
        chunk_size: the groups per chunk.
        positions: optional ``(B, T_s)`` bool, the student positions that may be compared (those whose next token
            is a target: not a prompt's, not padding); a group at another position is left out. ``None``: all.
    """
    mix = CrossTokenizerMix() if mix is None else mix
    device = student_hidden.device
    student_ids, teacher_ids = (x.to(device) for x in targets.shared)
    mask, columns = teacher_columns(
        targets, teacher_hidden, teacher_head, student_hidden.shape[:2], device, chain=mix.chain > 0,
        temperature=temperature, chunk_size=chunk_size,
    )  # fmt: skip
    if positions is not None:  # only positions whose next token is a target
        mask = mask & positions.to(device, torch.bool)
    softcap = getattr(targets, "softcap", None)
    parts = {name: torch.zeros((), device=device) for name in ("exact", "uld", "chain") if getattr(mix, name) > 0}
    kw = {"mix": mix, "loss": loss, "temperature": temperature, "beta": beta, "uld_top_k": uld_top_k}

    def chunk_loss(s_logits: torch.Tensor, chunk: dict) -> torch.Tensor:  # the chunk's summed, weighted parts
        if "teacher" in chunk:  # (n, V_t) from the teacher's hidden states
            teacher = teacher_logits(chunk["teacher"], teacher_head, softcap)
        else:  # (n, k) from the cache
            teacher = TopKRows(chunk["topk_ids"], chunk["topk_logprobs"])
        keep = (chunk["chain_token"] >= 0).nonzero().squeeze(1)  # the chunk's rows of one student token
        chain = ChainTargets(keep, chunk["chain_token"][keep], chunk["chain_logprob"][keep])
        total, terms = cross_tokenizer_loss(
            s_logits, teacher, (student_ids, teacher_ids), num_items=1.0, chain=chain, **kw
        )  # summed over the chunk's rows
        for name, value in terms.items():
            parts[name] += value.detach()
        return total

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
