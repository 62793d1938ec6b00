"""The nine GLUE tasks: their facts, readers for the GLUE download's TSV files (or the Hub), and tokenization.

Loading from local files and loading ``nyu-mll/glue`` from the Hub give the same columns, label order and features,
so everything downstream (models' ``id2label``, metrics) is the same whichever source was used.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import datasets

logger = logging.getLogger(__name__)

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class GlueTask:
    """What one GLUE task looks like: its names, text columns, label order (as on the Hub) and main metric.

    Regression (STS-B) has ``label_names=None``; its ``id2label``/``label2id`` are ``{0: "LABEL_0"}`` and
    ``{"LABEL_0": 0}``, the defaults transformers gives a ``num_labels=1`` config, so they are always safe to pass
    to ``from_pretrained``.
    """

    name: str
    dir_name: str
    text_keys: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metric: str
    eval_splits: tuple[str, ...] = ("validation",)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)

    @property
    def id2label(self) -> dict[int, str]:
        if self.label_names is None:
            return {0: "LABEL_0"}
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {label: i for i, label in self.id2label.items()}


GLUE_TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in (
        GlueTask("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), "matthews_correlation"),
        GlueTask("sst2", "SST-2", ("sentence",), ("negative", "positive"), "accuracy"),
        GlueTask("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1"),
        GlueTask("stsb", "STS-B", ("sentence1", "sentence2"), None, "pearson"),
        GlueTask("qqp", "QQP", ("question1", "question2"), ("not_duplicate", "duplicate"), "f1"),
        GlueTask(
            "mnli",
            "MNLI",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            "accuracy",
            ("validation_matched", "validation_mismatched"),
        ),
        GlueTask("qnli", "QNLI", ("question", "sentence"), ("entailment", "not_entailment"), "accuracy"),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy"),
        GlueTask("wnli", "WNLI", ("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy"),
    )
}


@dataclass(frozen=True)
class _TsvLayout:
    """Where a task's fields sit in the GLUE download's TSV files (0-based columns, -1 = last).

    ``header`` holds the names expected in the header line at ``text_cols + (label_col,)``, or ``None`` for files
    without a header (CoLA). A row whose field count differs from the header's (or ``num_cols``) is malformed.
    """

    text_cols: tuple[int, ...]
    label_col: int
    header: tuple[str, ...] | None
    num_cols: int | None = None


_LAYOUTS: dict[str, _TsvLayout] = {
    "cola": _TsvLayout((3,), 1, None, num_cols=4),
    "sst2": _TsvLayout((0,), 1, ("sentence", "label")),
    "mrpc": _TsvLayout((3, 4), 0, ("#1 String", "#2 String", "Quality")),
    "stsb": _TsvLayout((7, 8), -1, ("sentence1", "sentence2", "score")),
    "qqp": _TsvLayout((3, 4), 5, ("question1", "question2", "is_duplicate")),
    "mnli": _TsvLayout((8, 9), -1, ("sentence1", "sentence2", "gold_label")),
    "qnli": _TsvLayout((1, 2), 3, ("question", "sentence", "label")),
    "rte": _TsvLayout((1, 2), 3, ("sentence1", "sentence2", "label")),
    "wnli": _TsvLayout((1, 2), 3, ("sentence1", "sentence2", "label")),
}

# File the GLUE download writes for each split; MNLI has two dev files.
_SPLIT_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}


def _normalise(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "")


_ALIASES = {_normalise(alias): t for t in GLUE_TASKS.values() for alias in (t.name, t.dir_name)}


def get_task(name: str | GlueTask) -> GlueTask:
    """The task called ``name``: "sst2", "SST-2", "sst-2", "STS-B", "mnli"... (case-insensitive).

    A ``GlueTask`` is returned unchanged, so functions can take either.
    """
    if isinstance(name, GlueTask):
        return name
    task = _ALIASES.get(_normalise(name)) if isinstance(name, str) else None
    if task is None:
        raise ValueError(
            f"Unknown GLUE task {name!r}; choose one of {list(GLUE_TASKS)} (GLUE folder names such as 'SST-2' work too)."
        )
    return task


def load_glue(
    task: str | GlueTask, data_dir: str | os.PathLike | None = None, cache_dir: str | None = None
) -> datasets.DatasetDict:
    """Splits ``"train"`` and ``task.eval_splits`` with columns ``text_keys``, ``"label"`` and ``"idx"``.

    With ``data_dir``, read the TSV files the GLUE download script writes (``train.tsv``, ``dev.tsv``; MNLI
    ``dev_matched.tsv`` and ``dev_mismatched.tsv``) from that folder, or from ``data_dir/<dir_name>`` when
    ``data_dir`` is the GLUE root. Without it, load ``nyu-mll/glue`` from the Hub (``cache_dir`` is passed on) and
    drop the unlabelled test splits. Either way ``label`` is a ``ClassLabel`` (int64 index in the Hub's order) or a
    float32 score for STS-B, and ``idx`` is the row number within its split.
    """
    task = get_task(task)
    splits = ("train", *task.eval_splits)
    if data_dir is None:
        loaded = datasets.load_dataset(HUB_DATASET, task.name, cache_dir=cache_dir)
        return datasets.DatasetDict({split: loaded[split] for split in splits})
    folder = _task_folder(task, Path(data_dir))
    return datasets.DatasetDict({split: _read_split(task, folder / _SPLIT_FILES[split]) for split in splits})


def features_for(task: str | GlueTask) -> datasets.Features:
    """The ``datasets.Features`` of a loaded split, identical to those of ``nyu-mll/glue``."""
    task = get_task(task)
    features = {key: datasets.Value("string") for key in task.text_keys}
    if task.is_regression:
        features["label"] = datasets.Value("float32")
    else:
        features["label"] = datasets.ClassLabel(names=list(task.label_names))
    features["idx"] = datasets.Value("int32")
    return datasets.Features(features)


def task_files(task: str | GlueTask) -> list[str]:
    """The GLUE download's files of ``task``: ``["train.tsv", "dev.tsv"]`` (MNLI: its two dev files)."""
    return [_SPLIT_FILES[split] for split in ("train", *get_task(task).eval_splits)]


def _task_folder(task: GlueTask, data_dir: Path) -> Path:
    """``data_dir`` itself when it holds the task's files, else ``data_dir/<dir_name>`` when that does."""
    needed = task_files(task)
    for folder in (data_dir, data_dir / task.dir_name):
        if all((folder / name).is_file() for name in needed):
            return folder
    missing = next(data_dir / name for name in needed if not (data_dir / name).is_file())
    raise ValueError(
        f"GLUE file {missing} not found. For {task.name} the data_dir must hold {' and '.join(needed)} as the GLUE "
        f"download script writes them (or be the GLUE root with a {task.dir_name}/ folder holding them); "
        f"pass data_dir=None to load {HUB_DATASET} from the Hub instead."
    )


def _read_split(task: GlueTask, path: Path) -> datasets.Dataset:
    """Read one GLUE TSV file: tab-separated, no quoting (bare quotes are text), malformed rows skipped."""
    layout = _LAYOUTS[task.name]
    # utf-8-sig: MRPC's header starts with a byte-order mark. Split on "\n" only: no quoting, no other line breaks.
    lines = path.read_text(encoding="utf-8-sig").split("\n")
    rows = [line.split("\t") for line in (raw.removesuffix("\r") for raw in lines) if line]
    num_cols = layout.num_cols
    if layout.header is not None:
        header, rows = (rows[0] if rows else []), rows[1:]
        _check_header(task, path, header, layout)
        num_cols = len(header)

    columns: dict[str, list] = {key: [] for key in (*task.text_keys, "label", "idx")}
    skipped = 0
    for row in rows:
        label = _parse_label(task, row[layout.label_col]) if len(row) == num_cols else None
        if label is None:
            skipped += 1
            continue
        for key, col in zip(task.text_keys, layout.text_cols):
            columns[key].append(row[col])
        columns["label"].append(label)
        columns["idx"].append(len(columns["idx"]))

    if skipped:
        logger.warning("Skipped %d malformed row(s) of %d in %s.", skipped, len(rows), path)
    if not columns["idx"]:
        raise ValueError(
            f"No usable rows in {path}: every row needs {num_cols} tab-separated fields and a valid label for "
            f"{task.name} ({_label_help(task)}). Is this the {task.dir_name} file of the GLUE download?"
        )
    logger.info("Read %d %s rows from %s.", len(columns["idx"]), task.name, path)
    return datasets.Dataset.from_dict(columns, features=features_for(task))


def _check_header(task: GlueTask, path: Path, header: list[str], layout: _TsvLayout) -> None:
    """Fail early when the header names differ from the GLUE download's (e.g. another task's file)."""
    positions = (*layout.text_cols, layout.label_col)
    found = tuple(header[i] if -len(header) <= i < len(header) else None for i in positions)
    if found != layout.header:
        raise ValueError(
            f"Unexpected header in {path}: columns {list(positions)} are {list(found)}, expected "
            f"{list(layout.header)} for {task.name}. Point data_dir at the {task.dir_name} folder of the GLUE download."
        )


def _parse_label(task: GlueTask, field: str) -> int | float | None:
    """The label in Hub order (or the float score), or ``None`` when ``field`` is not a valid label."""
    field = field.strip()
    if task.is_regression:
        try:
            score = float(field)
        except ValueError:
            return None
        return score if math.isfinite(score) else None
    # Numeric labels in the GLUE files (CoLA, SST-2, MRPC, QQP, WNLI) are already in Hub order; the rest are names.
    lookup = {**task.label2id, **{str(i): i for i in range(task.num_labels)}}
    return lookup.get(field)


def _label_help(task: GlueTask) -> str:
    if task.is_regression:
        return "a float score"
    return f"one of {list(task.label_names)} or 0..{task.num_labels - 1}"


def tokenize_glue(
    dataset: datasets.DatasetDict | datasets.Dataset, tokenizer, task: str | GlueTask, max_length: int = 128
) -> datasets.DatasetDict | datasets.Dataset:
    """Tokenize the task's text columns (pairs for two-sentence tasks), truncated to ``max_length``, unpadded.

    The result has ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the tokenizer returns them) and
    ``labels``; every other column is removed. Padding is left to the data collator.
    """
    task = get_task(task)
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}.")
    if isinstance(dataset, datasets.Dataset):
        return _tokenize_split(dataset, tokenizer, task, max_length, "data")
    return datasets.DatasetDict(
        {name: _tokenize_split(split, tokenizer, task, max_length, name) for name, split in dataset.items()}
    )


def _tokenize_split(split: datasets.Dataset, tokenizer, task: GlueTask, max_length: int, name: str):
    missing = [key for key in (*task.text_keys, "label") if key not in split.column_names]
    if missing:
        raise ValueError(
            f"Split {name!r} lacks columns {missing} needed for {task.name} (it has {split.column_names}); "
            f"load it with hf_distill.tasks.load_glue({task.name!r}, ...)."
        )

    def encode(batch):
        texts = [batch[key] for key in task.text_keys]
        encoded = dict(tokenizer(*texts, truncation=True, max_length=max_length))
        encoded["labels"] = batch["label"]
        return encoded

    encoded = split.map(encode, batched=True, remove_columns=split.column_names, desc=f"Tokenizing {task.name}/{name}")
    # float32 scores (not Arrow's default float64) so MSE sees the logits' dtype; int64 class indices otherwise.
    return encoded.cast_column("labels", datasets.Value("float32" if task.is_regression else "int64"))
