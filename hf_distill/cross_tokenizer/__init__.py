"""Cross-tokenizer distillation (issue 19): align a teacher's and a student's tokens on the text they cover, and
match the tokens their vocabularies share.

``spans``: one text encoded with character spans; ``align``: groups of tokens covering the same text and the
positions whose next-token predictions are compared; ``vocab``: the tokens both vocabularies spell the same way.
"""

from .align import AlignedPositions, SpanGroup, align_spans, aligned_positions
from .spans import TokenSpans, encode_with_spans, normalise_spans
from .vocab import describe_shared_vocabulary, shared_vocabulary, token_bytes

__all__ = [
    "AlignedPositions",
    "SpanGroup",
    "TokenSpans",
    "align_spans",
    "aligned_positions",
    "describe_shared_vocabulary",
    "encode_with_spans",
    "normalise_spans",
    "shared_vocabulary",
    "token_bytes",
]
