"""Which student layer learns from which teacher layer.

Layers are numbered as in ``outputs.hidden_states``: ``0`` is the embedding output and ``i`` (``1..L``) the output
of transformer block ``i``. A hidden-state match may use ``0``; an attention match uses the attention of block
``i`` (``i >= 1``). A map is ``"uniform"`` (TinyBERT: student layer ``m`` learns from teacher layer
``round(m * Lt / Ls)``, embeddings included), ``"last"`` (only the last blocks), ``"init"`` (each student block
learns from the teacher block it was copied from by ``build_student``, embeddings included) or explicit pairs
``"1:2,2:4,3:6"`` (``student:teacher``), also accepted as a list of pairs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerMatch:
    """One matched pair of layers and how it is compared."""

    student_layer: int
    teacher_layer: int
    feature: str  # "hidden" or "attention"
    loss: str  # a name registered for `feature` in hf_distill.losses
    weight: float  # the pair's share of the feature's loss; the shares of one feature sum to 1
    projection: str | None = None  # "linear" when the student is projected to the teacher's width
    teacher: int = 0  # which teacher (its index in teacher_model) the student learns from

    @property
    def key(self) -> str:
        """A name unique among all teachers' matches: ``hidden_1_2`` for teacher 0 (as before several teachers
        had their own maps), ``teacher1_hidden_1_2`` for teacher 1."""
        prefix = f"teacher{self.teacher}_" if self.teacher else ""
        return f"{prefix}{self.feature}_{self.student_layer}_{self.teacher_layer}"


def parse_layer_pairs(spec) -> list[tuple[int, int]]:
    """Parse ``"1:2,2:4"`` or ``[[1, 2], [2, 4]]`` / ``["1:2", "2:4"]`` into integer pairs."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    pairs = []
    for item in items:
        try:
            s, t = item.split(":") if isinstance(item, str) else item
            pairs.append((int(s), int(t)))
        except (ValueError, TypeError):
            raise ValueError(
                f"Bad layer_map entry {item!r} in {spec!r}: use 'student_layer:teacher_layer' pairs such as "
                "'0:0,1:2,2:4', or 'uniform' / 'last'."
            ) from None
    if not pairs:
        raise ValueError(f"layer_map {spec!r} names no pairs.")
    return pairs


def resolve_layer_pairs(
    spec, num_student_layers: int, num_teacher_layers: int, init_layers: list[int] | None = None
) -> list[tuple[int, int]]:
    """Resolve a layer-map spec into ``(student, teacher)`` hidden-state indices for the given depths.

    ``init_layers`` (for ``"init"``) are the 0-based teacher blocks the student was built from
    (``config.distillation_teacher_layers``).
    """
    ls, lt = num_student_layers, num_teacher_layers
    if spec == "init":
        if not init_layers or len(init_layers) != ls:
            raise ValueError(
                "layer_map='init' needs a student made by build_student (config.distillation_teacher_layers with one "
                f"entry per student layer, got {init_layers}); use 'uniform' or explicit pairs instead."
            )
        if max(init_layers) >= lt:
            raise ValueError(
                f"layer_map='init' pairs the student with the teacher blocks it was built from, {init_layers}, but this "
                f"teacher has {lt} blocks (not the one it was built from?); use 'uniform' or explicit pairs instead."
            )
        return [(0, 0)] + [(j + 1, i + 1) for j, i in enumerate(init_layers)]
    if spec == "uniform":
        # round(m * lt / ls) in integer arithmetic, so that m = ls maps to lt exactly
        return [(m, (2 * m * lt + ls) // (2 * ls)) for m in range(ls + 1)]
    if spec == "last":
        return [(ls, lt)]
    pairs = parse_layer_pairs(spec)
    for s, t in pairs:
        if not (0 <= s <= ls and 0 <= t <= lt):
            raise ValueError(
                f"layer_map pair {s}:{t} is out of range: the student has layers 0..{ls} and the teacher 0..{lt} "
                "(0 is the embedding output)."
            )
    return pairs


def build_layer_matches(
    pairs: list[tuple[int, int]],
    *,
    student_hidden_size: int,
    teacher_hidden_size: int,
    hidden_loss: str | None,
    attention_loss: str | None,
    projection: str = "linear",
    teacher: int = 0,
) -> list[LayerMatch]:
    """Turn resolved pairs into :class:`LayerMatch` records for the active features, of teacher number ``teacher``.

    ``hidden_loss=None`` (or ``attention_loss=None``) leaves that feature out. Attention matches skip pairs that
    involve the embeddings (layer 0). A hidden match gets a linear projection when the widths differ.
    """
    matches: list[LayerMatch] = []
    if hidden_loss is not None:
        proj = None
        if student_hidden_size != teacher_hidden_size:
            if projection == "none":
                raise ValueError(
                    f"Hidden-state KD between widths {student_hidden_size} (student) and {teacher_hidden_size} "
                    "(teacher) needs a projection: set projection='linear' or alpha_hidden=0."
                )
            proj = projection
        matches += [LayerMatch(s, t, "hidden", hidden_loss, 1.0 / len(pairs), proj, teacher) for s, t in pairs]
    if attention_loss is not None:
        attn_pairs = [(s, t) for s, t in pairs if s > 0 and t > 0]
        if not attn_pairs:
            raise ValueError(f"Attention KD needs at least one pair of transformer blocks (>= 1), got {pairs}.")
        share = 1.0 / len(attn_pairs)
        matches += [LayerMatch(s, t, "attention", attention_loss, share, teacher=teacher) for s, t in attn_pairs]
    return matches
