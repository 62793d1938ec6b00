"""Ragged rows to one padded batch tensor: the one padding helper of the collators, the teacher cache and generation."""

from __future__ import annotations

import torch


def pad_rows(
    rows,
    pad_value,
    *,
    width: int | None = None,
    dtype: torch.dtype | None = None,
    left: bool = False,
) -> torch.Tensor:
    """Rows ``(T_i, *rest)`` (tensors or lists) -> ``(B, width, *rest)``, padded with ``pad_value`` along the first axis.

    Args:
        rows: the rows; empty rows may have no ``rest`` shape (``[]``), the others share it.
        pad_value: fills the positions past a row (before it with ``left``).
        width: the output length, at least the longest row; default the longest row.
        dtype: of the output; default that of the first non-empty row (``int64`` when every row is empty).
        left: pad on the left (prompts for ``generate``), else on the right.
    """
    rows = [torch.as_tensor(r) for r in rows]
    shaped = [r for r in rows if r.numel()]
    rest = shaped[0].shape[1:] if shaped else ()
    longest = max((len(r) for r in rows), default=0)
    width = longest if width is None else width
    if width < longest:
        raise ValueError(f"width={width} is shorter than the longest row ({longest}).")
    dtype = dtype or (shaped[0].dtype if shaped else torch.int64)
    out = torch.full((len(rows), width, *rest), pad_value, dtype=dtype)
    for i, row in enumerate(rows):
        if row.numel():
            start = width - len(row) if left else 0
            out[i, start : start + len(row)] = row.to(dtype)
    return out


class PadColumns:
    """A data collator that pads the columns a column map adds (``teacher_input_ids``, ``teacher_attention_mask``...)
    itself and hands the other columns to ``collator`` (e.g. ``DataCollatorWithPadding``, which pads only the
    tokenizer's own columns).

    Args:
        collator: collates the features without ``pad``'s columns.
        pad: ``{column: pad value}``: each such column is padded to its longest row in the batch (a fixed-size
            value such as ``pixel_values`` is stacked as it is, whatever its pad value).
        left: pad on the left, as ``collator`` does with a tokenizer whose ``padding_side`` is ``"left"`` (positions
            that pair one to one must be padded alike); default on the right.
    """

    def __init__(self, collator, pad: dict[str, int | float], *, left: bool = False):
        self.collator, self.pad, self.left = collator, dict(pad), left

    def __call__(self, features: list[dict]) -> dict:
        own = {c: [f[c] for f in features] for c in self.pad if features and c in features[0]}
        batch = self.collator([{k: v for k, v in f.items() if k not in own} for f in features])
        for column, rows in own.items():
            batch[column] = pad_rows(rows, self.pad[column], left=self.left)
        return batch
