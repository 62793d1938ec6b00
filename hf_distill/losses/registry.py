"""The one registry of distillation losses: ``(kind, name) -> function``.

Kinds are ``"logits"``, ``"hidden"`` and ``"attention"``. A loss function is pure: it takes tensors and keyword
arguments (``mask=``, ``temperature=``, ``normalizer=``...) and never reads a config object.
"""

from __future__ import annotations

from collections.abc import Callable

LOSS_KINDS = ("logits", "hidden", "attention")

_LOSSES: dict[tuple[str, str], Callable] = {}


def register_loss(kind: str, name: str) -> Callable[[Callable], Callable]:
    """Decorator registering ``fn`` as loss ``name`` of ``kind``; rejects unknown kinds and duplicate names."""
    if kind not in LOSS_KINDS:
        raise ValueError(f"Unknown loss kind {kind!r}; expected one of {list(LOSS_KINDS)}.")

    def decorator(fn: Callable) -> Callable:
        if (kind, name) in _LOSSES:
            raise ValueError(f"A {kind} loss named {name!r} is already registered ({_LOSSES[(kind, name)].__name__}).")
        _LOSSES[(kind, name)] = fn
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
