"""Column maps: which batch columns each model reads, so that the teacher and the student may read different inputs
of the same example (the clean sentence and its noised copy, a sentence and its translation, an image and its
caption).

A column map is ``{forward argument: batch column}``; a model with one is called with exactly those arguments. A
column some teacher's map names is that teacher's: a model without a map (the student by default) reads the batch's
other model inputs. A column two models both read is named in both maps (``student_columns`` for the student)::

    teacher_columns={"input_ids": "teacher_input_ids", "attention_mask": "teacher_attention_mask"}
    # the teacher reads the clean text in teacher_*; the student reads input_ids / attention_mask, the noised text
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from ..constants import CROSS_TOKENIZER_CACHE_COLUMNS, GENERATION_COLUMNS, TEACHER_CACHE_COLUMNS, TEACHER_CACHE_INDEX

# batch columns that are no model input: the targets, a top-k teacher cache (of the same vocabulary or across
# tokenizers), the row of an encoder teacher cache, the prompts completions are generated from; a column map may not
# name them
NOT_MODEL_INPUTS = (
    "labels",
    *TEACHER_CACHE_COLUMNS,
    *CROSS_TOKENIZER_CACHE_COLUMNS,
    TEACHER_CACHE_INDEX,
    *GENERATION_COLUMNS,
)
# the columns whose (batch, positions) shape says which positions a model reads
POSITION_ARGUMENTS = ("input_ids", "attention_mask")


def parse_column_map(value, name: str) -> dict[str, str] | None:
    """``value`` (a dict, a JSON object string, or ``None``) as ``{argument: column}``; a ``ValueError`` naming
    ``name`` (the config field) for anything else."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = None
    example = '{"input_ids": "teacher_input_ids", "attention_mask": "teacher_attention_mask"}'
    if not isinstance(value, Mapping) or not value:
        raise ValueError(f"{name} must be a non-empty map of forward argument to batch column, such as {example}.")
    for argument, column in value.items():
        if not (isinstance(argument, str) and argument and isinstance(column, str) and column):
            raise ValueError(f"{name} entry {argument!r}: {column!r} must map an argument name to a column name.")
        if column in NOT_MODEL_INPUTS or argument in NOT_MODEL_INPUTS:
            raise ValueError(
                f"{name} entry {argument!r}: {column!r} names {column if column in NOT_MODEL_INPUTS else argument!r}, "
                "which is no model input (labels, teacher caches and prompts are read by the trainer): map model "
                "inputs only."
            )
    return dict(value)


def check_columns(columns: Mapping[str, str] | None, available: Iterable[str] | None, where: str) -> None:
    """Refuse a map naming a column that a dataset (its ``available`` columns; ``None``: unknown) lacks."""
    if not columns or available is None:
        return
    available = list(available)
    for argument, column in columns.items():
        if column not in available:
            raise ValueError(
                f"{where} reads {argument!r} from column {column!r}, which the dataset lacks (its columns: "
                f"{', '.join(available)}): add the column, or map {argument!r} to one of those."
            )


def claimed_columns(maps: Iterable[Mapping[str, str] | None], student_columns: Mapping[str, str] | None) -> set[str]:
    """The columns only the models with a map read: those the teachers' ``maps`` name, less the student's own."""
    claimed = {column for columns in maps if columns for column in columns.values()}
    return claimed - set((student_columns or {}).values())


def read_columns(batch: Mapping, columns: Mapping[str, str], where: str) -> dict:
    """The forward arguments ``columns`` names, read from ``batch``."""
    missing = [c for c in columns.values() if c not in batch]
    if missing:
        raise ValueError(
            f"{where} reads column {missing[0]!r}, which this batch lacks (its columns: {', '.join(batch)}): add it "
            "to the dataset (training and evaluation alike) and keep it through the data collator."
        )
    return {argument: batch[column] for argument, column in columns.items()}


def model_inputs(batch: Mapping) -> dict:
    """The batch without its columns that are no model input (labels, a teacher cache, prompts): what a model
    without a column map reads."""
    return {k: v for k, v in batch.items() if k not in NOT_MODEL_INPUTS}


def without(batch: Mapping, columns: set[str]) -> dict:
    """``batch`` without ``columns`` (what a model without a map sees)."""
    return {k: v for k, v in batch.items() if k not in columns}


def positions_differ(teacher_inputs: Mapping, student_inputs: Mapping) -> tuple[str, tuple | None, tuple] | None:
    """``(argument, teacher shape, student shape)`` where the two models read position-wise inputs of other
    shapes, or the teacher reads none (an image, a clip: ``None`` for its shape), so that no position of one is a
    position of the other; else ``None``."""
    if not any(a in teacher_inputs for a in POSITION_ARGUMENTS):
        argument = next((a for a in POSITION_ARGUMENTS if a in student_inputs), None)
        return None if argument is None else (argument, None, tuple(student_inputs[argument].shape[:2]))
    for argument in POSITION_ARGUMENTS:
        t, s = teacher_inputs.get(argument), student_inputs.get(argument)
        if t is not None and s is not None and tuple(t.shape[:2]) != tuple(s.shape[:2]):
            return argument, tuple(t.shape[:2]), tuple(s.shape[:2])
    return None


def check_positions(teacher, batch: Mapping, student_inputs: Mapping, request, task: str) -> None:
    """Refuse a position-wise term (hidden states, attention, relations, token-level logits) between a teacher whose
    column map reads other positions than the student (another length, or no tokens at all) and the student."""
    positional = request.hidden_layers or request.attention_layers or request.qkv_layers
    if not (teacher.columns and (positional or (request.logits and task != "sequence_classification"))):
        return
    differ = positions_differ(teacher.inputs(batch), student_inputs)
    if differ is None:
        return
    argument, theirs, ours = differ
    read = f"{argument} of shape {theirs}" if theirs else f"no {argument}"
    raise ValueError(
        f"{teacher.name} reads {read} through its column map, the student {argument} of shape {ours}: hidden-state, "
        "attention and token-level logit KD pair their positions one to one. Give both models inputs of the same "
        "positions, or set alpha_hidden=alpha_attention=0 (with a sequence-level task for the logits)."
    )


def check_dataset_columns(teachers, student_columns: Mapping[str, str] | None, datasets: Mapping) -> None:
    """Before training: every column a map names exists in each dataset that says what columns it has."""
    for split, dataset in datasets.items():
        available = getattr(dataset, "column_names", None)
        if dataset is None or not isinstance(available, list):
            continue
        for teacher in teachers:
            check_columns(teacher.columns, available, f"{teacher.name}'s column map ({split} data)")
        check_columns(student_columns, available, f"student_columns ({split} data)")
