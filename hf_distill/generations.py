"""Generations of the same student, each taught by the one before: born-again distillation (Furlanello et al.,
2018) and noisy-student self-training (Xie et al., 2020).

Generation 1's student learns from the given teacher; generation ``g``'s student, which starts again from the same
initial weights, learns from generation ``g - 1``'s trained student, a frozen :class:`~hf_distill.teachers.ModelTeacher`
like any other. With ``ensemble_generations`` the last generation learns from all earlier ones at once: the given
teacher and every earlier student, their soft targets averaged with equal weights (several teachers, see
``docs/concepts.md``). No teacher kind is new here: a generation's teacher is a frozen model.

A noisy student is the same loop with noise on the student: its training set, labelled examples and unlabelled
text that the teacher labels with its soft targets, is noised afresh for each generation (e.g. word replacement), and
the student trains with its dropout on. The teacher, frozen and in evaluation mode, runs without dropout; it reads the
same (noised) inputs as the student, there being one ``input_ids`` column, and labels each rewritten example as such.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from torch import nn
from torch.utils.data import Dataset

from .distillation_config import DistillationConfig
from .distillation_trainer import DistillationTrainer
from .models import config_dropout, infer_task
from .teachers import ModelTeacher, Teacher, as_teacher

GENERATION_DIR = "generation_{}"  # each generation's student, under the run's output_dir


def generation_teachers(teacher: Teacher, students: list[nn.Module], ensemble: bool) -> list[Teacher]:
    """The teachers of the next generation, given the trained ``students`` of the generations before it: the last
    of them (the given ``teacher`` when there is none yet), or with ``ensemble`` the teacher and all of them."""
    earlier = [ModelTeacher(s, name=f"generation {i} student") for i, s in enumerate(students, start=1)]
    if ensemble:
        return [teacher, *earlier]
    return [earlier[-1]] if earlier else [teacher]


def train_born_again(
    make_student: Callable[[], nn.Module],
    teacher,
    args: DistillationConfig,
    *,
    on_generation: Callable[[int, DistillationTrainer], None] | None = None,
    train_dataset_for: Callable[[int], Dataset] | None = None,
    **trainer_kwargs,
) -> list[DistillationTrainer]:
    """Train ``args.generations`` generations; returns their trainers (each ``trainer.model`` a trained student).

    Args:
        make_student: a fresh student with the initial weights, called once per generation (e.g.
            ``lambda: copy.deepcopy(initial)``): each generation restarts from there.
        teacher: generation 1's teacher (a model, a name, or a :class:`~hf_distill.teachers.Teacher`).
        args: the run's config; generation ``g`` trains and saves in ``args.output_dir/generation_<g>``. The last
            generation learns from the ensemble of all earlier ones when ``args.ensemble_generations``.
        on_generation: called with ``(g, trainer)`` after generation ``g`` is trained and saved (e.g. to score it).
        train_dataset_for: generation ``g``'s training set, ``train_dataset_for(g)`` (e.g. noised afresh); default:
            ``trainer_kwargs["train_dataset"]`` for every generation.
        trainer_kwargs: the :class:`DistillationTrainer`'s other arguments (datasets, collator, metrics...).
    """
    first = make_student()
    teacher = as_teacher(teacher, task=infer_task(first), length_groups=args.teacher_length_groups)
    students, trainers = [], []
    for generation in range(1, args.generations + 1):
        ensemble = args.ensemble_generations and generation == args.generations and generation > 1
        teachers = generation_teachers(teacher, students, ensemble)
        gen_args = dataclasses.replace(
            args,
            output_dir=os.path.join(args.output_dir, GENERATION_DIR.format(generation)),
            # generation 1 is taught by the named teacher; later ones by students, named in their own record
            teacher_model_name_or_path=args.teacher_model_name_or_path if generation == 1 else None,
            teacher_weights=None if len(teachers) > 1 else args.teacher_weights,
        )
        student = first if generation == 1 else make_student()
        if train_dataset_for is not None:
            trainer_kwargs["train_dataset"] = train_dataset_for(generation)
        trainer = DistillationTrainer(model=student, teacher_model=teachers, args=gen_args, **trainer_kwargs)
        trainer.train()
        trainer.save_model(gen_args.output_dir)
        students.append(trainer.student)
        trainers.append(trainer)
        if on_generation is not None:
            on_generation(generation, trainer)
    return trainers


def dropout_rate(model: nn.Module) -> float:
    """The largest dropout probability of ``model`` in training: over its ``nn.Dropout`` modules (every kind) and its
    config's dropout rates (:func:`~hf_distill.models.config_dropout`). 0: none."""
    rates = [m.p for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    config = getattr(model, "config", None)
    return max([*rates, config_dropout(config) if config is not None else 0.0])


def train_noisy_student(
    make_student: Callable[[], nn.Module],
    teacher,
    args: DistillationConfig,
    noised_dataset: Callable[[int], Dataset],
    **kwargs,
) -> list[DistillationTrainer]:
    """Noisy-student self-training: :func:`train_born_again` with generation ``g`` trained on ``noised_dataset(g)``.

    ``noised_dataset(g)`` is generation ``g``'s training set, its input noise drawn afresh: labelled examples and
    unlabelled text (label ``-100``), which learns from the teacher's soft targets alone (so ``args.alpha_logits``
    must be > 0). The student's dropout is the model noise: ``make_student()`` must return a model with dropout
    (e.g. the GLUE job's ``--student_dropout 0.1``). ``kwargs`` are :func:`train_born_again`'s.
    """
    if args.distill_mode != "noisy_student":
        raise ValueError(f"train_noisy_student needs distill_mode noisy_student, got {args.distill_mode!r}.")
    if args.alpha_logits <= 0:
        raise ValueError(
            f"alpha_logits {args.alpha_logits}: a noisy student learns the teacher's soft targets on unlabelled text; "
            "set alpha_logits > 0."
        )

    def noisy_student() -> nn.Module:
        student = make_student()
        if dropout_rate(student) == 0:
            raise ValueError(
                f"The {type(student).__name__} student has no dropout, the noisy student's model noise: build it "
                "with dropout > 0 (hf-distill glue: --student_dropout 0.1)."
            )
        return student

    return train_born_again(noisy_student, teacher, args, train_dataset_for=noised_dataset, **kwargs)
