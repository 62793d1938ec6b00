"""Distill a BERT-family teacher on a GLUE task: the same job as `hf-distill glue`, as a script to copy and edit.

    python examples/glue/run_glue.py \
        --config examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml [--flag value ...]
"""

import sys

from hf_distill.cli import parse_with_config
from hf_distill.distillation_config import DistillationConfig
from hf_distill.recipes.glue import GlueArguments, run

if __name__ == "__main__":
    glue_args, args = parse_with_config([GlueArguments, DistillationConfig], sys.argv[1:], "run_glue.py")
    run(glue_args, args)
