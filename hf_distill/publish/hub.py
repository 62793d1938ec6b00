"""Publish a distilled student on the Hugging Face Hub: which files make a student, the folder and token checks, and
the push.

Typical use after a run (``hf-distill push out/sst2 --repo_id my-org/minilm-l3-sst2`` does the same)::

    push_student("out/sst2", "my-org/minilm-l3-sst2")

Everything goes through ``huggingface_hub.HfApi``, so the endpoint and the token come from ``HF_ENDPOINT``,
``HF_TOKEN`` or ``hf auth login`` as usual. The card is rendered by :mod:`hf_distill.publish.model_card`.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from dataclasses import dataclass, field
from typing import Optional

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard, get_token
from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

from ..constants import RESULTS_FILE
from ..distillation_config import DISTILLATION_CONFIG_FILE
from ..file_checks import first_problem, index_shards, loadable_weights
from ..mapping import ADAPTERS_FILE
from ..version import __version__
from .files import (
    ADAPTER_CONFIG,
    CARD_FILE,
    TOKENIZER_FILES,
    is_repo_id,
    local_license,
    read_json,
)
from .model_card import render_model_card, teacher_of

logger = logging.getLogger(__name__)

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
# files only a training checkpoint has (Trainer._save_checkpoint); a folder holding one is not a finished student
CHECKPOINT_MARKERS = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state*.pth")


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
    adapter = read_json(folder, ADAPTER_CONFIG)
    if adapter is not None:
        base = adapter.get("base_model_name_or_path")
        if not is_repo_id(base):
            raise ValueError(
                f"{folder} holds a LoRA adapter whose base model is {base!r}, not a Hub repository, so nobody could "
                "load it from the Hub: merge the adapter (hf-distill causal-lm --merge_lora true) and push the "
                "merged student, or set base_model_name_or_path in adapter_config.json to the base's Hub id."
            )
    elif "config.json" not in names:
        missing.append("config.json (the model config)")
    if not loadable_weights(names, safetensors_only=True):
        others = loadable_weights(names)
        hint = f" (only {others[0]}: re-save with save_pretrained)" if others else ""
        missing.append(f"weights (*.safetensors, written by trainer.save_model() or save_pretrained){hint}")
    shards = index_shards(folder, "model.safetensors.index.json") or ()  # a damaged index: check_files names it
    missing += [f"weight shard {s}" for s in shards if s not in names]
    if missing:
        raise ValueError(f"{folder} is not a finished student: it has no {'; no '.join(missing)}.")
    if DISTILLATION_CONFIG_FILE not in names:
        if teacher_of(folder) is not None:
            logger.info("%s is the teacher of the run in its parent folder: its card describes a teacher.", folder)
        else:
            logger.warning(
                "%s has no %s: the model card cannot state how it was distilled (nor call it a student, unless a "
                "job's results.json is there).",
                folder,
                DISTILLATION_CONFIG_FILE,
            )


def check_files(folder: str, files: list[str]) -> None:
    """Raise ``ValueError`` naming the first of ``files`` (relative to ``folder``) that is damaged: every safetensors
    file is opened (header, sizes, tensors) and every JSON file parsed, so that a truncated or empty file is never
    published as a repository that does not load."""
    problem = first_problem(folder, files)
    if problem:
        raise ValueError(
            f"{problem}: write the folder again (trainer.save_model() or save_pretrained) and push again; nothing "
            "was uploaded."
        )


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
    if not is_repo_id(teacher):
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
        dist = read_json(folder, DISTILLATION_CONFIG_FILE) or {}
        teacher = card.get("base_model") or next(iter(dist.get("teachers") or []), None)
        card["license"] = local_license(teacher) or _hub_license(api, teacher)
    return render_model_card(folder, repo_id, **card)


def refuse_token(token: str | None, folder: str, files: list[str], card: str) -> None:
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

    The folder is checked first (a checkpoint, a folder without weights or with a damaged file is refused, see
    :func:`check_files`), then the token (``whoami``), all before anything is uploaded. The repository is created if missing (``private`` applies then) and
    ``revision``, a branch, is created from main if missing. Only :func:`student_files` go up, plus README.md: the
    folder's own if it has one (unless ``regenerate_card``), else a card rendered in memory (``card``: ``license``,
    ``tags``, ``datasets``, ``language``, ``base_model``; see :func:`render_model_card`). The local folder is
    never written. One commit means the repository never holds half a student: if the connection drops, a
    ``RuntimeError`` says so and running the same push again completes it (unchanged files are skipped).
    """
    check_student_folder(folder)
    files = student_files(folder, include_teacher)
    check_files(folder, files)
    api = HfApi(token=token)
    user = _check_token(api)
    if "/" not in repo_id:
        repo_id = f"{user['name']}/{repo_id}"
    readme = _card_for_push(api, folder, files, repo_id, regenerate_card, card)
    refuse_token(token or get_token(), folder, files, readme)
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
