"""GLUE tasks: task facts, readers for local GLUE files or the Hub, tokenization and metrics."""

from .glue import GLUE_TASKS, HUB_DATASET, GlueTask, features_for, get_task, load_glue, tokenize_glue
from .metrics import compute_metrics_for, glue_metrics

__all__ = [
    "GLUE_TASKS",
    "HUB_DATASET",
    "GlueTask",
    "compute_metrics_for",
    "features_for",
    "get_task",
    "glue_metrics",
    "load_glue",
    "tokenize_glue",
]
