"""Render a distilled student's model card (README.md): YAML metadata for the Hub and a body on how it was distilled.

Typical use before a push, to review or edit the card (``hf-distill push out/sst2 --dry_run`` prints it)::

    write_model_card("out/sst2", "my-org/minilm-l3-sst2")

Everything comes from the student's folder: ``distillation_config.json``, ``results.json`` when present (the GLUE
job's scores, size and speed, or the causal-LM job's perplexities) and ``config.json``; nothing is fetched from the
network. The body is rendered from ``templates/model_card.md`` (package data, read through ``importlib.resources``)
by ``huggingface_hub.ModelCard.from_template``. Pushing the card with the student is :mod:`hf_distill.publish.hub`'s job.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Optional

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..constants import RESULTS_FILE
from ..distillation_config import DISTILLATION_CONFIG_FILE
from ..tasks.glue import GLUE_TASKS
from ..version import __version__
from .files import ADAPTER_CONFIG, CARD_FILE, TOKENIZER_FILES, is_repo_id, local_license, read_json

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
_SIZE_KEYS = ("num_parameters", "size_mb", "latency_ms", "latency_ms_iqr", "latency_spread", "throughput")
_PERPLEXITY_ROLES = (  # causal-LM results.json key -> row of the card's table
    ("teacher", "teacher"),
    ("student_before_training", "student before training"),
    ("student", "student (distilled)"),
)


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


_ROLES = (("teacher", "teacher"), ("student", "student (distilled)"), ("student_no_kd", "student, no KD"))
# distill_mode ema: the "teacher" is the student's own moving average; with save_ema the saved "student" is that
# average, and the raw student (student_before_ema, scores only) is the model it is compared with
_EMA_ROLES = {
    "student": (("student", "this model (the student)"), ("teacher", "its moving average (the teacher)")),
    "ema": (("student", "this model (the moving average)"), ("student_before_ema", "the raw student")),
}


def _peer_roles(results: dict) -> tuple[tuple[str, str], ...]:
    """distill_mode mutual: peer 0 is the student and peer 1 results.json's "teacher" (both measured); further peers
    are scored only, under ``peers``."""
    best = results.get("best_peer")
    names = [
        ("this model (peer 0)" if i == 0 else f"peer {i} (`{peer['folder']}`)") + (", the best" if i == best else "")
        for i, peer in enumerate(results["peers"])
    ]
    return tuple(
        ("student" if i == 0 else "teacher" if i == 1 else f"peers.{i}", name) for i, name in enumerate(names)
    )


def _result_rows(results: dict, metrics: list[str]) -> list[dict]:
    roles = _ROLES
    if results.get("distill_mode") == "ema":
        roles = (*_EMA_ROLES[results.get("saved", "student")], _ROLES[2])
    elif results.get("distill_mode") == "mutual" and results.get("peers"):
        roles = (*_peer_roles(results), _ROLES[2])
    rows = []
    for role, label in roles:
        entry = results["peers"][int(role[6:])] if role.startswith("peers.") else results.get(role)
        if entry is None:
            continue
        cells = ["-" if entry.get(m) is None else f"{entry[m]:.4f}" for m in metrics]
        if "num_parameters" in entry:
            cells += [
                _parameters(entry["num_parameters"]),
                f"{entry['size_mb']:.2f}",
                f"{entry['latency_ms']:.2f}",
                f"{entry['throughput']:.1f}",
            ]
        else:  # scored, not measured (the raw student of an ema run: the same size and speed as this model)
            cells += ["-"] * 4
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
    schedule = dist.get("intermediate_schedule", "constant")
    if schedule != "constant" and (dist.get("alpha_hidden") or dist.get("alpha_attention")):
        terms.append(f"the hidden-state and attention weights decay ({schedule}) from these values to 0 over training")
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
        "rounds": results.get("timing_rounds"),
        # an ema or mutual run has no other model to keep a share of or to outrun: the card compares the rows' scores
        "own": results.get("distill_mode") in ("ema", "mutual"),
        "generations": _generation_rows(results),
    }
    if scores["own"]:
        scores["retention"] = None
    return _ResultsSection(
        context={"results": scores},
        datasets=[dataset["id"]] if dataset["id"] else None,
        tags=[*(["glue"] if task in GLUE_TASKS else []), *([task] if task else [])],
        eval_results=_eval_results(results, dataset, task_type),
    )


def _generation_rows(results: dict) -> list[dict]:
    """distill_mode born_again: each generation's teachers and score on the task's metric, from results.json."""
    metric = results.get("metric")
    return [
        {
            "generation": g["generation"],
            "teachers": ", ".join(f"`{t}`" for t in g.get("teachers", [])),
            "score": "-" if g.get(metric) is None else f"{g[metric]:.4f}",
        }
        for g in results.get("generations") or []
    ]


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


_RUN_MEMBER = re.compile(r"teacher|peer_(\d+)")  # the folders a GLUE run saves beside its student


def teacher_of(folder: str) -> dict | None:
    """What makes ``folder`` a model of a run other than its student: ``<output_dir>/teacher/`` (the GLUE job's
    fine-tuned or co-trained teacher) or ``<output_dir>/peer_<i>/`` (a mutual-learning peer) beside the run's
    ``distillation_config.json``. Returns the run's record (``distillation_config.json``, ``results.json`` as
    ``"results"`` when present, and ``"peer"``: ``i`` for a peer, else None), or None for any other folder."""
    folder = os.path.abspath(folder)
    member = _RUN_MEMBER.fullmatch(os.path.basename(folder))
    if os.path.isfile(os.path.join(folder, DISTILLATION_CONFIG_FILE)) or member is None:
        return None
    run = read_json(os.path.dirname(folder), DISTILLATION_CONFIG_FILE)
    if run is None:
        return None
    peer = None if member.group(1) is None else int(member.group(1))
    return {**run, "results": read_json(os.path.dirname(folder), RESULTS_FILE), "peer": peer}


def _member_scores(run: dict) -> dict | None:
    """This model's entry of the run's ``results.json``: the teacher's, or a peer's from ``peers``."""
    results = run.get("results") or {}
    if run.get("peer") is None:
        return results.get("teacher")
    return next((p for p in results.get("peers") or [] if p.get("peer") == run["peer"]), None)


def _teacher_section(run: dict, task_type: str) -> tuple[dict, _ResultsSection]:
    """The card of a run's teacher or peer: the model it was fine-tuned from, the task, how the run trained it
    (co-trained teacher, mutual-learning peer) and its scores from the run's ``results.json`` (the GLUE job scores
    the teacher, or every peer, beside the student)."""
    peer = run.get("peer")
    base = None if peer is not None else next(iter(run.get("teachers") or []), None)
    results = run.get("results") or {}
    mode = run.get("distill_mode")
    peers = results.get("peers") or []
    context = {
        "base": base,
        "base_is_hub": is_repo_id(base),
        "base_name": os.path.basename(os.path.normpath(base)) if base else None,
        "task": None,
        "scores": None,
        # co-trained (cotrain): fine-tuned in the same loop as the student, at this learning rate (None: the run's)
        "cotrain": {"learning_rate": run.get("teacher_learning_rate")} if mode == "cotrain" and peer is None else None,
        "peer": None
        if peer is None
        else {
            "index": peer,
            "num_peers": len(peers) or len(run.get("teachers") or []) + 1,
            "best": results.get("best_peer") == peer if "best_peer" in results else False,
        },
    }
    own = _member_scores(run)
    if not own or results.get("task") == "causal_lm" or "metric" not in results:
        return context, _ResultsSection()
    dataset = _dataset(results)
    metrics = [m for m in _metric_names(results) if own.get(m) is not None]
    as_student = {**results, "student": {m: own[m] for m in metrics}}  # the model-index entries of this model
    context["task"] = dataset["name"]
    context["scores"] = {
        "dataset": dataset,
        "metrics": metrics,
        "cells": [f"{own[m]:.4f}" for m in metrics],
    }
    section = _ResultsSection(
        datasets=[dataset["id"]] if dataset["id"] else None,
        tags=[
            *(["glue"] if results.get("task") in GLUE_TASKS else []),
            *([results["task"]] if results.get("task") else []),
        ],
        eval_results=_eval_results(as_student, dataset, task_type),
    )
    return context, section


_KNOWN_MODES = ("frozen", "ema", "born_again", "noisy_student", "mutual", "cotrain")
_GENERATION = re.compile(r"generation_(\d+)")  # a born-again generation's folder, under the run's output_dir


def _mode_context(folder: str, dist: dict, results: dict | None) -> dict | None:
    """How a student of ``distill_mode`` other than frozen and ema was trained, for the card's first sentence: the
    born-again generations, the mutual-learning peers, the co-trained teacher, or only the mode's name (a mode this
    card does not know). None for frozen and ema (ema has its own context)."""
    results = results or {}
    name = dist.get("distill_mode") or results.get("distill_mode") or "frozen"
    if name in ("frozen", "ema"):
        return None
    mode = {"name": name, "known": name in _KNOWN_MODES}
    if name in ("born_again", "noisy_student"):
        generation = _GENERATION.fullmatch(os.path.basename(os.path.abspath(folder)))
        mode.update(
            generations=dist.get("generations") or len(results.get("generations") or []) or 1,
            generation=int(generation.group(1)) if generation else None,  # None: the run's last, in output_dir
            ensemble=bool(dist.get("ensemble_generations")),
            first_teacher=results.get("teacher_model"),
            noise=results.get("noise"),  # noisy_student: {"augment_prob", "dropout"} (the GLUE job)
        )
    elif name == "mutual":
        peers = results.get("peers") or []
        others = [p["folder"] for p in peers[1:]] or [f"peer_{i}" for i in range(1, len(dist.get("teachers", [])) + 1)]
        best = results.get("best_peer")
        mode.update(
            num_peers=len(others) + 1,
            folders=", ".join(f"`{f}`" for f in others),
            best=None if best is None else ("this model" if best == 0 else f"peer {best} (`{peers[best]['folder']}`)"),
        )
    elif name == "cotrain":
        mode.update(learning_rate=dist.get("teacher_learning_rate"))
    return mode


def _card_context(folder: str, repo_id: str | None, teacher: str | None, dist: dict, results: dict | None) -> dict:
    """Everything the template shows but the results, as plain strings and lists."""
    config = read_json(folder, "config.json") or {}
    adapter = read_json(folder, ADAPTER_CONFIG)
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
        "teacher_is_hub": is_repo_id(teacher),
        "teacher_name": os.path.basename(os.path.normpath(teacher)) if teacher else None,
        # the GLUE job's teacher/: fine-tuned first (--finetune_teacher), or in the same loop (distill_mode cotrain)
        "teacher_finetuned": os.path.isfile(os.path.join(folder, "teacher", "config.json")),
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
        "tokenizer_from": (repo_id or folder) if has_tokenizer else (teacher if is_repo_id(teacher) else None),
        "has_report": "report.png" in names,
        "adapter_base": adapter.get("base_model_name_or_path") if adapter else None,
        "results": None,  # scores, size and speed (GLUE job), see _score_section
        "perplexity": None,  # perplexities per evaluation text (causal-LM job), see _perplexity_section
        # a student: distillation_config.json, or a job's results.json with a student's scores; else a plain card
        "distilled": bool(dist) or bool((results or {}).get("student")),
        "teacher_of": None,  # set for a run's teacher/ folder, see _teacher_section
        # distill_mode ema: the teacher was the student's own moving average (the GLUE job records what it saved)
        "ema": {
            "decay": dist.get("ema_decay"),
            "published": bool(dist.get("save_ema")) or (results or {}).get("saved") == "ema",
        }
        if dist.get("distill_mode") == "ema"
        else None,
        # born_again, mutual, cotrain or a mode this card does not know: see _mode_context
        "mode": _mode_context(folder, dist, results),
        # ema and mutual start from a model of their own (cut to some of its layers), not from the teacher's layers
        "own_start": dist.get("distill_mode") in ("ema", "mutual"),
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

    A run's ``teacher/`` folder (the GLUE job's fine-tuned or co-trained teacher) gets a teacher's card, with the
    run's base model and the teacher's scores from the run's ``results.json``, and a ``peer_<i>/`` folder (a
    mutual-learning peer) a peer's card with its scores; any other folder with neither
    ``distillation_config.json`` nor a job's ``results.json`` a plain card that calls it no student.

    Read from the folder: ``distillation_config.json`` (the teacher is ``teachers[0]``, which becomes ``base_model``
    when it is a Hub id; losses, weights, temperature, layer matches, and how ``distill_mode`` trained it: generations,
    peers, a co-trained or moving-average teacher), ``results.json`` when present (scores, size, speed, each
    generation's or peer's scores, and the ``model-index``) and ``config.json``. ``license`` defaults to the one in
    a local teacher's card.
    ``repo_id`` is used in the loading snippet (default: the folder). Nothing is fetched from the network.
    """
    dist = read_json(folder, DISTILLATION_CONFIG_FILE) or {}
    results = read_json(folder, RESULTS_FILE)
    run = None if dist else teacher_of(folder)
    if run is not None:  # a run's teacher or peer: a plain card, with the model it was fine-tuned from as its base
        dist = {"task": run.get("task"), "hf_distill_version": run.get("hf_distill_version", __version__)}
        teacher = base_model or (None if run["peer"] is not None else next(iter(run.get("teachers") or []), None))
    elif dist.get("distill_mode") in ("born_again", "noisy_student") and (results or {}).get("teacher_model"):
        teacher = base_model or results["teacher_model"]  # generation 1's teacher, not the generation before
    else:
        teacher = base_model or next(iter(dist.get("teachers") or []), None)
    context = _card_context(folder, repo_id, teacher, dist, results)
    context["distilled"] = run is None and context["distilled"]
    if run is not None:
        context["teacher_of"], section = _teacher_section(run, context["pipeline_tag"])
    elif context["distilled"]:
        section = _results_section(results, context["pipeline_tag"])
    else:
        section = _ResultsSection()
    context.update(section.context)
    card_data = ModelCardData(
        base_model=teacher if is_repo_id(teacher) else None,
        datasets=datasets or section.datasets,
        language=language,
        library_name="peft" if context["adapter_base"] else "transformers",
        license=license or local_license(teacher),
        model_name=context["title"] if results or section.eval_results else None,
        pipeline_tag=context["pipeline_tag"],
        tags=[*(["distillation"] if context["distilled"] else []), "hf-distill", *section.tags, *(tags or [])],
        eval_results=section.eval_results,
    )
    template = resources.files("hf_distill.publish").joinpath("templates/model_card.md").read_text(encoding="utf-8")
    return str(ModelCard.from_template(card_data, template_str=template, **context))


def write_model_card(folder: str, repo_id: str | None = None, **card) -> str:
    """Render the card (:func:`render_model_card`) into ``folder/README.md``, which you may edit; returns its path."""
    path = os.path.join(folder, CARD_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_model_card(folder, repo_id, **card))
    return path
