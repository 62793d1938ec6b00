"""Open every file of a saved model before trusting it: safetensors headers and tensors, PyTorch weight pickles, JSON
files and shard indexes. A push (:mod:`hf_distill.publish.hub`) and a resume from a checkpoint
(:class:`hf_distill.DistillationTrainer`) use these to refuse a truncated, empty or damaged file by name instead of
publishing or loading it.

Each check returns what is wrong as a short phrase (``"is empty (0 bytes)"``), or ``None`` when the file is whole; the
caller puts the path before it and the fix after it.

Also here, for every module that names model files (it imports nothing of the package): which files are a model's
weights (:func:`is_weight_file`, :func:`loadable_weights`), whether a name is meant as a local path
(:func:`looks_local`), the check of a model path given on the command line (:func:`check_model_path`), and the one
line of an exception that goes into an error message (:func:`error_line`).
"""

from __future__ import annotations

import json
import math
import os
import struct

# bits per element of each safetensors dtype (safetensors' format spec; sub-byte types are packed)
_SAFETENSORS_BITS = {
    **dict.fromkeys(("F64", "I64", "U64", "C64"), 64),
    **dict.fromkeys(("F32", "I32", "U32"), 32),
    **dict.fromkeys(("F16", "BF16", "I16", "U16"), 16),
    **dict.fromkeys(("I8", "U8", "BOOL", "F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ", "E8M0", "F8_E8M0"), 8),
    **dict.fromkeys(("F6_E2M3", "F6_E3M2"), 6),
    "F4": 4,
}
# the files from_pretrained reads a model's weights from: one file, or the index naming its shards; a PEFT adapter's
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "adapter_model.safetensors", "adapter_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
# endings of the files that hold (or index) weights of any kind: shards, GGUF, projection adapters...
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".index.json")
# files with a weight ending that hold no weights: the Trainer's pickled arguments
NOT_WEIGHTS = ("training_args.bin",)


def is_weight_file(name: str) -> bool:
    """Whether the file ``name`` holds or indexes weights of some kind (``*.safetensors``, ``*.bin``, ``*.gguf``,
    ``*.index.json``; not ``training_args.bin``)."""
    base = os.path.basename(name)
    return base.endswith(WEIGHT_SUFFIXES) and base not in NOT_WEIGHTS


def loadable_weights(names, safetensors_only: bool = False) -> list[str]:
    """The names among ``names`` (file names of one folder) that ``from_pretrained`` loads a model's weights from
    (:data:`WEIGHT_FILES`, :data:`WEIGHT_INDEXES`); with ``safetensors_only``, the safetensors ones alone (what
    ``use_safetensors=True`` reads)."""
    return [
        n
        for n in names
        if n in WEIGHT_FILES + WEIGHT_INDEXES
        and (not safetensors_only or n.endswith((".safetensors", ".safetensors.index.json")))
    ]


def error_line(err: BaseException, first: bool = True) -> str:
    """An exception's message as one line for an error message: its first non-blank line (``first``) or all of them
    joined by spaces; its type's name when it has no message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return lines[0] if first else " ".join(lines)


# ------------------------------------------------------------------------------------------------- model paths

# endings of local files that a Hub repository name never has
_FILE_EXTENSIONS = (
    ".json", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".onnx", ".h5", ".msgpack", ".model",
    ".txt", ".jsonl", ".tsv", ".csv", ".yaml", ".yml", ".parquet", ".arrow",
)  # fmt: skip


def looks_local(name: str) -> bool:
    """Whether ``name`` is meant as a local path rather than a Hub name ``org/name``: it starts with ``./``, ``../``,
    ``/`` or ``~``, has more than one path separator, or ends with a file extension."""
    separators = name.count("/") + (name.count(os.sep) if os.sep != "/" else 0)
    return (
        name in (".", "..")
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or os.path.isabs(name)
        or separators > 1
        or name.lower().endswith(_FILE_EXTENSIONS)
    )


def check_model_path(name: str | None, flag: str, safetensors_only: bool = False, weights: bool | str = True) -> None:
    """Refuse a model path that cannot be a model: a local-looking path that does not exist (no Hub retries), a file,
    or a folder without ``config.json`` or (unless ``weights=False``: only its config and tokenizer are read) without
    weights (:func:`loadable_weights`; only safetensors ones with ``safetensors_only``, for a job that loads with
    ``use_safetensors=True``); ``weights`` may say what the job needs them for, which the error then names. A Hub
    name (``org/name``) passes; loading it tells whether it exists."""
    if name is None:
        return
    if os.path.isdir(name):
        files = os.listdir(name)
        if "config.json" not in files and "adapter_config.json" not in files:
            raise ValueError(
                f"{flag} {name} has no config.json; pass the folder that save_pretrained wrote (config.json, weights "
                "and tokenizer files)."
            )
        if weights and not loadable_weights(files, safetensors_only):
            kinds = "model.safetensors (or a sharded model.safetensors.index.json)"
            if not safetensors_only:
                kinds = "model.safetensors, pytorch_model.bin, a *.index.json of shards or adapter_model.*"
            elif loadable_weights(files):
                kinds += " (this job loads safetensors only: re-save it with save_pretrained)"
            why = f", which this job needs to {weights}" if isinstance(weights, str) else ""
            raise ValueError(
                f"{flag} {name} has no weights ({kinds}){why}; pass the folder that save_pretrained wrote, weights "
                "included."
            )
    elif os.path.exists(name):
        raise ValueError(f"{flag} {name} is a file; pass the folder that holds it ({os.path.dirname(name) or '.'}).")
    elif looks_local(name):
        raise ValueError(
            f"{flag} {name} does not exist; pass an existing model folder, or a Hub name such as org/name."
        )


def _safetensors_header(path: str, size: int) -> tuple[dict | None, int, str | None]:
    """``(header, header length, None)`` or ``(None, 0, what is wrong)`` for the safetensors file at ``path`` of
    ``size`` bytes (8 bytes of little-endian header length, then the JSON header, then the tensors' bytes)."""
    if size < 8:
        return None, 0, f"is truncated: {size} bytes, too few for a safetensors header"
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if 8 + length > size:
            return None, 0, f"is truncated: its header needs {8 + length} bytes but the file has {size}"
        raw = f.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None, 0, "has a damaged header (not JSON)"
    if not isinstance(header, dict):
        return None, 0, "has a damaged header (not a JSON object)"
    return header, length, None


def _tensor_problem(name: str, entry) -> tuple[int, str | None]:
    """``(end offset, what is wrong or None)`` of one header entry: its byte range must hold its dtype and shape."""
    try:
        dtype, shape, (start, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        start, end, shape = int(start), int(end), [int(d) for d in shape]
    except (KeyError, TypeError, ValueError):
        return 0, f"has a damaged header entry for tensor {name!r}"
    bits = _SAFETENSORS_BITS.get(dtype)
    if bits is not None and end - start != math.ceil(math.prod(shape) * bits / 8):
        return end, (
            f"has a damaged header: tensor {name!r} ({dtype} {shape}) should take "
            f"{math.ceil(math.prod(shape) * bits / 8)} bytes, not {end - start}"
        )
    return end, None


def safetensors_problem(path: str, read_tensors: bool = True) -> str | None:
    """What is wrong with a safetensors file, or None: the header parses, every tensor's byte range fits its dtype
    and shape, the file is exactly ``8 + header length + last tensor end`` bytes, and (``read_tensors``) every
    tensor loads."""
    size = os.path.getsize(path)
    if size == 0:
        return "is empty (0 bytes)"
    header, length, problem = _safetensors_header(path, size)
    if problem:
        return problem
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        end, problem = _tensor_problem(name, entry)
        if problem:
            return problem
        data_end = max(data_end, end)
    expected = 8 + length + data_end
    if size < expected:
        return f"is truncated: its header describes {expected} bytes but the file has {size}"
    if size > expected:
        return f"has {size - expected} bytes after its last tensor (expected {expected} bytes in all)"
    if read_tensors:
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                for name in f.keys():
                    f.get_tensor(name)
        except Exception as err:  # the Rust reader's own checks (overlapping offsets, bad dtypes...)
            return f"cannot be read ({type(err).__name__}: {error_line(err)})"
    return None


def json_problem(path: str) -> str | None:
    """What is wrong with a JSON file, or None when it parses."""
    if os.path.getsize(path) == 0:
        return "is empty (0 bytes)"
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except UnicodeDecodeError:
        return "is not valid JSON (not UTF-8 text)"
    except json.JSONDecodeError as err:
        return f"is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})"
    return None


def torch_problem(path: str) -> str | None:
    """What is wrong with a PyTorch weights pickle (``pytorch_model.bin``), or None when ``torch.load`` reads it with
    ``weights_only=True``."""
    import torch

    if os.path.getsize(path) == 0:
        return "is empty (0 bytes)"
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, a non-tensor object...
        return f"cannot be read by torch.load(weights_only=True) ({type(err).__name__})"
    return None


def index_shards(folder: str, name: str) -> list[str] | None:
    """The shard files (relative to the index's own folder) that the sharded-weights index ``name`` of ``folder``
    names, each once; ``None`` when the index cannot be read or has no ``weight_map``."""
    try:
        with open(os.path.join(folder, name), encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(weight_map, dict) or not weight_map:
        return None
    return sorted({str(s) for s in weight_map.values()})


def index_problem(folder: str, name: str, open_shards: bool = True) -> str | None:
    """What is wrong with a sharded-weights index (``*.index.json``) in ``folder``, or None: it parses and every
    shard it names is there, beside it, and (``open_shards``) whole: each one opened (:func:`safetensors_problem`,
    :func:`torch_problem`)."""
    problem = json_problem(os.path.join(folder, name))
    if problem:
        return problem
    shards = index_shards(folder, name)
    if shards is None:
        return "has no weight_map"
    here = os.path.dirname(os.path.join(folder, name))  # shards lie beside their index, in a subfolder too
    missing = [s for s in shards if not os.path.isfile(os.path.join(here, s))]
    if missing:
        return f"names the shard {missing[0]}, which is missing" + (
            f" (and {len(missing) - 1} more)" if missing[1:] else ""
        )
    for shard in shards if open_shards else ():
        path = os.path.join(here, shard)
        problem = safetensors_problem(path) if shard.endswith(".safetensors") else torch_problem(path)
        if problem:
            return f"names the shard {shard}, which {problem}"
    return None


def file_problem(folder: str, name: str) -> str | None:
    """What is wrong with the file ``name`` of ``folder`` by its kind (safetensors, ``.bin``/``.pt`` weights, index,
    JSON), or None when it is whole or of a kind not checked here."""
    path = os.path.join(folder, name)
    if name.endswith(".safetensors"):
        return safetensors_problem(path)
    if name in WEIGHT_INDEXES or name.endswith(".index.json"):
        return index_problem(folder, name)
    if name.endswith(".json"):
        return json_problem(path)
    if name.endswith((".bin", ".pt")) and "model" in os.path.basename(name):
        return torch_problem(path)
    return None


def first_problem(folder: str, names) -> str | None:
    """``"path what is wrong"`` for the first damaged file among ``names`` (relative to ``folder``), or None. The
    shards that an index among ``names`` names are opened too, each once, whether ``names`` lists them or not."""
    names, shards = list(names), set()
    for index in [n for n in names if n.endswith(".index.json")]:
        for shard in index_shards(folder, index) or ():
            shards.add(os.path.normpath(os.path.join(os.path.dirname(index), shard)))
    names += sorted(shards - set(map(os.path.normpath, names)))
    for name in names:
        path = os.path.join(folder, name)
        if name.endswith(".index.json"):
            problem = index_problem(folder, name, open_shards=False)  # its shards are among names now
        elif os.path.normpath(name) in shards:
            if not os.path.isfile(path):
                continue  # its index says so
            problem = safetensors_problem(path) if name.endswith(".safetensors") else torch_problem(path)
        else:
            problem = file_problem(folder, name)
        if problem:
            return f"{path} {problem}"
    return None
