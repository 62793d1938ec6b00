"""Causal-LM data: load text or chat datasets, tokenize them with loss masks, collate batches, score perplexity.
Classification data: teacher-labelled word-replacement augmentation (:mod:`.augment`)."""

from .augment import augment_dataset, embedding_neighbours, replace_words, word_candidates
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
    "augment_dataset",
    "embedding_neighbours",
    "replace_words",
    "word_candidates",
    "LM_FORMATS",
    "DistillationDataCollator",
    "detect_format",
    "load_lm_dataset",
    "perplexity",
    "read_text_split",
    "tokenize_lm_dataset",
]
