"""Distill a causal LM into a smaller one: the same job as `hf-distill causal-lm`, as a script to copy and edit.

python examples/causal_lm/run_causal_lm.py --config examples/causal_lm/configs/kd-smollm2_15l_from_smollm2_135m-shakespeare.yaml
"""

import sys

from hf_distill.cli import parse_with_config
from hf_distill.distillation_config import DistillationConfig
from hf_distill.recipes.causal_lm import CausalLMArguments
from hf_distill.recipes.causal_lm_job import run

if __name__ == "__main__":
    lm_args, args = parse_with_config([CausalLMArguments, DistillationConfig], sys.argv[1:], "run_causal_lm.py")
    run(lm_args, args)
