"""The files of a student's folder that the card and the push read, and the small readers both use."""

from __future__ import annotations

import json
import os
import re

from huggingface_hub import ModelCard

# the student's files the card reads or describes; publish/hub.py builds its upload list from these too
CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"  # a peft (LoRA) student saved as an adapter: no config.json of its own
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
)


def read_json(folder: str, name: str) -> dict | None:
    """The JSON object in ``folder/name``, or ``None`` when there is no such file."""
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def is_repo_id(name: str | None) -> bool:
    """A Hub id such as ``bert-base-uncased`` or ``org/model`` (not a local folder or a description)."""
    pattern = r"[\w-]+(\.[\w-]+)*(/[\w-]+(\.[\w-]+)*)?"
    return bool(name) and not os.path.exists(name) and re.fullmatch(pattern, name) is not None


def local_license(teacher: str | None) -> str | None:
    """The license in a local teacher folder's README.md metadata, if any."""
    readme = os.path.join(teacher or "", CARD_FILE)
    if not teacher or not os.path.isfile(readme):
        return None
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except Exception:  # an unreadable card only costs the license line
        return None
