"""Publishing from the trainer: ``push_to_hub`` and the pushes at each save (``push_to_hub=True``) upload the student
alone, through :func:`hf_distill.publish.push_student`, with the hf_distill model card; checkpoints only when asked for."""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import Future

from huggingface_hub import HfApi, get_token
from transformers.trainer_utils import HubStrategy, SaveStrategy
from transformers.utils import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_SAFE_WEIGHTS_NAME,
    ADAPTER_WEIGHTS_NAME,
    CONFIG_NAME,
    GENERATION_CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    SAFE_WEIGHTS_NAME,
    WEIGHTS_INDEX_NAME,
    WEIGHTS_NAME,
    PushInProgress,
    hf_api,
)

from ..distillation_config import DISTILLATION_CONFIG_FILE
from ..file_checks import index_shards
from .hub import push_student, refuse_token

logger = logging.getLogger(__name__)


def copy_student_files(checkpoint: str, folder: str) -> list[str]:
    """Copy the student's files from a training ``checkpoint`` into ``folder`` (the run's output_dir); returns them.

    These are the files ``Trainer._push_from_checkpoint`` copies (config, generation config, weights or shards and
    their index, PEFT adapter files) plus ``distillation_config.json``; projection adapters and optimizer state stay
    in the checkpoint.
    """
    names = [CONFIG_NAME, GENERATION_CONFIG_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_NAME, DISTILLATION_CONFIG_FILE]
    names += [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, ADAPTER_SAFE_WEIGHTS_NAME]
    for index_name in (WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_INDEX_NAME):  # a damaged index is copied: the push names it
        names += [index_name, *(index_shards(checkpoint, index_name) or ())]
    copied = [n for n in names if os.path.isfile(os.path.join(checkpoint, n))]
    for name in copied:  # replaced whole: a push still reading the last save (hub_always_push) never sees half a file
        target = os.path.join(folder, name)
        shutil.copy(os.path.join(checkpoint, name), target + ".part")
        os.replace(target + ".part", target)
    return copied


def _upload_checkpoint(checkpoint: str, repo_id: str, path_in_repo: str, token: str | None, **kwargs):
    """Upload a whole checkpoint folder (asked for with hub_strategy), unless a file in it holds the token."""
    names = [n for n in os.listdir(checkpoint) if os.path.isfile(os.path.join(checkpoint, n))]
    try:
        refuse_token(token or get_token(), checkpoint, names, "")
    except ValueError as err:  # training_args.bin pickles the arguments, hub_token included
        raise ValueError(
            f"{err} The checkpoint was not uploaded: give the token through HF_TOKEN or `hf auth login` instead "
            "of hub_token."
        ) from None
    return hf_api().upload_folder(
        repo_id=repo_id, folder_path=checkpoint, path_in_repo=path_in_repo, token=token, **kwargs
    )


def _log_failure(job: Future) -> None:
    """Background pushes fail silently otherwise: ``PushInProgress`` waits on them but never reads their result."""
    if not job.cancelled() and job.exception() is not None:
        logger.error("A push to the Hub during training failed: %s", job.exception())


def push_from_checkpoint(
    checkpoint: str,
    folder: str,
    repo_id: str,
    *,
    commit_message: str,
    checkpoint_in_repo: str | None = None,
    token: str | None = None,
    revision: str | None = None,
    private: bool | None = None,
) -> list[Future]:
    """The mid-training push of ``DistillationTrainer``: the student alone, and the checkpoint when asked for.

    The student's files are copied from ``checkpoint`` into ``folder`` (:func:`copy_student_files`), which is then
    pushed with :func:`push_student` and a fresh card; with ``checkpoint_in_repo`` (``hub_strategy`` "checkpoint"
    or "all_checkpoints") the whole checkpoint follows, under that path. Returns the ``Future`` of each upload:
    they are queued on transformers' shared ``HfApi``, so they run one after the other like the Trainer's own.
    """
    copy_student_files(checkpoint, folder)
    kwargs = {"token": token, "revision": revision}
    jobs = [
        hf_api().run_as_future(
            push_student,
            folder,
            repo_id,
            commit_message=commit_message,
            private=private,
            regenerate_card=True,
            **kwargs,
        )
    ]
    if checkpoint_in_repo is not None:
        message = f"{commit_message}, checkpoint"
        jobs.append(
            hf_api().run_as_future(
                _upload_checkpoint, checkpoint, repo_id, checkpoint_in_repo, commit_message=message, **kwargs
            )
        )
    for job in jobs:
        job.add_done_callback(_log_failure)
    return jobs


class HubPushMixin:
    """``push_to_hub`` and ``_push_from_checkpoint`` of :class:`~hf_distill.DistillationTrainer` (a ``Trainer``)."""

    def push_to_hub(
        self,
        commit_message: str | None = "End of training",
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        private: bool | None = None,
        **card,
    ):
        """Save the student and push it with the hf_distill model card through [`hf_distill.hub.push_student`].

        Unlike ``Trainer.push_to_hub`` (which uploads all of ``output_dir`` with a Trainer card), only the student goes
        up: weights, config, tokenizer, distillation_config.json, results.json, report.png and a freshly rendered
        README.md; adapters and training_args.bin stay local. ``card`` takes ``license``, ``tags``, ``datasets``,
        ``language`` and ``base_model``. Returns the ``CommitInfo`` (a ``Future`` of it when ``blocking=False``).
        """
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        self._finish_current_push()
        output_dir = self.args.output_dir
        kwargs = {
            "private": private if private is not None else self.args.hub_private_repo,
            "revision": revision or self.args.hub_revision,
            "commit_message": commit_message,
            "token": token or self.args.hub_token,
            "regenerate_card": True,
            **card,
        }
        repo_id = self.args.hub_model_id or os.path.basename(os.path.abspath(output_dir))
        if blocking:
            return push_student(output_dir, repo_id, **kwargs)
        return HfApi().run_as_future(push_student, output_dir, repo_id, **kwargs)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """The pushes at each save when ``push_to_hub=True``: the student alone (as :meth:`push_to_hub`), and the
        checkpoint folder too when ``hub_strategy`` asks for it ("checkpoint": as last-checkpoint/)."""
        args = self.args
        # first: only process zero has `push_in_progress` (Trainer.init_hf_repo sets it there alone)
        if not self.is_world_process_zero() or args.hub_strategy == HubStrategy.END:
            return
        pushing = self.push_in_progress is not None and not self.push_in_progress.is_done()
        if pushing and not args.hub_always_push:  # the Trainer skips a save while the last one is still uploading
            return
        self.callback_handler.on_push_begin(args, self.state, self.control)
        if self.processing_class is not None:  # resaved, as the Trainer does: the tokenizer is part of the student
            self.processing_class.save_pretrained(args.output_dir)
        checkpoint_in_repo = {
            HubStrategy.CHECKPOINT: "last-checkpoint",
            HubStrategy.ALL_CHECKPOINTS: os.path.basename(os.path.normpath(checkpoint_folder)),
        }.get(args.hub_strategy)
        when = (
            f"step {self.state.global_step}"
            if args.save_strategy == SaveStrategy.STEPS
            else f"epoch {int(self.state.epoch)}"
        )
        jobs = push_from_checkpoint(
            checkpoint_folder,
            args.output_dir,
            self.hub_model_id,
            commit_message=f"Training in progress, {when}",
            checkpoint_in_repo=checkpoint_in_repo,
            token=args.hub_token,
            revision=args.hub_revision,
            private=args.hub_private_repo,
        )
        if pushing:
            self.push_in_progress.jobs.extend(jobs)
        else:
            self.push_in_progress = PushInProgress(jobs)
