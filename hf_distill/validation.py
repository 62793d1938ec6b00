"""Checks of a job's inputs, run before any model is loaded or trained: config files, model paths, tokenizers, the
student spec, data files and the output folder.

Each check raises ``ValueError`` with one line that names the bad value, its flag and the fix; the CLI prints that
line (``hf-distill <command>: error: ...``) and exits with code 2. Each job gathers them in its ``validate_*_job``
(``hf_distill.recipes.glue_checks``, ``hf_distill.recipes.causal_lm_checks``), called first thing by its ``run``.
"""

from __future__ import annotations

import glob
import math
import os
import shutil

import yaml

from .file_checks import check_model_path, error_line, looks_local

# ------------------------------------------------------------------------------------------------- config files

# keys of a recipe YAML that name local paths, resolved against the YAML file's folder (output_dir, logging_dir and
# resume_from_checkpoint are not: a job's output goes where it is run from)
PATH_KEYS = ("data_dir", "train_file", "validation_files", "teacher_cache_dir", "cache_dir", "folder")
# keys that may be a local folder or a Hub name: resolved only when they look like a path or exist beside the YAML
MODEL_KEYS = ("teacher_model_name_or_path", "student_model_name_or_path")


def load_config_file(path: str) -> dict:
    """The mapping of flag values in the YAML file ``path`` (``{}`` for an empty file), paths resolved by
    :func:`resolve_config_paths`."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ValueError(f"--config {path} {what}; pass the path of a YAML file of flag values.")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f)
    except OSError as err:  # no read permission, a device...
        raise ValueError(
            f"--config {path} cannot be read ({err.strerror or error_line(err)}); make it readable, or pass another "
            "YAML file."
        ) from err
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ValueError(f"--config {path} is not valid YAML ({problem}{at}); fix the file's syntax.") from err
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ValueError(
            f"--config {path} holds a {type(values).__name__}, not a mapping; write one 'flag: value' per line."
        )
    return resolve_config_paths(values, os.path.dirname(path))


def resolve_config_paths(values: dict, config_dir: str) -> dict:
    """``values`` with their local paths made relative to ``config_dir`` (the YAML file's folder) instead of the
    working directory: every :data:`PATH_KEYS` value (a ``validation_files`` entry only when it looks like a path,
    not a Hub split name), and :data:`MODEL_KEYS` values that look local or exist there (``org/name`` stays a Hub
    name). Absolute paths are unchanged; ``~`` is expanded."""

    def resolve(value, key: str):
        if not isinstance(value, str):
            return value
        value = os.path.expanduser(value)
        beside = os.path.normpath(os.path.join(config_dir, value))
        if os.path.isabs(value):
            return value
        if key in MODEL_KEYS or key == "validation_files":
            separator = key == "validation_files" and ("/" in value or os.sep in value)
            return beside if looks_local(value) or separator or os.path.exists(beside) else value
        return beside

    out = dict(values)
    for key in PATH_KEYS + MODEL_KEYS:
        value = out.get(key)
        if isinstance(value, list):
            out[key] = [resolve(v, key) for v in value]
        elif value is not None:
            out[key] = resolve(value, key)
    return out


# ------------------------------------------------------------------------------------------------------- models


def load_model_config(
    name: str, flag: str, trust_remote_code: bool = False, safetensors_only: bool = False, weights: bool | str = True
):
    """The ``AutoConfig`` of ``name`` (after :func:`check_model_path`, which ``safetensors_only`` and ``weights`` are
    passed to); a folder or Hub name that cannot be read is a ``ValueError`` naming ``flag``."""
    from transformers import AutoConfig

    from .models import resolve_model_path  # here: it imports torch and transformers' model classes

    check_model_path(name, flag, safetensors_only, weights)
    try:
        return AutoConfig.from_pretrained(resolve_model_path(name), trust_remote_code=trust_remote_code)
    except OSError as err:
        raise ValueError(
            f"{flag} {name}: cannot read its config ({error_line(err)}); pass a model folder or a Hub name that "
            "exists."
        ) from err


# files of which a saved tokenizer has at least one
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
    "sentencepiece.bpe.model",
)  # fmt: skip


def load_tokenizer(name: str, flag: str, config=None):
    """The tokenizer of model ``name``; a folder without tokenizer files, or one that cannot be loaded, is a
    ``ValueError`` naming ``flag``. With the model's ``config``, a tokenizer whose vocabulary is far smaller than the
    model's embedding rows is refused too (:func:`check_tokenizer_vocab`)."""
    from transformers import AutoTokenizer

    from .models import resolve_model_path  # here: it imports torch and transformers' model classes

    path = resolve_model_path(name)
    if os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES):
        raise ValueError(
            f"{flag} {name} has no tokenizer files ({', '.join(TOKENIZER_FILES[:3])}...); save the tokenizer in the "
            "folder (tokenizer.save_pretrained)."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"{flag} {name}: cannot load its tokenizer ({error_line(err)}); save the tokenizer in the folder "
            "(tokenizer.save_pretrained)."
        ) from err
    if config is not None:
        check_tokenizer_vocab(tokenizer, config, name, flag)
    return tokenizer


def check_tokenizer_vocab(tokenizer, config, name: str, flag: str) -> None:
    """Refuse a tokenizer with fewer than half as many tokens as the model has embedding rows: transformers 5 builds
    a 5-token tokenizer for a folder without tokenizer files, and a job would then train on all-[UNK] input."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    rows = getattr(text_config, "vocab_size", None)
    if isinstance(rows, int) and len(tokenizer) < rows / 2:
        raise ValueError(
            f"{flag} {name}: its tokenizer has {len(tokenizer)} tokens but the model has {rows} embedding rows, so "
            "the tokenizer files are missing or wrong; save the tokenizer in the folder (tokenizer.save_pretrained)."
        )


# ---------------------------------------------------------------------------------------------------- student spec


def parse_layers(spec, flag: str = "--student_layers") -> list[int] | None:
    """``"1,3,5"`` (or ``[1, 3, 5]``, or ``3``) as ``[1, 3, 5]``; ``None`` stays ``None`` (the default layers)."""
    if spec is None:
        return None
    items = spec.split(",") if isinstance(spec, str) else (spec if isinstance(spec, list | tuple) else [spec])
    try:
        layers = [int(str(i).strip()) for i in items]
    except ValueError:
        raise ValueError(
            f"{flag} {spec!r} is not a list of layer numbers; give 0-based teacher layers separated by commas, "
            f"e.g. {flag} 1,3,5."
        ) from None
    if not layers:
        raise ValueError(f"{flag} is empty; give at least one 0-based teacher layer, e.g. {flag} 1,3,5.")
    return layers


def check_layers(layers: list[int] | None, num_teacher_layers: int | None, flag: str = "--student_layers") -> None:
    """Refuse layers outside ``0..num_teacher_layers - 1`` or not strictly increasing."""
    if layers is None:
        return
    spec = ",".join(map(str, layers))
    if num_teacher_layers is not None:
        bad = [i for i in layers if not 0 <= i < num_teacher_layers]
        if bad:
            raise ValueError(
                f"{flag} {spec}: layer {bad[0]} is out of range, the teacher has {num_teacher_layers} layers; give "
                f"0-based layers from 0 to {num_teacher_layers - 1}."
            )
    if any(b <= a for a, b in zip(layers, layers[1:])):
        raise ValueError(f"{flag} {spec}: give the layers in strictly increasing order, each once.")


def num_layers(config) -> int | None:
    """The number of transformer blocks of a model config (``num_hidden_layers``, GPT-2's ``n_layer``...)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text_config, "num_hidden_layers", None)
    return value if isinstance(value, int) else None


def student_depth(layers: list[int] | None, student_config, teacher_layers: int | None):
    """``(student blocks, teacher blocks it was built from or None)`` of a job's student: ``--student_layers``, a
    ``--student_model_name_or_path`` config, or build_student's default (every other teacher block: half, rounded
    up)."""
    if student_config is not None:
        return num_layers(student_config), getattr(student_config, "distillation_teacher_layers", None)
    if layers is not None:
        return len(layers), layers
    if teacher_layers is None:
        return None, None
    # build_student's default, every other block: encoders end with the last, decoders start with the first (as many
    # blocks either way, and the number is all that a layer map is checked against)
    return (teacher_layers + 1) // 2, list(range(teacher_layers - 1, -1, -2))[::-1]


def check_layer_maps(args, num_student_layers: int | None, num_teacher_layers: int | None, init_layers=None) -> None:
    """Refuse a ``--layer_map`` / ``--attention_layer_map`` that a student of ``num_student_layers`` blocks (built
    from the teacher blocks ``init_layers``) and a teacher of ``num_teacher_layers`` cannot match, as
    ``DistillationTrainer`` resolves them (only with ``alpha_hidden`` or ``alpha_attention`` > 0): a pair naming a
    layer either model lacks, ``init`` for a student not built from the teacher, an attention map without a pair of
    blocks. Checked before any teacher is loaded or fine-tuned."""
    from .mapping.layer_map import parse_layer_pairs, resolve_layer_pairs  # here: the package imports torch

    if not (args.alpha_hidden > 0 or args.alpha_attention > 0) or None in (num_student_layers, num_teacher_layers):
        return
    ns, nt = num_student_layers, num_teacher_layers
    maps = [("--layer_map", args.layer_map)]  # the trainer resolves it whenever either term is on
    attention_flag = "--layer_map"
    if args.attention_layer_map is not None and args.alpha_attention > 0:
        maps.append(("--attention_layer_map", args.attention_layer_map))
        attention_flag = "--attention_layer_map"
    for flag, spec in maps:
        if spec not in ("uniform", "last", "init"):
            for s, t in parse_layer_pairs(spec):
                if not (0 <= s <= ns and 0 <= t <= nt):
                    raise ValueError(
                        f"{flag} {spec}: pair {s}:{t} names a layer the models lack, the student has layers 0..{ns} "
                        f"and the teacher 0..{nt} (0 is the embeddings); give pairs in those ranges, or {flag} uniform."
                    )
        try:
            pairs = resolve_layer_pairs(spec, ns, nt, init_layers)
        except ValueError as err:
            raise ValueError(f"{flag} {spec}: {error_line(err)}") from err
        if args.alpha_attention > 0 and flag == attention_flag and not any(s > 0 and t > 0 for s, t in pairs):
            raise ValueError(
                f"{flag} {spec}: attention KD needs a pair of transformer blocks (layers 1 and up, 0 is the "
                f"embeddings); add one, or {flag} last."
            )


# ------------------------------------------------------------------------------------------------------- label heads


def check_label_head(config, task, name: str, flag: str, trained: bool, can_finetune: bool = True) -> None:
    """Refuse a model whose sequence-classification head does not fit GLUE ``task`` (a ``GlueTask``).

    ``trained``: the job trains this model (a student, or a teacher with ``--finetune_teacher``), so a base model
    without a head is fine; otherwise its head must be task-tuned. A head of another shape (3 labels on SST-2, a
    classifier on STS-B) or the task's label names in another order is an error either way. ``can_finetune``: the
    command has ``--finetune_teacher`` (``compare`` has not), which the message then offers.
    """
    archs = list(getattr(config, "architectures", None) or [])
    has_head = any(a.endswith("ForSequenceClassification") for a in archs)
    finetune = ", or a base model with --finetune_teacher true" if can_finetune else ""
    if not has_head:
        if not trained and archs:
            raise ValueError(
                f"{flag} {name} is a {archs[0]} without a classification head for {task.name}; pass a model "
                f"fine-tuned on {task.name}{finetune}."
            )
        return
    fix = (
        f"pass a base model (no task head) or one fine-tuned on {task.name}"
        if trained
        else f"pass a model fine-tuned on {task.name}{finetune}"
    )
    regression = config.num_labels == 1 and config.problem_type in (None, "regression")
    head = "a regression head (1 output)" if regression else f"a {config.num_labels}-label classification head"
    if config.problem_type == "multi_label_classification":
        head = f"a multi-label head ({config.num_labels} outputs)"
    want = "a regression task (1 output)" if task.is_regression else f"a {task.num_labels}-label classification task"
    fits = (
        regression
        if task.is_regression
        else (config.num_labels == task.num_labels and config.problem_type in (None, "single_label_classification"))
    )
    if not fits:
        raise ValueError(f"{flag} {name} has {head} but {task.name} is {want}; {fix}.")
    if not task.is_regression:
        names = [str((config.id2label or {}).get(i, f"LABEL_{i}")).lower() for i in range(config.num_labels)]
        wanted = [n.lower() for n in task.label_names]
        if sorted(names) == sorted(wanted) and names != wanted:
            raise ValueError(
                f"{flag} {name} orders its labels {names}, {task.name} orders them {wanted}; its outputs would be "
                f"read permuted: {fix}."
            )


# --------------------------------------------------------------------------------------------------------- data


def check_glue_data_dir(data_dir: str | None, task, flag: str = "--data_dir") -> None:
    """Refuse a ``data_dir`` that does not hold the GLUE download's files of ``task`` (``train.tsv``, ``dev.tsv``;
    MNLI's two dev files), in itself or in ``data_dir/<GLUE folder name>``. ``None`` (the Hub) passes."""
    if data_dir is None:
        return
    from .tasks.glue import task_files

    needed = task_files(task)
    where = f"the {task.dir_name} files of the GLUE download ({', '.join(needed)})"
    if not os.path.isdir(data_dir):
        raise ValueError(
            f"{flag} {data_dir} does not exist; pass the folder with {where}, or leave {flag} unset to load "
            f"{task.name} from the Hub."
        )
    for folder in (data_dir, os.path.join(data_dir, task.dir_name)):
        if all(os.path.isfile(os.path.join(folder, n)) for n in needed):
            return
    missing = [n for n in needed if not os.path.isfile(os.path.join(data_dir, n))]
    raise ValueError(f"{flag} {data_dir} has no {' or '.join(missing)}; pass the folder with {where}.")


def check_dataset_name(name: str | None, flag: str = "--dataset_name") -> None:
    """Refuse a ``--dataset_name`` meant as a local path that is no dataset folder: one that does not exist (never
    tried on the Hub) or a file (that is ``--train_file``'s). A Hub name (``org/name``) passes: loading it tells."""
    if name is None or os.path.isdir(name):
        return
    if os.path.isfile(name):
        raise ValueError(f"{flag} {name} is a file; pass it with --train_file, or pass a dataset folder or Hub name.")
    if looks_local(name):
        raise ValueError(
            f"{flag} {name} does not exist; pass an existing dataset folder, a Hub dataset such as org/name, or "
            "local files with --train_file."
        )


def check_lm_file_type(path: str, flag: str) -> None:
    """Refuse a causal-LM data file of a kind the job does not read (by its ending: ``.csv``, ``.parquet``...)."""
    from .data.lm import LM_FILE_EXTENSIONS  # here: the data package imports torch and datasets

    if not path.lower().endswith(LM_FILE_EXTENSIONS):
        ending = os.path.splitext(path)[1]
        kind = f"{ending} files" if ending else "files without an extension"
        raise ValueError(
            f"{flag} {path}: the causal-LM job does not read {kind}, only {', '.join(LM_FILE_EXTENSIONS)} "
            "(.txt: plain text; .json/.jsonl: records with text, prompt/completion or messages); convert it."
        )


def check_text_file(path: str, flag: str) -> None:
    """Refuse a training or validation file that does not exist or holds nothing but whitespace."""
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise ValueError(f"{flag} {path} {what}; pass a .txt, .json or .jsonl file.")
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.strip():
                return
    raise ValueError(f"{flag} {path} is empty or blank; give a file with text (.txt) or records (.json/.jsonl).")


# ---------------------------------------------------------------------------------------------- budget and output


def check_train_budget(max_steps: int, num_train_epochs: float) -> None:
    """Refuse a step budget that trains nothing or means nothing: ``--max_steps`` must be positive or -1 (the
    default: ``--num_train_epochs`` epochs, which must then be positive)."""
    if max_steps == 0 or max_steps < -1:
        raise ValueError(
            f"--max_steps {max_steps}: give a positive number of optimizer steps, or -1 (the default) to train for "
            "--num_train_epochs."
        )
    if max_steps == -1 and not (math.isfinite(num_train_epochs) and num_train_epochs > 0):
        raise ValueError(
            f"--num_train_epochs {num_train_epochs} trains nothing; give a positive number of epochs, or --max_steps N."
        )


def check_teacher_budget(teacher_max_steps: int | None, teacher_num_train_epochs: float) -> None:
    """The same for GLUE teacher fine-tuning, whose ``--teacher_max_steps`` is unset (``None``) by default."""
    if teacher_max_steps is not None and teacher_max_steps < 1:
        raise ValueError(
            f"--teacher_max_steps {teacher_max_steps}: give a positive number of optimizer steps, or leave it unset "
            "to train for --teacher_num_train_epochs."
        )
    if teacher_max_steps is None and not (math.isfinite(teacher_num_train_epochs) and teacher_num_train_epochs > 0):
        raise ValueError(
            f"--teacher_num_train_epochs {teacher_num_train_epochs} trains nothing; give a positive number of "
            "epochs, or --teacher_max_steps N."
        )


# what a finished or interrupted run leaves in its output folder (folders end with "/")
RUN_MARKERS = (
    "results.json", "report.png", "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
    "pytorch_model.bin", "distillation_config.json", "teacher/", "student/", "student_no_kd/", "checkpoint-*/",
)  # fmt: skip
# what --overwrite_output_dir removes besides the markers: the rest of a saved model (config, sharded weights,
# adapter, tokenizer) and the evaluation and LoRA side folders
_RUN_LEFTOVERS = (
    "model-*.safetensors", "config.json", "generation_config.json", "adapter_config.json", "training_args.bin",
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "chat_template.jinja", "eval/", "lora_adapter/",
)  # fmt: skip


def previous_run(output_dir: str) -> list[str]:
    """The :data:`RUN_MARKERS` found in ``output_dir`` (``[]`` when it holds no run or does not exist)."""
    found = []
    for pattern in RUN_MARKERS:
        is_dir = pattern.endswith("/")
        for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), pattern.rstrip("/")))):
            if os.path.isdir(path) == is_dir:
                found.append(os.path.basename(path) + ("/" if is_dir else ""))
    return found


def check_output_dir(output_dir: str, overwrite: bool, resume, resumable: bool = True) -> None:
    """Refuse an ``output_dir`` that already holds a run, unless ``overwrite`` (the caller then runs
    :func:`clear_previous_run`) or ``resume`` (``--resume_from_checkpoint``) says what to do with it. ``resumable``:
    whether the command has ``--resume_from_checkpoint`` at all (the message offers it)."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"--output_dir {output_dir} is a file; pass a folder (it is created if missing).")
    if overwrite and resume:
        raise ValueError(
            "--overwrite_output_dir and --resume_from_checkpoint are both set; pass one: overwriting deletes the "
            "checkpoints a resume needs."
        )
    found = previous_run(output_dir)
    if found and not overwrite and not resume:
        shown = ", ".join(found[:4]) + (", ..." if len(found) > 4 else "")
        resuming = " --resume_from_checkpoint to continue it," if resumable else ""
        raise ValueError(
            f"--output_dir {output_dir} already holds a run ({shown}); pass --overwrite_output_dir true to replace "
            f"it,{resuming} or another --output_dir."
        )


def check_overwrite_keeps_inputs(output_dir: str, overwrite: bool, inputs) -> None:
    """With ``overwrite`` (``--overwrite_output_dir``), refuse an ``output_dir`` that is, or holds, one of the job's
    ``inputs`` (``(flag, path)`` pairs: model folders, data, caches), which clearing the earlier run there would
    delete. Hub names, unset flags and paths that do not exist are skipped."""
    if not overwrite:
        return
    out = os.path.realpath(output_dir)
    for flag, path in inputs:
        if not isinstance(path, str) or not path or not os.path.exists(path):
            continue
        real = os.path.realpath(path)
        if real == out:
            raise ValueError(
                f"--output_dir {output_dir} is also {flag} {path}, which --overwrite_output_dir would delete; write to "
                "another --output_dir."
            )
        if real.startswith(out.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"--output_dir {output_dir} holds {flag} {path}, which --overwrite_output_dir could delete; write to "
                "another --output_dir, or move the input out of it."
            )


def clear_previous_run(output_dir: str) -> list[str]:
    """Delete what an earlier run left in ``output_dir`` (:data:`RUN_MARKERS` and the rest of a saved model: teacher/,
    student_no_kd/, checkpoints, weights, results.json, report.png...); other files stay. Returns the names removed."""
    removed = []
    for pattern in RUN_MARKERS + _RUN_LEFTOVERS:
        for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), pattern.rstrip("/")))):
            if pattern.endswith("/") and os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif not pattern.endswith("/") and os.path.isfile(path):
                try:
                    os.remove(path)
                except FileNotFoundError:  # another process of the same job removed it first
                    continue
            else:
                continue
            removed.append(os.path.basename(path))
    return removed


def resolve_resume(resume, output_dir: str):
    """``--resume_from_checkpoint`` for ``Trainer.train``: ``None``; ``True`` for ``true``/``last`` (the newest
    ``checkpoint-*`` of ``output_dir``, which must exist); or a checkpoint folder, which must exist."""
    if resume is None or resume is False or resume == "":
        return None
    if resume is True or str(resume).lower() in ("true", "last", "yes", "1"):
        if not glob.glob(os.path.join(glob.escape(output_dir), "checkpoint-*")):
            raise ValueError(
                f"--resume_from_checkpoint {resume}: {output_dir} holds no checkpoint-N folder; drop the flag to "
                "start afresh, or pass a checkpoint folder."
            )
        return True
    if not os.path.isdir(str(resume)):
        raise ValueError(
            f"--resume_from_checkpoint {resume} does not exist; pass a checkpoint-N folder, or true for the newest "
            "one in --output_dir."
        )
    return str(resume)


def output_notice(output_dir: str) -> str:
    """Where a job writes, for its first line; the Trainer's default ``trainer_output`` is pointed out."""
    where = os.path.abspath(output_dir)
    if os.path.normpath(output_dir) == "trainer_output":
        return f"no --output_dir given: writing to {where} (the Trainer's default; choose with --output_dir)"
    return f"writing to {where}"


def prepare_output_dir(args, tag: str) -> None:
    """Say where the job writes, create the folder (one line if it cannot be: a read-only place...) and, with
    ``--overwrite_output_dir``, delete the earlier run there (main process)."""
    print(f"[{tag}] {output_notice(args.output_dir)}")
    try:
        os.makedirs(args.output_dir, exist_ok=True)
    except OSError as err:
        raise ValueError(
            f"--output_dir {args.output_dir} cannot be created ({err.strerror or err}); pass a folder you can write to."
        ) from err
    if args.overwrite_output_dir and args.should_save:
        removed = clear_previous_run(args.output_dir)
        if removed:
            print(f"[{tag}] --overwrite_output_dir: deleted the earlier run's {', '.join(removed)}")


def check_no_column_maps(args, job: str) -> None:
    """The jobs build their own data, whose columns a user's map cannot name: ``--teacher_columns`` /
    ``--student_columns`` are for the Python API (the GLUE noisy student sets its own)."""
    for name in ("teacher_columns", "student_columns"):
        if getattr(args, name):
            raise ValueError(
                f"--{name} {getattr(args, name)}: hf-distill {job} tokenizes its own data, whose columns a map cannot "
                f"name; column maps are for the Python API (DistillationConfig({name}=...)): drop --{name}."
            )


def check_output_and_resume(args) -> None:
    """``args.output_dir`` (refused when it holds an earlier run, unless overwritten or resumed) and
    ``args.resume_from_checkpoint`` (a checkpoint that exists)."""
    check_output_dir(args.output_dir, args.overwrite_output_dir, args.resume_from_checkpoint)
    resolve_resume(args.resume_from_checkpoint, args.output_dir)
