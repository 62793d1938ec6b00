"""The one registry of distillation losses: ``(kind, name) -> function``, and what each loss reads.

Kinds are ``"logits"``, ``"hidden"`` and ``"attention"``. A loss function is pure: it takes tensors and keyword
arguments (``mask=``, ``temperature=``, ``normalizer=``...) and never reads a config object.

Each entry also declares the teacher (and student) outputs it can be computed from, its ``needs``, so that no caller
asks for a loss by name what to fetch: one or more of :data:`LOSS_INPUTS`, any one of which suffices.

- ``"logits"``: full logits ``(*batch, V)``; ``"topk"``: top-k log-probabilities of a cache ``(*batch, k)``. A
  divergence between distributions reads either; a loss on raw logits (``mse``) needs ``"logits"``.
- ``"hidden"``: hidden states ``(B, T, D)``; ``"attention"``: attention maps ``(B, H, T, T)`` (eager attention);
  ``"qkv"``: the query/key/value projections ``(B, T, D)`` of a block (self-relations, any attention backend).
"""

from __future__ import annotations

from collections.abc import Callable

LOSS_KINDS = ("logits", "hidden", "attention")
LOSS_INPUTS = ("logits", "topk", "hidden", "attention", "qkv")
# what a loss of each kind reads unless it says otherwise at registration
DEFAULT_NEEDS = {"logits": ("logits", "topk"), "hidden": ("hidden",), "attention": ("attention",)}

_LOSSES: dict[tuple[str, str], Callable] = {}
_NEEDS: dict[tuple[str, str], tuple[str, ...]] = {}


def register_loss(kind: str, name: str, needs: str | tuple[str, ...] | None = None) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as loss ``name`` of ``kind``; rejects unknown kinds and duplicate names.

    ``needs``: the inputs the loss can be computed from (one of them suffices), from :data:`LOSS_INPUTS`; default
    :data:`DEFAULT_NEEDS` of ``kind`` (a logits loss then must accept log-probabilities as logits).
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"Unknown loss kind {kind!r}; expected one of {list(LOSS_KINDS)}.")
    needs = DEFAULT_NEEDS[kind] if needs is None else (needs,) if isinstance(needs, str) else tuple(needs)
    unknown = [n for n in needs if n not in LOSS_INPUTS]
    if unknown or not needs:
        raise ValueError(f"needs={needs!r} for loss {name!r}: give one or more of {list(LOSS_INPUTS)}.")

    def decorator(fn: Callable) -> Callable:
        if (kind, name) in _LOSSES:
            raise ValueError(f"A {kind} loss named {name!r} is already registered ({_LOSSES[(kind, name)].__name__}).")
        _LOSSES[(kind, name)] = fn
        _NEEDS[(kind, name)] = needs
        return fn

    return decorator


def available_losses(kind: str) -> list[str]:
    """Names registered for ``kind``, sorted."""
    return sorted(name for k, name in _LOSSES if k == kind)


def get_loss(kind: str, name: str) -> Callable:
    """The loss function registered as ``name`` for ``kind``; a ``ValueError`` lists the valid names otherwise."""
    try:
        return _LOSSES[(kind, name)]
    except KeyError:
        raise ValueError(
            f"Unknown {kind} loss {name!r}; choose one of {available_losses(kind)} "
            f"or add one with hf_distill.losses.register_loss({kind!r}, name)."
        ) from None


def loss_needs(kind: str, name: str) -> tuple[str, ...]:
    """The inputs loss ``name`` of ``kind`` can be computed from (any one suffices), as registered."""
    get_loss(kind, name)  # an unknown name: the error that lists the valid ones
    return _NEEDS[(kind, name)]
