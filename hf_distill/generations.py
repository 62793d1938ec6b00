"""Born-again distillation (Furlanello et al., 2018): generations of the same student, each taught by the one before.

Generation 1's student learns from the given teacher; generation ``g``'s student, which starts again from the same
initial weights, learns from generation ``g - 1``'s trained student, a frozen :class:`~hf_distill.teachers.ModelTeacher`
like any other. With ``ensemble_generations`` the last generation learns from all earlier ones at once: the given
teacher and every earlier student, their soft targets averaged with equal weights (several teachers, see
``docs/concepts.md``). No teacher kind is new here: a generation's teacher is a frozen model.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from torch import nn

from .distillation_config import DistillationConfig
from .distillation_trainer import DistillationTrainer
from .models import infer_task
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
        trainer = DistillationTrainer(model=student, teacher_model=teachers, args=gen_args, **trainer_kwargs)
        trainer.train()
        trainer.save_model(gen_args.output_dir)
        students.append(trainer.student)
        trainers.append(trainer)
        if on_generation is not None:
            on_generation(generation, trainer)
    return trainers
