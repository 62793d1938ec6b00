"""GLUE tasks: task facts, readers for local GLUE files or the Hub, tokenization, metrics, and teacher-labelled
word-replacement augmentation (:mod:`.augment`)."""

from .augment import augment_dataset, embedding_neighbours, replace_words, word_candidates
from .glue import GLUE_TASKS, HUB_DATASET, GlueTask, features_for, get_task, load_glue, tokenize_glue
from .metrics import compute_metrics_for, glue_metrics

__all__ = [
    "GLUE_TASKS",
    "HUB_DATASET",
    "GlueTask",
    "augment_dataset",
    "compute_metrics_for",
    "embedding_neighbours",
    "features_for",
    "get_task",
    "glue_metrics",
    "load_glue",
    "replace_words",
    "tokenize_glue",
    "word_candidates",
]
