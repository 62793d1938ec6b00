"""Names every layer of the package may import (nothing here imports the package)."""

# the label of a position or example without a target: ignored by every task loss (PyTorch's cross_entropy default)
IGNORE_INDEX = -100

# the columns of a top-k teacher cache (hf_distill.data.teacher_cache): token ids and log-probabilities, (T, k) per example
TEACHER_CACHE_COLUMNS = ("teacher_topk_ids", "teacher_topk_logprobs")
# the columns of a cross-tokenizer teacher cache, (T,) or (T, k) per example at the student's positions: the teacher
# position compared there (-1: none), its top-k ids and log-probabilities, the chain rule's span log-probability (NaN: none)
CROSS_TOKENIZER_CACHE_COLUMNS = (
    "teacher_xtok_positions",
    "teacher_xtok_topk_ids",
    "teacher_xtok_topk_logprobs",
    "teacher_xtok_chain_logprobs",
)
# the row of an example in an encoder teacher cache (hf_distill.data.encoder_cache), kept through the collator
TEACHER_CACHE_INDEX = "teacher_cache_index"
# the prompts that on-policy / sequence-level KD generate completions from
GENERATION_COLUMNS = ("prompt_input_ids", "prompt_attention_mask", "prompt_length")

# what every job writes beside its model (hf_distill.report) and the model card reads (hf_distill.publish)
RESULTS_FILE = "results.json"
