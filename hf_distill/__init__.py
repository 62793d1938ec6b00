"""hf_distill: knowledge distillation for Hugging Face language models."""

import logging as _logging
import os as _os

# Like transformers, the library logger prints INFO by default (the resolved layer pairs, attention switches);
# HF_DISTILL_VERBOSITY=warning (or error) quietens it.
_logger = _logging.getLogger(__name__)
if not _logger.handlers:
    _handler = _logging.StreamHandler()
    _handler.setFormatter(_logging.Formatter("[hf_distill] %(levelname)s %(message)s"))
    _logger.addHandler(_handler)
    _logger.setLevel(_os.environ.get("HF_DISTILL_VERBOSITY", "info").upper())
    _logger.propagate = False

from .distillation_config import DistillationConfig  # noqa: E402
from .distillation_trainer import DISTILLATION_CONFIG_FILE, DistillationTrainer  # noqa: E402
from .losses import available_losses, get_loss, register_loss  # noqa: E402
from .mapping import LayerMatch, resolve_layer_pairs  # noqa: E402
from .models import build_student  # noqa: E402
from .version import __version__  # noqa: E402

__all__ = [
    "DISTILLATION_CONFIG_FILE",
    "DistillationConfig",
    "DistillationTrainer",
    "LayerMatch",
    "__version__",
    "available_losses",
    "build_student",
    "get_loss",
    "register_loss",
    "resolve_layer_pairs",
]
