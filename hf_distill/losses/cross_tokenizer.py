"""Losses between a teacher's and a student's next-token distributions at aligned positions, across vocabularies.

Pure functions on the rows of the compared positions (``align.aligned_positions``): ``G`` groups, the student's
logits ``(G, V_s)`` and the teacher's ``(G, V_t)`` at the positions that predict the same next stretch of text.
Every part sums over groups and divides by ``normalizer`` / ``num_items`` (default: a mean over ``G``), so a caller
can cut the groups into chunks (never a full ``(B, T, V)`` tensor) and add the chunks' values. The teacher side is
always detached. Formulas in docs/losses.md, "Cross-tokenizer losses"; ``p = softmax(z / T)`` on each side.

The teacher's rows are its logits ``(G, V_t)``, or its top-k (:class:`TopKRows`, read from a teacher cache): the
exact part then keeps the shared tokens found among the teacher's top-k and puts every other token of both sides in
the rest bucket, ULD compares the teacher's top-k sorted probabilities (zeros after them); with ``k = V_t`` both
equal the parts on logits. The chain part reads the teacher's span log-probabilities, stored or computed alike.

- **exact** (:func:`shared_vocab_divergence`): both distributions coarsened to the ``N`` shared tokens plus one
  *rest* bucket (each side's other tokens), and a registered divergence between these ``N + 1`` outcomes, times
  ``T^2``.
- **uld** (:func:`uld_loss`, Boizard et al. 2024): ``sum_i |p_s^(i) - p_t^(i)|`` over the probabilities sorted in
  decreasing order, the shorter vector padded with zeros; the first ``top_k`` sorted entries only.
- **chain** (:func:`chain_rule_divergence`): for a group of one student token ``y`` over teacher tokens
  ``t_1..t_m``, the teacher's probability of the stretch ``log q = sum_j log p_t(t_j | t_<j)`` (:func:`span_logprobs`)
  is the target of ``p_s(y)``: a divergence between ``{y, rest}`` distributions, times ``T^2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .reduction import reduce_items
from .registry import available_losses, get_loss, loss_needs

# Sorted entries ULD compares by default: a full sort of a (G, V) float32 block also returns int64 indices, 12 bytes
# per entry (G = 2048 positions of Gemma-3's V = 262,144: 6.4 GB); the top 1024 cost (G, 1024), 25 MB.
ULD_TOP_K = 1024

# A rest bucket below this counts as this much. The buckets are computed without cancellation (a log-sum-exp of the
# other logits, or expm1), so the floor only stands in for an exactly empty bucket: one side sharing every token while
# the other does not would make a KL infinite. Equal floors on both sides change a divergence by ~1e-20 relative.
REST_FLOOR = 1e-20
LOG_REST_FLOOR = math.log(REST_FLOOR)
PARTS = ("exact", "uld", "chain")


def check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")


def divergence(loss: str):
    """The registered logits divergence ``loss``; a loss on raw logits (``mse``) is refused (vocabularies differ)."""
    fn = get_loss("logits", loss)
    if "topk" not in loss_needs("logits", loss):
        usable = [name for name in available_losses("logits") if "topk" in loss_needs("logits", name)]
        raise ValueError(
            f"loss={loss!r} compares raw logits, which two vocabularies do not share; use a divergence "
            f"({', '.join(usable)})."
        )
    return fn


@dataclass(frozen=True)
class TopKRows:
    """A teacher's next-token distributions known by their top-k (a teacher cache), one row per aligned group.

    Attributes:
        ids: ``(G, k)`` teacher token ids, in decreasing probability.
        logprobs: ``(G, k)`` their log-probabilities at the training temperature, normalised over the teacher's whole
            vocabulary: ``1 - sum(exp(logprobs))`` is the mass of its other tokens.
    """

    ids: torch.Tensor
    logprobs: torch.Tensor

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    def dim(self) -> int:
        return self.ids.dim()

    def __len__(self) -> int:
        return len(self.ids)


def check_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopKRows) -> None:
    if isinstance(teacher_logits, TopKRows) and teacher_logits.ids.shape != teacher_logits.logprobs.shape:
        raise ValueError(
            f"teacher top-k ids {tuple(teacher_logits.ids.shape)} and log-probabilities "
            f"{tuple(teacher_logits.logprobs.shape)}: give one log-probability per id, (G, k) each"
        )
    if student_logits.dim() != 2 or teacher_logits.dim() != 2 or len(student_logits) != len(teacher_logits):
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)}: give "
            "(G, V_s) and (G, V_t), one row per aligned group"
        )


def check_ids(ids: torch.Tensor, vocab: int | None, role: str) -> None:
    """Shared ids of one side: a 1-D integer tensor of distinct ids in ``[0, vocab)`` (``None``: vocabulary unknown)."""
    if ids.dim() != 1 or ids.is_floating_point() or ids.is_complex():
        raise ValueError(f"{role}_ids {tuple(ids.shape)} {ids.dtype}: give a 1-D integer tensor of token ids")
    vocab = vocab if vocab is not None else math.inf
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
        raise ValueError(
            f"{role}_ids hold ids in [{int(ids.min())}, {int(ids.max())}] but the {role} has {vocab} logits: pass "
            "the shared vocabulary of this teacher and student"
        )
    if torch.unique(ids).numel() != ids.numel():
        raise ValueError(f"{role}_ids repeat a token id: each shared token must appear once (shared_vocabulary)")


def shared_log_probs(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """One side's distribution coarsened to its shared tokens and a rest bucket.

    Args:
        logits: ``(G, V)`` logits, any float dtype (maths in float32).
        ids: ``(N,)`` distinct ids of the shared tokens in this side's vocabulary.
        temperature: ``T``; the distribution is ``softmax(logits / T)``.

    Returns:
        ``(G, N + 1)`` log-probabilities: ``log p(ids[n])``, then ``log`` of the rest,
        ``logsumexp(non-shared z / T) - logsumexp(z / T)`` (exact, no ``1 - sum`` cancellation), raised to
        ``log(REST_FLOOR)`` when smaller (:data:`REST_FLOOR`), so the entries sum to 1 up to ``REST_FLOOR``.
    """
    scaled = logits.float()
    scaled = scaled / temperature if temperature != 1.0 else scaled  # (G, V)
    log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (G, 1)
    shared = scaled.index_select(-1, ids) - log_z  # (G, N)
    others = torch.ones(scaled.shape[-1], dtype=torch.bool, device=scaled.device)
    others[ids] = False
    if others.any():
        # -inf (masked) logits raised to the lowest float: logsumexp over only -inf back-propagates nan
        rest = scaled.index_select(-1, others.nonzero().squeeze(1))  # (G, V - N): a gather, not a mask
        rest = rest.clamp(min=torch.finfo(scaled.dtype).min).logsumexp(-1, keepdim=True) - log_z
    else:
        rest = torch.full_like(log_z, -math.inf)  # every token shared: the bucket is empty
    return torch.cat([shared, rest.clamp(min=LOG_REST_FLOOR)], dim=-1)  # (G, N + 1)


def shared_slots(
    topk_ids: torch.Tensor, student_ids: torch.Tensor, teacher_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(student_id, kept)``, ``(G, k)`` each: for each of the teacher's top-k ids, whether it is a shared token and
    the student's id of it (0 where not shared). A binary search in the sorted teacher ids: no ``(V_t,)`` table."""
    kept = torch.zeros(topk_ids.shape, dtype=torch.bool, device=topk_ids.device)
    if not len(teacher_ids):
        return torch.zeros_like(topk_ids, dtype=torch.long), kept
    teacher_ids, student_ids = teacher_ids.to(topk_ids.device, torch.long), student_ids.to(topk_ids.device, torch.long)
    order = teacher_ids.argsort()
    ordered = teacher_ids[order]  # (N,) increasing
    ids = topk_ids.long().contiguous()
    at = torch.searchsorted(ordered, ids).clamp(max=len(ordered) - 1)  # (G, k)
    kept = ordered[at] == ids
    return torch.where(kept, student_ids[order[at]], 0), kept


def topk_shared_log_probs(
    student_logits: torch.Tensor,
    teacher: TopKRows,
    student_ids: torch.Tensor,
    teacher_ids: torch.Tensor,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both distributions coarsened to the shared tokens found among the teacher's top-k, plus one rest bucket.

    Slot ``i < k`` is the teacher's ``i``-th token when it is shared (``log p_t`` of it, and ``log p_s`` of its
    student token), else empty on both sides (``-inf``: probability 0, which every divergence skips); slot ``k`` is
    the rest: every other token of each side (the teacher's as ``1 - sum`` of its kept probabilities, from its
    other top-k entries and its tail ``1 - sum_i exp(logprobs_i)``; the student's as a log-sum-exp of its other
    logits), raised to :data:`REST_FLOOR` like :func:`shared_log_probs`. With ``k = V_t`` this is
    :func:`shared_log_probs` of both sides up to the empty slots.

    Args:
        student_logits: ``(G, V_s)``; teacher: the teacher's top-k rows ``(G, k)`` at temperature ``T``.
        student_ids, teacher_ids: ``(N,)`` the shared tokens, paired by index.
        temperature: ``T`` of the student's softmax (the teacher's log-probabilities are already at ``T``).

    Returns:
        ``(log_s, log_t)``, ``(G, k + 1)`` float32 each.
    """
    scaled = student_logits.float()
    scaled = scaled / temperature if temperature != 1.0 else scaled  # (G, V_s)
    log_z = torch.logsumexp(scaled, dim=-1, keepdim=True)  # (G, 1)
    sid, kept = shared_slots(teacher.ids.to(scaled.device), student_ids, teacher_ids)  # (G, k) each
    log_s = torch.where(kept, scaled.gather(-1, sid) - log_z, -math.inf)  # (G, k)
    hits = torch.zeros(scaled.shape[0], scaled.shape[1] + 1, dtype=torch.bool, device=scaled.device)
    hits = hits.scatter_(1, torch.where(kept, sid, scaled.shape[1]), True)[:, :-1]  # (G, V_s) the kept tokens
    lowest = torch.finfo(scaled.dtype).min  # as in shared_log_probs: no logsumexp over only -inf
    rest_s = scaled.clamp(min=lowest).masked_fill(hits, lowest).logsumexp(-1, keepdim=True) - log_z  # (G, 1)
    top = teacher.logprobs.detach().to(scaled.device, torch.float32)  # (G, k)
    log_t = torch.where(kept, top, -math.inf)
    tail = (-torch.expm1(top.logsumexp(-1, keepdim=True).clamp(max=0.0))).clamp(min=0.0).log()  # (G, 1)
    rest_t = torch.cat([torch.where(kept, -math.inf, top), tail], dim=-1).logsumexp(-1, keepdim=True)
    log_s = torch.cat([log_s, rest_s.clamp(min=LOG_REST_FLOOR)], dim=-1)
    return log_s, torch.cat([log_t, rest_t.clamp(min=LOG_REST_FLOOR)], dim=-1)


def shared_vocab_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TopKRows,
    student_ids: torch.Tensor,
    teacher_ids: torch.Tensor,
    *,
    loss: str = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """The exact part: a divergence between the two distributions over the shared tokens plus one rest bucket.

    ``P_s = (p_s(s_1), ..., p_s(s_N), 1 - sum_n p_s(s_n))``, ``P_t`` likewise with the teacher's ids
    (:func:`shared_log_probs`); the value is ``T^2 * sum_g D(P_t,g, P_s,g) / normalizer`` with ``D`` the registered
    divergence ``loss`` (``kl``: ``KL(P_t || P_s)``, ``reverse_kl``, ``jsd`` with ``beta``, ``skew_kl``,
    ``skew_reverse_kl``) applied at temperature 1 to the ``N + 1`` outcomes. From the teacher's top-k
    (:class:`TopKRows`) the outcomes are the shared tokens among them and the rest (:func:`topk_shared_log_probs`).

    Args:
        student_logits: ``(G, V_s)`` at the groups' student positions.
        teacher_logits: ``(G, V_t)`` at the teacher positions (detached), or the teacher's top-k there.
        student_ids, teacher_ids: ``(N,)`` the shared tokens, paired by index (``vocab.shared_vocabulary``).
        loss, temperature, beta: the divergence, ``T`` and its ``beta``.
        normalizer: the sum over groups is divided by it (default ``G``).

    Returns:
        A float32 scalar.
    """
    loss_fn = divergence(loss)
    check_temperature(temperature)
    check_rows(student_logits, teacher_logits)
    topk = isinstance(teacher_logits, TopKRows)
    check_ids(student_ids, student_logits.shape[-1], "student")
    check_ids(teacher_ids, None if topk else teacher_logits.shape[-1], "teacher")
    if student_ids.shape != teacher_ids.shape:
        raise ValueError(
            f"{len(student_ids)} student ids but {len(teacher_ids)} teacher ids: pass the two halves of one shared "
            "vocabulary"
        )
    device = student_logits.device
    if topk:
        log_s, log_t = topk_shared_log_probs(student_logits, teacher_logits, student_ids, teacher_ids, temperature)
    else:
        log_s = shared_log_probs(student_logits, student_ids.to(device), temperature)  # (G, N + 1)
        log_t = shared_log_probs(teacher_logits.detach().to(device), teacher_ids.to(device), temperature)
    return loss_fn(log_s, log_t, temperature=1.0, normalizer=normalizer, beta=beta) * temperature**2


def sorted_probs(logits: torch.Tensor | TopKRows, temperature: float, top_k: int | None) -> torch.Tensor:
    """``(G, V) -> (G, min(top_k, V))``: ``softmax(logits / T)`` sorted in decreasing order (all ``V`` for None);
    from top-k rows ``(G, k)``, their probabilities sorted, the first ``min(top_k, k)``."""
    if isinstance(logits, TopKRows):
        probs = logits.logprobs.detach().float().exp().sort(dim=-1, descending=True).values  # (G, k)
        return probs if top_k is None else probs[:, :top_k]
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (G, V)
    if top_k is None or top_k >= probs.shape[-1]:
        return probs.sort(dim=-1, descending=True).values
    return probs.topk(top_k, dim=-1, sorted=True).values


def uld_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TopKRows,
    *,
    temperature: float = 1.0,
    top_k: int | None = ULD_TOP_K,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Universal Logit Distillation (Boizard et al. 2024): the L1 distance between the sorted probability vectors.

    ``ULD = sum_g sum_{i <= K} |p_s,g^(i) - p_t,g^(i)| / normalizer`` with ``p^(1) >= p^(2) >= ...`` each side's
    ``softmax(z / T)`` sorted, the shorter padded with zeros, and ``K = top_k``: exactly the paper's loss when
    ``top_k >= max(V_s, V_t)`` (or ``None``). It needs no token correspondence and is invariant to permuting either
    vocabulary. From the teacher's top-k (:class:`TopKRows`) its sorted vector is those ``k`` probabilities, zeros
    after them. Not scaled by ``T^2``: the gradient of an L1 distance keeps the size of its signs, it does not shrink
    like ``1 / T^2``.

    Memory: a full sort holds ``(G, V)`` values and int64 indices (12 bytes an entry); ``top_k`` bounds the sorted
    block to ``(G, top_k)`` (default :data:`ULD_TOP_K`), next to the ``(G, V)`` softmax every part needs.

    Args:
        student_logits: ``(G, V_s)``; teacher_logits: ``(G, V_t)`` (detached), or the teacher's top-k rows.
        temperature: ``T``.
        top_k: the sorted entries compared (``>= 1``), ``None`` for all.
        normalizer: the sum over groups is divided by it (default ``G``).
    """
    check_temperature(temperature)
    check_rows(student_logits, teacher_logits)
    if top_k is not None and top_k < 1:
        raise ValueError(f"uld top_k must be >= 1 (or None for a full sort), got {top_k}")
    p_s = sorted_probs(student_logits, temperature, top_k)  # (G, K_s)
    p_t = sorted_probs(teacher_logits, temperature, top_k).detach().to(student_logits.device)  # (G, K_t)
    width = max(p_s.shape[-1], p_t.shape[-1])
    p_s = torch.nn.functional.pad(p_s, (0, width - p_s.shape[-1]))  # (G, K), zeros after the shorter vocabulary
    p_t = torch.nn.functional.pad(p_t, (0, width - p_t.shape[-1]))
    return reduce_items((p_s - p_t).abs().sum(-1), normalizer)


class ChainRows(NamedTuple):
    """The teacher positions of the groups with one student token, laid out group after group.

    ``groups`` ``(C,)``: the groups (indices into the aligned groups, rows of their logits); ``counts`` ``(C,)``: each
    group's teacher tokens ``m``; ``batch``, ``positions``, ``tokens`` ``(M,)`` with ``M = counts.sum()``: the row, the
    teacher position ``t + j`` and the teacher token it predicts (``input_ids[b, t + j + 1]``), ``j = 0 .. m - 1``;
    ``student_tokens`` ``(C,)``: the group's student token (``input_ids[b, s + 1]``).
    """

    groups: torch.Tensor
    counts: torch.Tensor
    batch: torch.Tensor
    positions: torch.Tensor
    tokens: torch.Tensor
    student_tokens: torch.Tensor


def span_logprobs(
    teacher_logits: torch.Tensor, tokens: torch.Tensor, counts: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """The teacher's log-probability of each group's stretch of text by the chain rule (detached).

    ``log q_c = sum_{j < m_c} log softmax(z_j / T)[t_j]``: ``log p(t_1) + log p(t_2 | t_1) + ...`` along the group.

    Args:
        teacher_logits: ``(M, V_t)`` the logits at the positions of ``ChainRows`` (group after group).
        tokens: ``(M,)`` the token each position predicts; counts: ``(C,)`` the rows of each group, summing to ``M``.
        temperature: ``T`` (each factor is softened).

    Returns:
        ``(C,)`` float32 log-probabilities.
    """
    check_temperature(temperature)
    if int(counts.sum()) != len(teacher_logits) or len(tokens) != len(teacher_logits):
        raise ValueError(
            f"{len(teacher_logits)} teacher rows, {len(tokens)} tokens and counts summing to {int(counts.sum())}: "
            "give one row and one token per position of chain_rule_rows"
        )
    scaled = teacher_logits.detach().float() / temperature  # (M, V_t)
    tokens = tokens.to(scaled.device)
    per_row = scaled.gather(-1, tokens[:, None]).squeeze(-1) - scaled.logsumexp(-1)  # (M,)
    group = torch.arange(len(counts), device=scaled.device).repeat_interleave(counts.to(scaled.device))  # (M,)
    return torch.zeros(len(counts), device=scaled.device).index_add_(0, group, per_row)


def binary_log_probs(log_p: torch.Tensor) -> torch.Tensor:
    """``(C,) -> (C, 2)``: ``[log p, log(1 - p)]``, the rest raised to :data:`REST_FLOOR` like the exact part's."""
    log_p = log_p.clamp(max=0.0)  # rounding can lift a sum of log-probabilities just above 0
    rest = (-torch.expm1(log_p)).clamp(min=REST_FLOOR).log()  # clamp before log: no 0 * inf in the backward
    return torch.stack([log_p, rest], dim=-1)


def chain_rule_divergence(
    student_logits: torch.Tensor,
    student_tokens: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    *,
    loss: str = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    normalizer: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """The chain-rule part: the teacher's merged probability of a stretch as the target of the student's one token.

    ``T^2 * sum_c D((q_c, 1 - q_c), (p_s,c(y_c), 1 - p_s,c(y_c))) / normalizer``: a distribution over two outcomes,
    the student's token ``y_c`` and the rest, with ``q_c = exp(teacher_logprobs[c])`` (:func:`span_logprobs`).

    Args:
        student_logits: ``(C, V_s)`` at the groups' student positions.
        student_tokens: ``(C,)`` the student's token of each group.
        teacher_logprobs: ``(C,)`` the teacher's log-probability of each group's stretch (detached).
        loss, temperature, beta, normalizer: as :func:`shared_vocab_divergence`.
    """
    loss_fn = divergence(loss)
    check_temperature(temperature)
    if not len(student_logits) == len(student_tokens) == len(teacher_logprobs):
        raise ValueError(
            f"{len(student_logits)} student rows, {len(student_tokens)} student tokens, {len(teacher_logprobs)} "
            "teacher log-probabilities: give one of each per chain-rule group"
        )
    scaled = student_logits.float() / temperature  # (C, V_s)
    tokens = student_tokens.to(scaled.device)
    log_s = scaled.gather(-1, tokens[:, None]).squeeze(-1) - scaled.logsumexp(-1)  # (C,)
    log_t = teacher_logprobs.detach().to(scaled.device, torch.float32)
    value = loss_fn(
        binary_log_probs(log_s), binary_log_probs(log_t), temperature=1.0, normalizer=normalizer, beta=beta
    )
    return value * temperature**2


@dataclass(frozen=True)
class CrossTokenizerMix:
    """The weights of the three parts of :func:`cross_tokenizer_loss`; non-negative, at least one positive."""

    exact: float = 1.0
    uld: float = 0.0
    chain: float = 0.0

    def __post_init__(self):
        for part in PARTS:
            weight = getattr(self, part)
            if not (math.isfinite(weight) and weight >= 0):
                raise ValueError(f"cross-tokenizer weight {part}={weight}: give a finite weight >= 0")
        if not any(getattr(self, part) > 0 for part in PARTS):
            raise ValueError("cross-tokenizer weights exact, uld and chain are all 0: give at least one > 0")


class ChainTargets(NamedTuple):
    """The chain-rule part's inputs, all ``(C,)``: ``groups`` (rows of the ``G`` compared logits: the groups of one
    student token), the ``student_tokens`` and the teacher's ``teacher_logprobs`` (:func:`span_logprobs`)."""

    groups: torch.Tensor
    student_tokens: torch.Tensor
    teacher_logprobs: torch.Tensor


def cross_tokenizer_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | TopKRows,
    shared: tuple[torch.Tensor, torch.Tensor],
    *,
    num_items: float | torch.Tensor,
    mix: CrossTokenizerMix | None = None,
    loss: str = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    uld_top_k: int | None = ULD_TOP_K,
    chain: ChainTargets | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(total, terms)``: the weighted sum of the parts with a positive weight, each a sum over groups / ``num_items``.

    ``total = mix.exact * exact + mix.uld * uld + mix.chain * chain``; ``terms`` holds the active parts by name
    (``"exact"``, ``"uld"``, ``"chain"``). Groups without a chain-rule target (several student tokens: many-to-one,
    many-to-many) add nothing to ``chain`` but count in ``num_items``, as they do for the other parts.

    Args:
        student_logits: ``(G, V_s)``, teacher_logits: ``(G, V_t)`` at the compared positions, or the teacher's top-k
            there (:class:`TopKRows`).
        shared: ``(student_ids, teacher_ids)``, ``(N,)`` each (note the order: the student's first).
        num_items: the divisor of every part, the groups of the whole gradient-accumulation window (and of every
            process), so that micro-batches add up to the loss of one large batch; not the local count.
        mix: the parts' weights (default: the exact part only). loss, temperature, beta: the divergence of the exact and chain parts.
        uld_top_k: the sorted entries ULD compares (:func:`uld_loss`).
        chain: the chain-rule targets; needed when ``mix.chain > 0``.
    """
    mix = CrossTokenizerMix() if mix is None else mix
    if not isinstance(num_items, torch.Tensor) and not num_items >= 0:
        raise ValueError(f"num_items={num_items}: give the number of aligned groups (>= 0) the loss is divided by")
    if mix.chain > 0 and chain is None:
        raise ValueError("the chain-rule weight is > 0 but no chain targets were given: pass chain=ChainTargets(...)")
    check_rows(student_logits, teacher_logits)
    kw = {"loss": loss, "temperature": temperature, "beta": beta, "normalizer": num_items}
    terms = {}
    if mix.exact > 0:
        terms["exact"] = shared_vocab_divergence(student_logits, teacher_logits, *shared, **kw)
    if mix.uld > 0:
        uld = uld_loss(student_logits, teacher_logits, temperature=temperature, top_k=uld_top_k, normalizer=num_items)
        terms["uld"] = uld
    if mix.chain > 0:
        rows = chain.groups.to(student_logits.device)
        if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= len(student_logits)):
            raise ValueError(
                f"chain groups hold rows in [{int(rows.min())}, {int(rows.max())}] but there are "
                f"{len(student_logits)} compared positions: index the rows of these logits (chain_rule_rows)"
            )
        terms["chain"] = chain_rule_divergence(
            student_logits[rows], chain.student_tokens, chain.teacher_logprobs, **kw
        )
    total = sum(getattr(mix, part) * value for part, value in terms.items())
    return total, terms
