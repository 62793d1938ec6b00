"""Publish a distilled student on the Hugging Face Hub: which files make a student, its model card, the push.

Typical use after a run (``hf-distill push out/sst2 --repo_id my-org/minilm-l3-sst2`` does the same)::

    push_student("out/sst2", "my-org/minilm-l3-sst2")

Everything goes through ``huggingface_hub.HfApi``, so the endpoint and the token come from ``HF_ENDPOINT``,
``HF_TOKEN`` or ``hf auth login`` as usual. The card is rendered from ``templates/model_card.md``.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from . import __version__
from .distillation_config import DISTILLATION_CONFIG_FILE
from .mapping import ADAPTERS_FILE
from .tasks.glue import GLUE_TASKS

logger = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
CARD_FILE = "README.md"
ADAPTER_CONFIG = "adapter_config.json"  # a peft (LoRA) student saved as an adapter: no config.json of its own
# what a student is made of, besides its *.safetensors weights (top level of the folder only)
STUDENT_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    ADAPTER_CONFIG,
    DISTILLATION_CONFIG_FILE,
    RESULTS_FILE,
    "report.png",
    CARD_FILE,
)
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
# files only a training checkpoint has (Trainer._save_checkpoint); a folder holding one is not a finished student
CHECKPOINT_MARKERS = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state*.pth")

_TASKS = {  # distillation_config.json "task" -> (pipeline tag, Auto class)
    "sequence_classification": ("text-classification", "AutoModelForSequenceClassification"),
    "token_classification": ("token-classification", "AutoModelForTokenClassification"),
    "causal_lm": ("text-generation", "AutoModelForCausalLM"),
}
_LOGIT_LOSSES = {
    "kl": "forward KL(teacher ‖ student) between the softened distributions",
    "reverse_kl": "reverse KL(student ‖ teacher) between the softened distributions",
    "jsd": "generalised Jensen-Shannon divergence (β = {jsd_beta}) between the softened distributions",
    "mse": "mean squared error between the logits",
}
_ATTENTION_LOSSES = {
    "kl": "KL divergence between attention maps",
    "mse": "mean squared error between attention maps",
    "relation": "MiniLM v2 self-relations (scaled dot products of queries, keys and values)",
}
_HIDDEN_LOSSES = {"mse": "mean squared error", "cosine": "cosine distance"}
_SIZE_KEYS = ("num_parameters", "size_mb", "latency_ms", "throughput")
_PERPLEXITY_ROLES = (  # causal-LM results.json key -> row of the card's table
    ("teacher", "teacher"),
    ("student_before_training", "student before training"),
    ("student", "student (distilled)"),
)


@dataclass
class PushArguments:
    """What ``hf-distill push`` uploads where (the token comes from HF_TOKEN or ``hf auth login``, never a flag)."""

    folder: Optional[str] = field(
        default=None,
        metadata={"help": "The student's folder (output_dir of a run); may also be given as the first argument."},
    )
    repo_id: Optional[str] = field(
        default=None,
        metadata={"help": "Hub repository, e.g. my-org/minilm-l3-sst2 (a bare name goes under your user)."},
    )
    private: bool = field(default=False, metadata={"help": "Create the repository private (no effect if it exists)."})
    revision: Optional[str] = field(
        default=None, metadata={"help": "Branch to push to, created from main if missing (default: main)."}
    )
    commit_message: Optional[str] = field(default=None, metadata={"help": "Commit message (default: a summary)."})
    include_teacher: bool = field(
        default=False,
        metadata={"help": "Also upload the teacher/ subfolder (weights, config, tokenizer) under teacher/."},
    )
    regenerate_card: bool = field(
        default=False, metadata={"help": "Render README.md afresh even when the folder already has one."}
    )
    license: Optional[str] = field(
        default=None, metadata={"help": "License for the card, e.g. apache-2.0 (default: the teacher's, when known)."}
    )
    dry_run: bool = field(
        default=False, metadata={"help": "Check the folder and print the files and the card; upload nothing."}
    )


# ---- which files make a student ----


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _is_student_file(name: str) -> bool:
    if name.endswith(".safetensors"):
        return name != ADAPTERS_FILE  # projection adapters are training state, not part of the model
    return name in STUDENT_FILES or name in TOKENIZER_FILES


def student_files(folder: str, include_teacher: bool = False) -> list[str]:
    """The files of ``folder`` (paths relative to it) that make the student and its card; nothing else is uploaded.

    Only the top level counts: ``teacher/``, ``student_no_kd/`` and ``checkpoint-*/`` stay local, as do
    ``training_args.bin`` and ``distillation_adapters.safetensors``. ``include_teacher`` adds ``teacher/``'s own
    weights, config and tokenizer.
    """
    names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)) and _is_student_file(n))
    if include_teacher:
        teacher = os.path.join(folder, "teacher")
        if not os.path.isdir(teacher):
            raise ValueError(f"include_teacher=True but {folder} has no teacher/ subfolder.")
        names += [
            f"teacher/{n}"
            for n in sorted(os.listdir(teacher))
            if os.path.isfile(os.path.join(teacher, n)) and _is_student_file(n) and n != CARD_FILE
        ]
    return names


def check_student_folder(folder: str) -> None:
    """Raise ``ValueError`` unless ``folder`` holds a finished student: weights and config, and no training state."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder} is not a folder; pass the output_dir of a distillation run.")
    names = os.listdir(folder)
    state = sorted(n for n in names if _matches(n, CHECKPOINT_MARKERS))
    if state or re.fullmatch(r"checkpoint-\d+", os.path.basename(os.path.normpath(folder))):
        raise ValueError(
            f"{folder} is a training checkpoint (it holds {', '.join(state) or 'a checkpoint-N name'}), not a "
            "finished student: push the folder trainer.save_model() wrote (the run's output_dir)."
        )
    missing = []
    adapter = _read_json(folder, ADAPTER_CONFIG)
    if adapter is not None:
        base = adapter.get("base_model_name_or_path")
        if not _is_repo_id(base):
            raise ValueError(
                f"{folder} holds a LoRA adapter whose base model is {base!r}, not a Hub repository, so nobody could "
                "load it from the Hub: merge the adapter (hf-distill causal-lm --merge_lora true) and push the "
                "merged student, or set base_model_name_or_path in adapter_config.json to the base's Hub id."
            )
    elif "config.json" not in names:
        missing.append("config.json (the model config)")
    weights = [n for n in names if n.endswith(".safetensors") and n != ADAPTERS_FILE]
    if not weights:
        hint = " (only pytorch_model.bin: re-save with save_pretrained)" if "pytorch_model.bin" in names else ""
        missing.append(f"weights (*.safetensors, written by trainer.save_model() or save_pretrained){hint}")
    index = _read_json(folder, "model.safetensors.index.json")
    if index:
        missing += sorted({f"weight shard {s}" for s in index.get("weight_map", {}).values() if s not in names})
    if missing:
        raise ValueError(f"{folder} is not a finished student: it has no {'; no '.join(missing)}.")
    if DISTILLATION_CONFIG_FILE not in names:
        logger.warning(
            "%s has no %s: the model card cannot state how it was distilled.", folder, DISTILLATION_CONFIG_FILE
        )


# ---- the model card ----


def _read_json(folder: str, name: str) -> dict | None:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _is_repo_id(name: str | None) -> bool:
    """A Hub id such as ``bert-base-uncased`` or ``org/model`` (not a local folder or a description)."""
    pattern = r"[\w-]+(\.[\w-]+)*(/[\w-]+(\.[\w-]+)*)?"
    return bool(name) and not os.path.exists(name) and re.fullmatch(pattern, name) is not None


def _local_license(teacher: str | None) -> str | None:
    """The license in a local teacher folder's README.md metadata, if any."""
    readme = os.path.join(teacher or "", CARD_FILE)
    if not teacher or not os.path.isfile(readme):
        return None
    try:
        return ModelCard.load(readme, ignore_metadata_errors=True).data.license
    except Exception:  # an unreadable card only costs the license line
        return None


def _human(n: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.1f}{suffix}"
    return str(int(n))


def _parameters(n: int) -> str:
    return f"{_human(n)} ({n:,})"


def _dataset(results: dict | None) -> dict:
    """Where the scores were measured: GLUE tasks map to nyu-mll/glue with their config and splits."""
    task = (results or {}).get("task")
    glue = GLUE_TASKS.get(task) if task else None
    if glue is not None:
        splits = glue.eval_splits
        return {"id": "nyu-mll/glue", "name": f"GLUE {glue.dir_name}", "config": glue.name, "splits": splits}
    name = (results or {}).get("dataset") or task
    return {"id": name, "name": name, "config": None, "splits": ("validation",)}


def _metric_names(results: dict) -> list[str]:
    names = [results["metric"]]
    for role in ("teacher", "student", "student_no_kd"):
        names += [k for k in results.get(role, {}) if k not in _SIZE_KEYS and k not in names]
    return names


def _eval_results(results: dict, dataset: dict, task_type: str) -> list[EvalResult]:
    """The student's scores as model-index entries (``_mm`` metrics are MNLI's mismatched split)."""
    entries = []
    for name in _metric_names(results):
        value = results["student"].get(name)
        if value is None:
            continue
        mismatched = name.endswith("_mm") and len(dataset["splits"]) > 1
        entries.append(
            EvalResult(
                task_type=task_type,
                dataset_type=dataset["id"],
                dataset_name=dataset["name"],
                dataset_config=dataset["config"],
                dataset_split=dataset["splits"][1 if mismatched else 0],
                metric_type=name.removesuffix("_mm") if mismatched else name,
                metric_value=round(float(value), 4),
            )
        )
    return entries


def _result_rows(results: dict, metrics: list[str]) -> list[dict]:
    rows = []
    for role, label in (
        ("teacher", "teacher"),
        ("student", "student (distilled)"),
        ("student_no_kd", "student, no KD"),
    ):
        entry = results.get(role)
        if entry is None:
            continue
        cells = ["-" if entry.get(m) is None else f"{entry[m]:.4f}" for m in metrics]
        cells += [
            _parameters(entry["num_parameters"]),
            f"{entry['size_mb']:.2f}",
            f"{entry['latency_ms']:.2f}",
            f"{entry['throughput']:.1f}",
        ]
        rows.append({"name": label, "cells": cells})
    return rows


def _loss_terms(dist: dict) -> list[str]:
    """One line per active loss term, weight first."""
    terms = []
    if dist.get("alpha_task"):
        terms.append(f"{dist['alpha_task']:g} × the student's own loss on the labels")
    if dist.get("alpha_logits"):
        what = _LOGIT_LOSSES.get(dist.get("logit_loss"), dist.get("logit_loss")).format(jsd_beta=dist.get("jsd_beta"))
        soft = (
            "" if dist.get("logit_loss") == "mse" else f", at temperature T = {dist['temperature']:g} (scaled by T²)"
        )
        terms.append(f"{dist['alpha_logits']:g} × logit KD: {what}{soft}")
    if dist.get("alpha_hidden"):
        projected = any(m.get("projection") for m in dist.get("layer_matches", []))
        via = ", through a trained linear projection to the teacher's width" if projected else ""
        what = _HIDDEN_LOSSES.get(dist.get("hidden_loss"), dist.get("hidden_loss"))
        terms.append(f"{dist['alpha_hidden']:g} × hidden-state KD: {what} between matched hidden states{via}")
    if dist.get("alpha_attention"):
        what = _ATTENTION_LOSSES.get(dist.get("attention_loss"), dist.get("attention_loss"))
        terms.append(f"{dist['alpha_attention']:g} × attention KD: {what}")
    return terms


@dataclass
class _ResultsSection:
    """What one kind of ``results.json`` adds to the card: template variables and metadata."""

    context: dict = field(default_factory=dict)
    datasets: Optional[list[str]] = None
    tags: list[str] = field(default_factory=list)
    eval_results: Optional[list[EvalResult]] = None


def _score_section(results: dict, task_type: str) -> _ResultsSection:
    """The GLUE job's results (report.build_results): a score per metric, size and CPU speed per model."""
    dataset, task = _dataset(results), results.get("task")
    metrics, speed = _metric_names(results), results.get("speed", {})
    teacher_scores, student_scores = results["teacher"], results["student"]
    scores = {
        "metric": results["metric"],
        "metrics": metrics,
        "rows": _result_rows(results, metrics),
        "dataset": dataset,
        "retention": None if results.get("retention") is None else f"{results['retention'] * 100:.1f} %",
        "speedup": f"{results['speedup']:.2f}×",
        "param_share": f"{student_scores['num_parameters'] / teacher_scores['num_parameters'] * 100:.0f} %",
        "kd_gain": None if results.get("kd_gain") is None else f"{results['kd_gain']:+.4f}",
        "batch": f"{speed.get('batch_size', '?')} × {speed.get('seq_len', '?')} tokens",
        "train_examples": results.get("train_examples"),
        "max_steps": results.get("max_steps"),
    }
    return _ResultsSection(
        context={"results": scores},
        datasets=[dataset["id"]] if dataset["id"] else None,
        tags=[*(["glue"] if task in GLUE_TASKS else []), *([task] if task else [])],
        eval_results=_eval_results(results, dataset, task_type),
    )


def _perplexity_rows(results: dict, texts: list[str]) -> list[dict]:
    rows = []
    for role, label in _PERPLEXITY_ROLES:
        entry = results.get(role)
        if entry is None:
            continue
        cells = ["-" if entry["perplexity"].get(t) is None else f"{entry['perplexity'][t]:.2f}" for t in texts]
        rows.append({"role": role, "name": label, "cells": [*cells, _parameters(entry["num_parameters"])]})
    return rows


def _perplexity_eval_results(results: dict, task_type: str) -> list[EvalResult]:
    """The student's perplexities as model-index entries, one per evaluation text (lower is better)."""
    return [
        EvalResult(
            task_type=task_type,
            dataset_type=text,  # a local file or a split name: results.json records no Hub dataset id
            dataset_name=text,
            metric_type="perplexity",
            metric_name="perplexity (lower is better)",  # model-index has no field for the direction
            metric_value=round(float(value), 4),
        )
        for text, value in results["student"]["perplexity"].items()
    ]


def _perplexity_section(results: dict, task_type: str) -> _ResultsSection:
    """The causal-LM job's results (recipes/causal_lm.py): perplexity per evaluation text and parameters per model;
    ``teacher`` is absent when the job ran with ``--eval_teacher false``."""
    texts = list(results["student"]["perplexity"])
    rows = _perplexity_rows(results, texts)
    first = {row["role"]: row["cells"][0] for row in rows} if texts else {}  # the headline's text, as in the table
    teacher, student = results.get("teacher"), results["student"]
    perplexity = {
        "texts": texts,
        "rows": rows,
        "first_text": texts[0] if texts else None,
        "student": first.get("student"),
        "teacher": first.get("teacher"),
        "before": first.get("student_before_training"),
        "param_share": f"{student['num_parameters'] / teacher['num_parameters'] * 100:.0f} %" if teacher else None,
        "train_examples": results.get("train_examples"),
        "max_steps": results.get("max_steps"),
    }
    return _ResultsSection(
        context={"perplexity": perplexity},
        tags=["text-generation"],
        eval_results=_perplexity_eval_results(results, task_type) or None,
    )


_RESULTS_SECTIONS = {"causal_lm": _perplexity_section}  # results.json "task" -> its section; GLUE tasks are scores


def _results_section(results: dict | None, task_type: str) -> _ResultsSection:
    if not results:
        return _ResultsSection()
    return _RESULTS_SECTIONS.get(results.get("task"), _score_section)(results, task_type)


def _card_context(folder: str, repo_id: str | None, teacher: str | None, dist: dict, results: dict | None) -> dict:
    """Everything the template shows but the results, as plain strings and lists."""
    config = _read_json(folder, "config.json") or {}
    adapter = _read_json(folder, ADAPTER_CONFIG)
    task = dist.get("task") or (results or {}).get("task")  # results.json says causal_lm too
    pipeline_tag, auto_class = _TASKS.get(task, ("text-classification", "AutoModel"))
    if adapter is not None:  # peft resolves the base model from adapter_config.json
        auto_class = "AutoPeft" + auto_class.removeprefix("Auto")
    names = os.listdir(folder)
    has_tokenizer = any(n in TOKENIZER_FILES for n in names)
    model_type = config.get("model_type", "transformer")
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    return {
        "title": repo_id.split("/")[-1] if repo_id else os.path.basename(os.path.abspath(folder)),
        "repo": repo_id or folder,
        "version": dist.get("hf_distill_version", __version__),
        "teacher": teacher,
        "teacher_is_hub": _is_repo_id(teacher),
        "teacher_name": os.path.basename(os.path.normpath(teacher)) if teacher else None,
        "teacher_finetuned": os.path.isfile(os.path.join(folder, "teacher", "config.json")),  # the GLUE job's
        "teachers": dist.get("teachers", []),
        "teacher_weights": dist.get("teacher_weights"),
        "student": f"{layers}-layer `{model_type}`" if layers else f"`{model_type}`",
        "hidden_size": config.get("hidden_size", config.get("n_embd")),
        "kept_layers": dist.get("student_layers_from_teacher"),
        "loss_terms": _loss_terms(dist),
        "layer_map": dist.get("layer_map"),
        "layer_matches": dist.get("layer_matches", []),
        "auto_class": auto_class,
        "pipeline_tag": pipeline_tag,
        "tokenizer_from": (repo_id or folder) if has_tokenizer else (teacher if _is_repo_id(teacher) else None),
        "has_report": "report.png" in names,
        "adapter_base": adapter.get("base_model_name_or_path") if adapter else None,
        "results": None,  # scores, size and speed (GLUE job), see _score_section
        "perplexity": None,  # perplexities per evaluation text (causal-LM job), see _perplexity_section
    }


def render_model_card(
    folder: str,
    repo_id: str | None = None,
    *,
    license: str | None = None,
    tags: list[str] | None = None,
    datasets: list[str] | None = None,
    language: str | list[str] | None = None,
    base_model: str | None = None,
) -> str:
    """The README.md of the student in ``folder``: YAML metadata (``huggingface_hub.ModelCardData``) and a body.

    Read from the folder: ``distillation_config.json`` (the teacher is ``teachers[0]``, which becomes ``base_model``
    when it is a Hub id; losses, weights, temperature, layer matches), ``results.json`` when present (scores, size,
    speed, and the ``model-index``) and ``config.json``. ``license`` defaults to the one in a local teacher's card.
    ``repo_id`` is used in the loading snippet (default: the folder). Nothing is fetched from the network.
    """
    dist = _read_json(folder, DISTILLATION_CONFIG_FILE) or {}
    results = _read_json(folder, RESULTS_FILE)
    teacher = base_model or next(iter(dist.get("teachers") or []), None)
    context = _card_context(folder, repo_id, teacher, dist, results)
    section = _results_section(results, context["pipeline_tag"])
    context.update(section.context)
    card_data = ModelCardData(
        base_model=teacher if _is_repo_id(teacher) else None,
        datasets=datasets or section.datasets,
        language=language,
        library_name="peft" if context["adapter_base"] else "transformers",
        license=license or _local_license(teacher),
        model_name=context["title"] if results else None,
        pipeline_tag=context["pipeline_tag"],
        tags=["distillation", "hf-distill", *section.tags, *(tags or [])],
        eval_results=section.eval_results,
    )
    template = resources.files("hf_distill").joinpath("templates/model_card.md").read_text(encoding="utf-8")
    return str(ModelCard.from_template(card_data, template_str=template, **context))


def write_model_card(folder: str, repo_id: str | None = None, **card) -> str:
    """Render the card (:func:`render_model_card`) into ``folder/README.md``, which you may edit; returns its path."""
    path = os.path.join(folder, CARD_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_model_card(folder, repo_id, **card))
    return path


# ---- the push ----


def _check_token(api: HfApi) -> dict:
    """``whoami`` for the token in use, before anything is uploaded; errors say how to fix the token."""
    fix = (
        f"create a token with write access at {api.endpoint}/settings/tokens, then run `hf auth login` "
        "(formerly `huggingface-cli login`) or set HF_TOKEN"
    )
    try:
        user = api.whoami()
    except LocalTokenNotFoundError:
        raise ValueError(f"No Hugging Face token found: {fix}.") from None
    except HfHubHTTPError as err:
        if err.response is not None and err.response.status_code == 401:
            raise ValueError(f"The Hub at {api.endpoint} rejected the token (401 Unauthorized): {fix}.") from err
        raise RuntimeError(f"Could not check the token with {api.endpoint}: {err}") from err
    except Exception as err:  # connection refused, offline mode...: still nothing uploaded
        raise RuntimeError(f"Could not reach the Hub at {api.endpoint} (is HF_ENDPOINT right?): {err}") from err
    role = (user.get("auth", {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise ValueError(f"The token of {user.get('name')} is read-only and cannot push: {fix}.")
    return user


def _hub_license(api: HfApi, teacher: str | None) -> str | None:
    """The teacher's license from its Hub card, best effort (a missing or private teacher just gives none)."""
    if not _is_repo_id(teacher):
        return None
    try:
        card_data = api.model_info(teacher).card_data
    except Exception as err:  # the license is optional; the push goes on without it
        logger.debug("No license for %s from the Hub: %s", teacher, err)
        return None
    return card_data.license if card_data is not None else None


_PLACEHOLDER = "[More Information Needed]"  # in the blank card huggingface_hub's template (and peft) write


def _card_for_push(api, folder, files, repo_id, regenerate, card) -> str:
    """The folder's own README.md if it has one (validated), else a card rendered for ``repo_id``."""
    if CARD_FILE in files and not regenerate:
        with open(os.path.join(folder, CARD_FILE), encoding="utf-8") as f:
            text = f.read()
        if _PLACEHOLDER not in text:
            ModelCard(text)  # raises ValueError on metadata that is not a mapping
            return text
        logger.info("%s is an unfilled template (peft writes one with every adapter): rendering the card.", CARD_FILE)
    if card.get("license") is None:
        dist = _read_json(folder, DISTILLATION_CONFIG_FILE) or {}
        teacher = card.get("base_model") or next(iter(dist.get("teachers") or []), None)
        card["license"] = _local_license(teacher) or _hub_license(api, teacher)
    return render_model_card(folder, repo_id, **card)


def _refuse_token(token: str | None, folder: str, files: list[str], card: str) -> None:
    """Refuse to publish a file (or a card) that contains the token."""
    if not token:
        return
    if token in card:
        raise ValueError("The model card contains your Hub token; remove it before pushing.")
    for name in files:
        path = os.path.join(folder, name)
        if name.endswith(".safetensors") or os.path.getsize(path) > 50_000_000:
            continue
        with open(path, "rb") as f:
            if token.encode() in f.read():
                raise ValueError(f"{path} contains your Hub token; remove it before pushing.")


def push_student(
    folder: str,
    repo_id: str,
    *,
    private: bool | None = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    include_teacher: bool = False,
    regenerate_card: bool = False,
    **card,
):
    """Upload the student in ``folder`` to ``repo_id`` in one commit, with its model card; returns the ``CommitInfo``.

    The folder is checked first (a checkpoint or a folder without weights is refused), then the token (``whoami``),
    all before anything is uploaded. The repository is created if missing (``private`` applies then) and
    ``revision``, a branch, is created from main if missing. Only :func:`student_files` go up, plus README.md: the
    folder's own if it has one (unless ``regenerate_card``), else a card rendered in memory (``card``: ``license``,
    ``tags``, ``datasets``, ``language``, ``base_model``; see :func:`render_model_card`). The local folder is
    never written. One commit means the repository never holds half a student: if the connection drops, a
    ``RuntimeError`` says so and running the same push again completes it (unchanged files are skipped).
    """
    check_student_folder(folder)
    files = student_files(folder, include_teacher)
    api = HfApi(token=token)
    user = _check_token(api)
    if "/" not in repo_id:
        repo_id = f"{user['name']}/{repo_id}"
    readme = _card_for_push(api, folder, files, repo_id, regenerate_card, card)
    _refuse_token(token or get_token(), folder, files, readme)
    operations = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=os.path.join(folder, n)) for n in files]
    operations = [op for op in operations if op.path_in_repo != CARD_FILE]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=readme.encode("utf-8")))
    uploaded = [op.path_in_repo for op in operations]
    left = sorted(
        n + "/" if os.path.isdir(os.path.join(folder, n)) else n for n in set(os.listdir(folder)) - set(uploaded)
    )
    logger.info(
        "Pushing %d files to %s/%s (%s): %s; left local: %s",
        len(uploaded),
        api.endpoint,
        repo_id,
        revision or "main",
        ", ".join(uploaded),
        ", ".join(left) or "nothing",
    )
    step = "creating the repository"
    try:
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision not in (None, "main"):
            step = f"creating the branch {revision}"
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        step = "uploading"
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload student distilled with hf-distill {__version__}",
            revision=revision,
        )
    except (ValueError, TypeError):
        raise
    except Exception as err:  # HTTP refusals and dropped connections alike
        raise RuntimeError(
            f"Pushing {folder} to {api.endpoint}/{repo_id} failed while {step}: {err}\nThe local folder is unchanged "
            "and the Hub got no partial commit; run the same command again to finish the push."
        ) from err
    logger.info("Pushed %s: %s", repo_id, info.commit_url)
    return info
