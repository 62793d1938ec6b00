"""Data: causal-LM text and chat datasets (load, tokenize with loss masks, collate, score perplexity), the one
row-padding helper, and teacher caches on disk (a causal LM's top-k log-probabilities, an encoder's logits and
internals), computed once."""

from .encoder_cache import (
    ENCODER_META_FILE,
    build_encoder_cache,
    is_encoder_cache,
    load_encoder_cache,
    with_cache_index,
)
from .lm import (
    LM_FORMATS,
    DistillationDataCollator,
    detect_format,
    load_lm_dataset,
    perplexity,
    read_text_split,
    tokenize_lm_dataset,
)
from .padding import PadColumns, pad_rows
from .teacher_cache import (
    CACHE_META_FILE,
    build_teacher_cache,
    cache_bytes_per_token,
    is_teacher_cache_batch,
    load_teacher_cache,
    teacher_fingerprint,
)

__all__ = [
    "ENCODER_META_FILE",
    "build_encoder_cache",
    "is_encoder_cache",
    "load_encoder_cache",
    "with_cache_index",
    "CACHE_META_FILE",
    "LM_FORMATS",
    "DistillationDataCollator",
    "build_teacher_cache",
    "cache_bytes_per_token",
    "detect_format",
    "is_teacher_cache_batch",
    "load_lm_dataset",
    "load_teacher_cache",
    "PadColumns",
    "pad_rows",
    "perplexity",
    "read_text_split",
    "teacher_fingerprint",
    "tokenize_lm_dataset",
]
