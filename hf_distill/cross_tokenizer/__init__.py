"""Cross-tokenizer distillation (issue 19): align a teacher's and a student's tokens on the text they cover, and
match the tokens their vocabularies share.

``spans``: one text encoded with character spans; ``align``: groups of tokens covering the same text and the
positions whose next-token predictions are compared; ``vocab``: the tokens both vocabularies spell the same way;
``retokenize``: a batch of student rows encoded for the teacher from their bytes, aligned. The divergences between
the two models' predictions at the compared positions (exact, ULD, chain rule) are pure losses:
:mod:`hf_distill.losses.cross_tokenizer`, chunked in :mod:`hf_distill.losses.cross_tokenizer_chunked`.
"""

from ..losses.cross_tokenizer import (
    ULD_TOP_K,
    ChainRows,
    ChainTargets,
    CrossTokenizerMix,
    TopKRows,
    chain_rule_divergence,
    cross_tokenizer_loss,
    shared_log_probs,
    shared_vocab_divergence,
    span_logprobs,
    uld_loss,
)
from .align import AlignedPositions, SpanGroup, align_spans, aligned_positions, chain_rule_rows
from .retokenize import ByteTable, Retokenized, byte_table, retokenize
from .spans import TokenSpans, encode_with_spans, normalise_spans
from .vocab import check_tokenizer_pair, describe_shared_vocabulary, shared_vocabulary, token_bytes, tokenizer_record

__all__ = [
    "ULD_TOP_K",
    "ByteTable",
    "Retokenized",
    "AlignedPositions",
    "ChainRows",
    "ChainTargets",
    "CrossTokenizerMix",
    "SpanGroup",
    "TokenSpans",
    "TopKRows",
    "align_spans",
    "byte_table",
    "retokenize",
    "aligned_positions",
    "chain_rule_divergence",
    "chain_rule_rows",
    "check_tokenizer_pair",
    "cross_tokenizer_loss",
    "describe_shared_vocabulary",
    "encode_with_spans",
    "normalise_spans",
    "shared_log_probs",
    "shared_vocab_divergence",
    "shared_vocabulary",
    "span_logprobs",
    "token_bytes",
    "tokenizer_record",
    "uld_loss",
]
