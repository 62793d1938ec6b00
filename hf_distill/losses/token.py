"""The causal-LM loss of one step, fused and chunked: the student's next-token cross-entropy and the token-level KD
term computed together, ``chunk_size`` tokens at a time, from the student's last hidden states and output head.

The student's ``(B, T, V)`` logits are never materialised, and neither are the teacher's: the teacher's rows come
chunk by chunk from its last hidden states and head (or from precomputed logits, or from a top-k cache). Each chunk's
student logits serve both terms, so the head's matmul runs once per token. Values and gradients equal those of
:func:`~hf_distill.losses.task_loss` plus the registered divergence on full logits (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX
from .chunked import chunked_linear_loss, head_params
from .logits import mix_teacher_logits
from .registry import get_loss
from .task import check_labels
from .topk import topk_token_kd


@dataclass
class TeacherTargets:
    """Where the soft targets of the tokens come from (exactly one source).

    ``logits``: one ``(B, T, V)`` tensor per teacher. ``hidden`` and ``heads``: one ``(B, T, Dt)`` last hidden state
    and one linear head per teacher (the logits are computed per chunk). ``topk_ids`` / ``topk_logprobs``: a top-k
    cache ``(B, T, k)`` (see :mod:`hf_distill.data.teacher_cache`). ``weights``: one per teacher (default equal).
    """

    logits: list[torch.Tensor] | None = None
    hidden: list[torch.Tensor] | None = None
    heads: list = field(default_factory=list)
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None
    weights: list[float] | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The per-token tensors, by name, for :func:`chunked_linear_loss`."""
        if self.topk_ids is not None:
            return {"topk_ids": self.topk_ids, "topk_logprobs": self.topk_logprobs}
        source = self.logits if self.logits is not None else self.hidden
        return {f"teacher{i}": t for i, t in enumerate(source or [])}

    def check(self, vocab: int, vocab_rows: int | None) -> None:
        """Refuse teachers whose outputs cannot line up with a student of ``vocab`` output rows: each teacher needs
        ``vocab`` rows (at least ``vocab_rows`` when given), and its hidden states the width of its head."""
        source = self.logits if self.logits is not None else self.hidden or []
        for i, t in enumerate(source):
            rows = t.shape[-1]
            if self.logits is None:
                weight, _ = head_params(self.heads[i], "teacher head")
                if rows != weight.shape[-1]:
                    raise ValueError(
                        f"Teacher {i}'s hidden size {rows} does not match its head's weight {tuple(weight.shape)}."
                    )
                rows = weight.shape[0]
            if rows < (vocab_rows or vocab) or (vocab_rows is None and rows != vocab):
                raise ValueError(
                    f"Student vocabulary {vocab} and teacher {i}'s vocabulary {rows} differ; logit KD needs the same "
                    "vocabulary (or vocab_rows= for one tokenizer with padded embeddings)."
                )

    @torch.no_grad()
    def chunk_target(self, chunk: dict, device, vocab_rows: int | None, temperature: float, loss: str):
        """The soft target of one chunk: the teachers' ``(n, V)`` logits over the first ``vocab_rows`` rows, several
        teachers mixed (:func:`mix_teacher_logits`); no gradient."""
        rows = []
        for i in range(len(self.logits if self.logits is not None else self.hidden)):
            t = chunk[f"teacher{i}"].to(device)
            if self.logits is None:
                weight, bias = head_params(self.heads[i], "teacher head")
                t = F.linear(t.to(weight.device, weight.dtype), weight, bias).to(device)
            rows.append(t[:, :vocab_rows] if vocab_rows else t)
        return mix_teacher_logits(rows, self.weights or [1.0] * len(rows), temperature, loss)


def fused_causal_lm_loss(
    student_hidden: torch.Tensor,
    student_head,
    *,
    labels: torch.Tensor | None,
    mask: torch.Tensor | None,
    teacher: TeacherTargets | None,
    alpha_task: float,
    alpha_logits: float,
    loss: str = "kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    vocab_rows: int | None = None,
    label_smoothing: float = 0.0,
    normalizer: float | None = None,
    chunk_size: int = 1024,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``alpha_task * CE + alpha_logits * KD`` over the target tokens, chunked; returns ``(total, terms)``.

    Args:
        student_hidden: ``(B, T, D)`` the student's last hidden states at the prediction positions (already aligned:
            position ``t`` predicts ``labels[:, t]``).
        student_head: the student's linear output head (weight ``(V, D)``).
        labels: ``(B, T)`` aligned next-token ids in ``[0, V)``, ``-100`` where not a target (any other value is a
            ``ValueError``); ``None`` when there is no task term.
        mask: ``(B, T)`` the target tokens (``labels != -100``, or the attention mask without labels).
        teacher: the soft-target source; ``None`` when there is no KD term.
        alpha_task, alpha_logits: weights of the two terms (a zero weight skips its term).
        loss: a registered logits divergence; temperature, beta: as for the registered losses.
        vocab_rows: compare only the first ``vocab_rows`` outputs in the KD term (identical tokenizers whose
            embeddings are padded to different sizes); the cross-entropy uses every row of the student.
        label_smoothing: of the cross-entropy.
        normalizer: both sums are divided by it (default: the number of target tokens).
        chunk_size: tokens per chunk.

    Returns:
        ``total`` (a differentiable float32 scalar) and the detached normalised terms ``{"task": ..., "logits": ...}``
        (only those with a non-zero weight).
    """
    vocab = head_params(student_head, "student_head")[0].shape[0]
    if labels is not None:  # before any chunk: a -1 would otherwise index the vocabulary
        check_labels(labels, vocab, "vocab_size")
    use_task = alpha_task > 0 and labels is not None
    use_kd = alpha_logits > 0 and teacher is not None
    if use_kd:
        teacher.check(vocab, vocab_rows)
    divergence = get_loss("logits", loss) if use_kd else None
    sums = {
        name: student_hidden.new_zeros((), dtype=torch.float32)
        for name, on in (("task", use_task), ("logits", use_kd))
        if on
    }
    targets = dict(teacher.tensors()) if use_kd else {}
    if use_task:
        targets["labels"] = labels

    closed_form = loss == "kl" and label_smoothing == 0 and (not use_kd or teacher.topk_ids is None)

    def loss_fn(logits: torch.Tensor, chunk: dict):  # logits (n, V): the chunk's target tokens
        if closed_form:
            target = teacher.chunk_target(chunk, logits.device, vocab_rows, temperature, loss) if use_kd else None
            labels_chunk = chunk["labels"].to(logits.device) if use_task else None
            value, grad, parts = _ce_kl_closed_form(
                logits, labels_chunk, target, alpha_task, alpha_logits, temperature, logits.requires_grad
            )
            for name, part in parts.items():
                sums[name] += part
            return value, grad
        total = logits.new_zeros((), dtype=torch.float32)
        if use_task:
            ce = F.cross_entropy(
                logits.float(),
                chunk["labels"].to(logits.device),
                ignore_index=IGNORE_INDEX,
                reduction="sum",
                label_smoothing=label_smoothing,
            )
            sums["task"] += ce.detach()
            total = total + alpha_task * ce
        if use_kd:
            student = logits[:, :vocab_rows] if vocab_rows else logits
            if teacher.topk_ids is not None:
                kd = topk_token_kd(
                    student,
                    chunk["topk_ids"].to(logits.device),
                    chunk["topk_logprobs"].to(logits.device),
                    loss=loss,
                    temperature=temperature,
                    beta=beta,
                    normalizer=1,
                )
            else:
                target = teacher.chunk_target(chunk, logits.device, vocab_rows, temperature, loss)
                kd = divergence(student, target, normalizer=1, temperature=temperature, beta=beta)
            sums["logits"] += kd.detach()
            total = total + alpha_logits * kd
        return total

    total = chunked_linear_loss(student_hidden, student_head, loss_fn, targets, mask=mask, chunk_size=chunk_size)
    if normalizer is None:
        normalizer = student_hidden.shape[:-1].numel() if mask is None else int(mask.bool().sum())
    scale = 0.0 if float(normalizer) == 0 else 1.0 / float(normalizer)  # no target token: a zero loss, no NaN
    return total * scale, {name: value * scale for name, value in sums.items()}


@torch.no_grad()
def _ce_kl_closed_form(logits, labels, target, alpha_task, alpha_kd, temperature, want_grad):
    """``alpha_task * CE + alpha_kd * T^2 KL(p_t || p_s)`` summed over a chunk, with its gradient w.r.t. the logits.

    Written out instead of differentiated: ``d CE / d s = softmax(s) - onehot(label)`` and
    ``d T^2 KL / d s = T (softmax(s / T) - softmax(t / T))``, built in place, so a chunk holds about five
    ``(n, V)`` float32 tensors and no autograd graph. ``logits`` ``(n, V)``; ``labels`` ``(n,)`` or ``None``;
    ``target`` ``(n, R)`` teacher logits over the first ``R <= V`` rows, or ``None``.
    Returns ``(value, grad (n, V) or None, {"task": ce, "logits": kd})``.
    """
    s = logits.float()
    value, grad, parts = s.new_zeros(()), None, {}
    if labels is not None:
        valid = labels != IGNORE_INDEX  # (n,)
        index = labels.clamp(min=0)[:, None]  # (n, 1)
        log_p = torch.log_softmax(s, dim=-1)  # (n, V)
        parts["task"] = -(log_p.gather(1, index).squeeze(1) * valid).sum()
        value = value + alpha_task * parts["task"]
        if want_grad:
            grad = log_p.exp_()  # softmax(s), in place
            grad.scatter_add_(1, index, -torch.ones_like(index, dtype=grad.dtype))
            grad.mul_(valid[:, None].to(grad.dtype) * alpha_task)
        del log_p
    if target is not None:
        rows = target.shape[-1]
        log_q = torch.log_softmax(s[:, :rows] / temperature, dim=-1)  # (n, R) student at T
        log_t = torch.log_softmax(target.float() / temperature, dim=-1)  # (n, R) teacher at T
        p_t = log_t.exp()
        pointwise = log_t.sub_(log_q).mul_(p_t)  # p_t (log p_t - log q), in place of log_t
        parts["logits"] = torch.where(p_t > 0, pointwise, 0.0).sum() * temperature**2  # 0 log 0 = 0
        value = value + alpha_kd * parts["logits"]
        del pointwise
        if want_grad:
            kd_grad = log_q.exp_().sub_(p_t).mul_(alpha_kd * temperature)  # (n, R)
            if grad is None:
                grad = torch.zeros_like(s)
            grad[:, :rows] += kd_grad
    return value, grad, parts
