"""An encoder teacher known through its stored outputs: logits, hidden states, attention maps and Q/K/V of every
training example, computed once (:func:`hf_distill.data.build_encoder_cache`) and read back per batch, so that the
teacher need not run again.

The store holds real tokens only, example after example (no padding); each batch names its examples' rows in the
``teacher_cache_index`` column (kept through the collator), and :meth:`EncoderCacheTeacher.outputs` pads them back
to the batch's shape, as float32, zeros at padded positions (every loss masks those).
"""

from __future__ import annotations

import torch

from ..constants import TEACHER_CACHE_INDEX
from ..losses.attention import RelationTarget
from ..losses.lengths import valid_lengths
from .base import CachedTeacher, Teacher, TeacherOutputs, TeacherRequest


def stored_request(names) -> TeacherRequest:
    """What a store with the tensors ``names`` holds (``logits``, ``hidden.<i>``, ``attention.<i>``, ``q.<i>`` or
    ``relation.q.<i>``...)."""

    def layers(prefix: str) -> tuple[int, ...]:
        return tuple(sorted(int(n.rsplit(".", 1)[1]) for n in names if n.startswith(prefix + ".")))

    return TeacherRequest(
        logits="logits" in names or "token_logits" in names,
        hidden_layers=layers("hidden"),
        attention_layers=layers("attention"),
        qkv_layers=tuple(sorted({*layers("q"), *layers("relation.q")})),
    )


def stored_relation_heads(tensors: dict) -> int | None:
    """The relation head count of a store that holds self-relations rather than Q/K/V, else None."""
    negent = [t for name, t in tensors.items() if name.startswith("relation_negent.")]
    return int(negent[0].shape[1]) if negent else None


def missing_from(held: TeacherRequest, request: TeacherRequest) -> list[str]:
    """What ``request`` asks that ``held`` lacks, as readable items (empty when ``held`` covers it)."""
    missing = ["logits"] if request.logits and not held.logits else []
    for what, field in (
        ("hidden layer", "hidden_layers"),
        ("attention map", "attention_layers"),
        ("Q/K/V", "qkv_layers"),
    ):
        lacking = sorted(set(getattr(request, field)) - set(getattr(held, field)))
        missing += [f"{what} {i}" for i in lacking]
    return missing


def _tokens(flat: torch.Tensor, rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``flat (N_tokens, D)`` rows ``rows`` (one per real token of the batch, in order) -> ``(B, T, D)`` float32."""
    if bool(mask.all()):  # no padding: the rows in batch order are the whole tensor
        return flat.index_select(0, rows).float().view(*mask.shape, flat.shape[-1])
    out = torch.zeros(*mask.shape, flat.shape[-1], dtype=torch.float32)
    out[mask] = flat[rows].float()
    return out


def _place_pairs(blocks: list[torch.Tensor], mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Each example's ``(C, n, n)`` block over its real (query, key) pairs -> ``(B, C, T, T)`` in ``dtype``, zeros at
    padded queries and keys (``mask`` ``(B, T)``: row ``b`` has ``n`` real tokens, anywhere)."""
    batch, seq = mask.shape
    if bool(mask.all()):  # full rows: their blocks back to back, one copy
        return torch.stack(blocks).to(dtype)
    out = torch.zeros(batch, blocks[0].shape[0], seq, seq, dtype=dtype)
    right_padded = valid_lengths(mask) is not None
    for b, block in enumerate(blocks):
        if right_padded:  # a slice: cheaper than placing by index
            n = block.shape[-1]
            out[b, :, :n, :n] = block
        else:
            pos = mask[b].nonzero().squeeze(1)  # (n,) the real positions
            out[b][:, pos[:, None], pos[None, :]] = block.to(dtype)
    return out


class EncoderCacheTeacher(CachedTeacher):
    """A teacher whose outputs for each training example were stored once.

    Args:
        tensors: the store, real tokens only: ``lengths`` ``(N,)`` (real tokens of each example); ``logits``
            ``(N, C)`` (or ``token_logits`` ``(sum n, C)``); ``hidden.<i>`` ``(sum n, D)`` for layer ``i``;
            ``q.<i>``, ``k.<i>``, ``v.<i>`` ``(sum n, D_x)`` for block ``i``; ``attention.<i>`` ``(sum n^2, H)``
            (example ``e``'s map ``(n, n, H)`` flattened). Any float dtype (16-bit on disk).
        config: the teacher's model config (layer count, width, heads, labels).
        source: a :class:`Teacher` for batches without a ``teacher_cache_index`` column (evaluation batches), or
            ``None`` (such a batch is then refused).
        name: recorded in ``distillation_config.json``; default ``config.name_or_path``.
        task: the teacher's task (``sequence_classification`` or ``token_classification``).
    """

    def __init__(self, tensors: dict, config, *, source: Teacher | None = None, name: str | None = None, task=None):
        self.tensors = tensors
        self.config = config
        self.source = source
        self.name = name or getattr(config, "name_or_path", "") or "encoder teacher cache"
        self.task = task or ("token_classification" if "token_logits" in tensors else "sequence_classification")
        self.held = stored_request(tensors)
        lengths = tensors["lengths"].long()
        self.lengths = lengths
        self.starts = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)[:-1]])  # first token row of each example
        squares = lengths * lengths
        self.pair_starts = torch.cat([squares.new_zeros(1), squares.cumsum(0)[:-1]])
        self.relation_heads = stored_relation_heads(tensors)

    def check_request(self, request: TeacherRequest, where: str = "This encoder teacher cache") -> None:
        """Refuse a request the store does not cover (it was built for other losses or layers)."""
        missing = missing_from(self.held, request)
        if missing:
            raise ValueError(
                f"{where} holds no {', '.join(missing)}, which the configured losses need: build the cache again "
                "for this configuration (hf_distill.data.build_encoder_cache with the run's request, or another "
                "--teacher_cache folder)."
            )

    @torch.no_grad()
    def outputs(self, batch: dict, request: TeacherRequest) -> TeacherOutputs:
        if TEACHER_CACHE_INDEX not in batch:
            if self.source is None:
                raise ValueError(
                    f"A batch without the {TEACHER_CACHE_INDEX!r} column reached an encoder teacher cache that has "
                    "no live teacher: add the column (hf_distill.data.with_cache_index) or pass source=."
                )
            return self.source.outputs(batch, request)
        self.check_request(request)
        mask = batch["attention_mask"].bool()  # (B, T)
        device = mask.device
        mask, index = mask.cpu(), batch[TEACHER_CACHE_INDEX].long().cpu()  # (B, T), (B,)
        self._check_lengths(index, mask)
        rows = (self.starts[index][:, None] + mask.cumsum(1) - 1)[mask]  # (n_real,): the store's row of each token
        t = self.tensors
        out = TeacherOutputs()
        if request.logits:
            logits = t["logits"][index].float() if "logits" in t else _tokens(t["token_logits"], rows, mask)
            out.logits = logits.to(device)
        if request.hidden_layers:
            hidden = [None] * (self.config.num_hidden_layers + 1)
            for i in request.hidden_layers:
                hidden[i] = _tokens(t[f"hidden.{i}"], rows, mask).to(device)
            out.hidden_states = tuple(hidden)
        if request.attention_layers:
            maps = [None] * self.config.num_hidden_layers
            for i in request.attention_layers:
                maps[i - 1] = _place_pairs(self._pairs(t[f"attention.{i}"], index), mask, torch.float32).to(device)
            out.attentions = tuple(maps)
        if self.relation_heads and request.qkv_layers:
            if valid_lengths(mask) is None:
                raise ValueError("An encoder cache of self-relations needs right-padded batches (real tokens first).")
            out.qkv = {
                i: [self._relations(x, i, index, mask, rows, device) for x in "qkv"] for i in request.qkv_layers
            }
        else:
            out.qkv = {i: [_tokens(t[f"{x}.{i}"], rows, mask).to(device) for x in "qkv"] for i in request.qkv_layers}
        return out

    def _relations(self, x: str, block: int, index, mask, rows, device) -> RelationTarget:
        """Block ``block``'s stored relations of ``x`` (q, k or v) for the batch: probabilities ``(B, R, T, T)`` in
        the store's dtype, zero beyond each row's length, and ``Σ p log p`` ``(B, R, T)``; right-padded rows only."""
        flat = self.tensors[f"relation.{x}.{block}"]
        probs = _place_pairs(self._pairs(flat, index, self.relation_heads), mask, flat.dtype)
        neg_entropy = _tokens(self.tensors[f"relation_negent.{x}.{block}"], rows, mask).transpose(1, 2)
        return RelationTarget(probs.to(device), neg_entropy.to(device))

    def _check_lengths(self, index: torch.Tensor, mask: torch.Tensor) -> None:
        if int(index.max()) >= len(self.lengths) or int(index.min()) < 0:
            raise ValueError(
                f"{TEACHER_CACHE_INDEX} {int(index.max())} is out of the cache's {len(self.lengths)} examples: the "
                "batch comes from other data than the cache was built on."
            )
        real = mask.sum(1)
        wrong = (real != self.lengths[index]).nonzero()
        if len(wrong):
            b = int(wrong[0])
            raise ValueError(
                f"Cache row {int(index[b])} holds {int(self.lengths[index[b]])} tokens but its batch row has "
                f"{int(real[b])}: the batch comes from other data than the cache was built on (tokenizer, "
                "max_seq_length or rows differ)."
            )

    def _pairs(self, flat: torch.Tensor, index: torch.Tensor, heads: int | None = None) -> list[torch.Tensor]:
        """The examples ``index``'s ``(C, n, n)`` blocks of a store of (query, key) pairs: ``attention.<i>``
        ``(sum n^2, H)``, example maps ``(n, n, H)`` (``heads=None``), or ``relation.<x>.<i>`` ``(sum R n^2,)``,
        example relations ``(R, n, n)`` (``heads=R``). Views, no copy."""
        blocks = []
        for n, start in zip(self.lengths[index].tolist(), self.pair_starts[index].tolist(), strict=True):
            if heads is None:
                blocks.append(flat[start : start + n * n].view(n, n, -1).permute(2, 0, 1))
            else:
                blocks.append(flat[heads * start : heads * (start + n * n)].view(heads, n, n))
        return blocks
