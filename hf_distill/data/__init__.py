"""Causal-LM data: load text or chat datasets, tokenize them with loss masks, collate batches, score perplexity."""

from .lm import (
    LM_FORMATS,
    DistillationDataCollator,
    detect_format,
    load_lm_dataset,
    perplexity,
    read_text_split,
    tokenize_lm_dataset,
)

__all__ = [
    "LM_FORMATS",
    "DistillationDataCollator",
    "detect_format",
    "load_lm_dataset",
    "perplexity",
    "read_text_split",
    "tokenize_lm_dataset",
]
