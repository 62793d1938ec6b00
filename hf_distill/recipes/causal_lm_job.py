"""The ``hf-distill causal-lm`` job (:func:`run`; its arguments and parts are in :mod:`.causal_lm`), and its runs in
the modes where the teacher is not one fixed model (see ``docs/modes.md``): the student's moving average (``ema``),
peers trained with it (``mutual``) and generations of it (``born_again``, ``noisy_student``). The co-trained teacher
(``cotrain``) is the job's own run with a :class:`~hf_distill.teachers.TrainedTeacher`.

Each is the same :class:`~hf_distill.DistillationTrainer` with another ``Teacher`` kind, and writes the job's
``results.json`` (perplexities of every model it trains) with the mode's own entries.
"""

from __future__ import annotations

import copy
import dataclasses
import os

import torch
from transformers import AutoModelForCausalLM

from ..data import DistillationDataCollator
from ..distillation_config import DistillationConfig
from ..generation import sample_sequences
from ..generations import GENERATION_DIR, train_born_again, train_noisy_student
from ..models import resolve_dtype, resolve_model_path
from ..report import count_parameters
from ..teachers import CrossTokenizerCacheTeacher, CrossTokenizerTeacher, TrainedTeacher
from ..validation import prepare_output_dir, resolve_resume
from .causal_lm import (
    CausalLMArguments,
    add_text_prompts,
    cached_train_set,
    check_eval_caps,
    finish,
    load_text_data,
    loss_summary,
    make_student,
    make_trainer,
    save_merged,
    score,
    show_bars,
)
from .causal_lm_checks import teacher_weight_uses, validate_causal_lm_job


def run_ema(lm, args, train, texts, tokenizer) -> dict:
    """``--distill_mode ema``: ``--student_model_name_or_path`` (cut to ``--student_layers``) learns from its own
    moving average (an :class:`~hf_distill.teachers.EMATeacher`, built by the trainer).

    ``results.json``'s ``teacher`` is the average and its ``student`` the model saved in ``output_dir``: the raw
    student, or with ``--save_ema`` the average itself, whose raw student is then ``student_before_ema``."""
    student = make_student(lm, args, None, tokenizer)
    # the job scores the raw student before it takes the average's weights (save_ema), so the trainer does not
    trainer = make_trainer(student, None, dataclasses.replace(args, save_ema=False), train, tokenizer)
    ema = trainer.teachers[0]
    results = _start(lm, args, student, texts, tokenizer, train, f"its moving average (decay {args.ema_decay:g})")
    trainer.train(resume_from_checkpoint=resolve_resume(args.resume_from_checkpoint, args.output_dir))
    trainer.save_model(args.output_dir)
    results["teacher"] = score(ema.model, texts, tokenizer, lm, label="moving average", progress=show_bars(args))
    results.update(
        ema_decay=args.ema_decay, ema_warmup_steps=args.ema_warmup_steps, saved="ema" if args.save_ema else "student"
    )
    if args.save_ema:
        raw = score(trainer.model, texts, tokenizer, lm, label="raw student", progress=show_bars(args))
        results["student_before_ema"] = raw
        ema.copy_to(student)
        ema.publish = True  # so distillation_config.json says these weights are the average
        trainer.save_model(args.output_dir)
    return finish(lm, args, trainer, results, train, texts, tokenizer)


def run_mutual(lm, args, train, texts, tokenizer) -> dict:
    """``--distill_mode mutual``: ``--num_peers`` copies of ``--student_model_name_or_path`` (cut to
    ``--student_layers``) trained together, each on the next-token loss and on the others' current predictions (deep
    mutual learning; dropout, ``--student_dropout``, makes them differ).

    The student (peer 0) is saved in ``output_dir``, peer ``i`` in ``output_dir/peer_<i>``. ``results.json``'s
    ``student`` is peer 0 and its ``teacher`` peer 1; ``peers`` lists every peer's folder and perplexities, and
    ``best_peer`` names the one with the lowest perplexity on the first validation text."""
    student = make_student(lm, args, None, tokenizer)
    peers = [
        TrainedTeacher(copy.deepcopy(student), save_dir=f"peer_{i}", name=f"peer {i}") for i in range(1, lm.num_peers)
    ]
    trainer = make_trainer(student, peers, args, train, tokenizer)
    results = _start(lm, args, student, texts, tokenizer, train, f"{lm.num_peers - 1} peer(s) trained with it")
    trainer.train(resume_from_checkpoint=resolve_resume(args.resume_from_checkpoint, args.output_dir))
    trainer.save_model(args.output_dir)
    bars = show_bars(args)
    scored = [score(p.inner, texts, tokenizer, lm, label=f"peer {i}", progress=bars) for i, p in enumerate(peers, 1)]
    results["teacher"] = scored[0]

    def name_best(results: dict) -> None:
        table = [results["student"], *scored]
        first = next(iter(texts), None)
        best = min(range(len(table)), key=lambda i: table[i]["perplexity"][first]) if first else None
        for i, row in enumerate(table if first else []):
            print(
                f"[causal-lm] peer {i}: perplexity {row['perplexity'][first]:.2f} on {first}{' (best)' * (i == best)}"
            )
        results["peers"] = [{"peer": i, "folder": "." if i == 0 else f"peer_{i}", **r} for i, r in enumerate(table)]
        results["best_peer"] = best

    return finish(lm, args, trainer, results, train, texts, tokenizer, complete=name_best)


def run_generations(lm, args, teacher, student, train, texts, tokenizer) -> dict:
    """``--distill_mode born_again`` or ``noisy_student``: ``--generations`` students from ``student``'s initial
    weights, each taught by the one before (the first by ``teacher``; with ``--ensemble_generations`` the last by all
    of them). A noisy student trains with its dropout on (``--student_dropout``); its text is unlabelled already
    (every token learns the teacher's soft targets), and it gets no input noise.

    Generation ``g`` is saved in ``output_dir/generation_<g>`` and scored; the last one is also saved in
    ``output_dir`` and is ``results.json``'s ``student``; ``generations`` lists every generation's perplexities."""
    initial, bars, generations = copy.deepcopy(student), show_bars(args), []
    results = {
        "task": "causal_lm",
        "distill_mode": args.distill_mode,
        "teacher_model": args.teacher_model_name_or_path,
    }
    if lm.eval_teacher:
        results["teacher"] = score(teacher, texts, tokenizer, lm, label="teacher", progress=bars)
    results["student_before_training"] = score(student, texts, tokenizer, lm, label="student", progress=bars)

    def on_generation(generation: int, trainer) -> None:
        names = [t.name for t in trainer.teachers]
        scored = score(trainer.model, texts, tokenizer, lm, label=f"generation {generation}", progress=bars)
        folder = GENERATION_DIR.format(generation)
        if lm.use_peft and lm.merge_lora and args.should_save:  # the adapter alone may name the teacher as its base
            save_merged(copy.deepcopy(trainer.model).merge_and_unload(), os.path.join(args.output_dir, folder))
        generations.append({"generation": generation, "folder": folder, "teachers": names, **scored})

    print(
        f"[causal-lm] {args.distill_mode}: {args.generations} generation(s) on {len(train)} examples of up to {lm.block_size} "
        f"tokens: {loss_summary(args)}"
    )
    noisy = args.distill_mode == "noisy_student"
    trainers = (train_noisy_student if noisy else train_born_again)(
        lambda: copy.deepcopy(initial),
        teacher,
        args,
        *([lambda generation: train] if noisy else []),
        on_generation=on_generation,
        train_dataset=train,
        data_collator=DistillationDataCollator(pad_token_id=tokenizer.pad_token_id),
        processing_class=tokenizer,
        teacher_processing_class=tokenizer,
    )
    last = trainers[-1]
    last.save_model(args.output_dir)
    results.update(ensemble_generations=args.ensemble_generations, generations=generations)
    return finish(lm, args, last, results, train, texts, tokenizer)


def _start(lm, args, student, texts, tokenizer, train, teacher: str) -> dict:
    """The results of an own-student run before training: the student's perplexities (there is no teacher to load)."""
    print(f"[causal-lm] scoring the student before training on {list(texts)}")
    results = {"task": "causal_lm", "distill_mode": args.distill_mode, "teacher_model": None}
    results["student_before_training"] = score(
        student, texts, tokenizer, lm, label="student", progress=show_bars(args)
    )
    print(
        f"[causal-lm] training the student on {len(train)} examples of up to {lm.block_size} tokens with {teacher} as "
        f"teacher: {loss_summary(args)}"
    )
    return results


# the runs without a teacher model, by --distill_mode
OWN_STUDENT_RUNS = {"ema": run_ema, "mutual": run_mutual}


def run(lm: CausalLMArguments, args: DistillationConfig) -> dict:
    """Run the whole job and return the ``results.json`` object (``--distill_mode`` ema, mutual, born_again and
    noisy_student: the runs above)."""
    # every input checked before the teacher is loaded; teacher_tokenizer: a student with another tokenizer
    tokenizer, teacher_tokenizer = validate_causal_lm_job(lm, args)
    if lm.use_peft and not lm.merge_lora and not lm.student_model_name_or_path:
        raise ValueError(
            "--use_peft on a student built from teacher layers must be saved merged (--merge_lora true): the adapter "
            "alone would name the teacher, which has more layers, as its base model. To keep an adapter, give a "
            "base model with --student_model_name_or_path."
        )
    check_eval_caps(lm)
    prepare_output_dir(args, "causal-lm")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    train, texts = load_text_data(lm, tokenizer)  # a dataset that cannot be loaded: before the teacher is
    if args.distill_mode in OWN_STUDENT_RUNS:
        return OWN_STUDENT_RUNS[args.distill_mode](lm, args, add_text_prompts(train, lm, args), texts, tokenizer)
    teacher_path = resolve_model_path(args.teacher_model_name_or_path)
    dtype = resolve_dtype(args.teacher_dtype, torch.float32)
    uses = teacher_weight_uses(lm, args)
    teacher = None  # not loaded when a finished top-k cache is all the job needs of it
    if uses:
        if lm.teacher_cache_dir is not None:
            print(f"[causal-lm] loading the teacher's weights to {'; to '.join(uses)}")
        teacher = AutoModelForCausalLM.from_pretrained(teacher_path, dtype=dtype).eval()
    if train is None:
        if lm.data_free_samples < 1:
            raise ValueError("No training data: set --train_file or --dataset_name, or --data_free_samples N.")
        print(f"[causal-lm] no data given: sampling {lm.data_free_samples} sequences from the teacher")
        train = sample_sequences(
            teacher, tokenizer, num_samples=lm.data_free_samples, max_length=lm.block_size, seed=args.seed
        )
    train = add_text_prompts(train, lm, args)
    use_cache = lm.teacher_cache_dir is not None
    if use_cache:
        source = teacher if teacher is not None else teacher_path
        train, cache_meta = cached_train_set(lm, args, source, train, tokenizer, teacher_tokenizer)

    student = make_student(lm, args, teacher, tokenizer)
    if args.distill_mode in ("born_again", "noisy_student"):
        return run_generations(lm, args, teacher, student, train, texts, tokenizer)
    # before the trainer places it (a ZeRO-3 engine holds shards)
    teacher_size = count_parameters(teacher) if teacher is not None else None
    live_teacher = bool(args.live_teacher_needs(cached=use_cache)) or args.distill_mode == "cotrain"
    kd_teacher = teacher if live_teacher else None
    if use_cache and teacher_tokenizer is not None:  # the cache's targets across tokenizers, the model for the rest
        kd_teacher = CrossTokenizerCacheTeacher(
            teacher_tokenizer, tokenizer, meta=cache_meta, model=kd_teacher, name=args.teacher_model_name_or_path
        )
    if args.distill_mode == "cotrain":  # trained on the next-token loss in the same loop, at its own learning rate
        print(f"[causal-lm] co-training the teacher (learning rate {lm.teacher_learning_rate or args.learning_rate})")
        kd_teacher = TrainedTeacher(
            teacher, learns_from_peers=False, learning_rate=lm.teacher_learning_rate, save_dir="teacher",
            name=args.teacher_model_name_or_path,
        )  # fmt: skip
    # the trainer first: what it refuses (layer maps, head counts, vocabularies) is refused before minutes of scoring
    trainer = make_trainer(student, kd_teacher, args, train, tokenizer, teacher_tokenizer)
    if isinstance(next(iter(trainer.teachers), None), (CrossTokenizerTeacher, CrossTokenizerCacheTeacher)):
        print(f"[causal-lm] {trainer.teachers[0].describe()}")  # not wrapped without a logit term (alpha_logits 0)
    print(f"[causal-lm] scoring teacher and student before training on {list(texts)}")
    results = {
        "task": "causal_lm",
        "distill_mode": args.distill_mode,
        "teacher_model": args.teacher_model_name_or_path,
    }
    bars = show_bars(args)
    if lm.eval_teacher:
        # the teacher as the trainer placed it (device, dtype, shards): the one the student learns from
        placed = trainer.teachers[0].model if live_teacher else teacher
        key = "teacher_before_training" if args.distill_mode == "cotrain" else "teacher"
        own = teacher_tokenizer or tokenizer  # a teacher with another tokenizer is scored on its own tokens
        results[key] = score(placed, texts, own, lm, label="teacher", progress=bars)
        results[key]["num_parameters"] = teacher_size
        if teacher_tokenizer is not None:
            results[key]["tokenizer"] = "the teacher's own (perplexities per teacher token, not comparable)"
    results["student_before_training"] = score(student, texts, tokenizer, lm, label="student", progress=bars)

    print(
        f"[causal-lm] distilling on {len(train)} examples of up to {lm.block_size} tokens: {loss_summary(args, teacher_tokenizer is not None)}"
    )
    trainer.train(resume_from_checkpoint=resolve_resume(args.resume_from_checkpoint, args.output_dir))
    trainer.save_model(args.output_dir)
    if args.distill_mode == "cotrain" and lm.eval_teacher:
        results["teacher"] = score(teacher, texts, tokenizer, lm, label="co-trained teacher", progress=bars)
        results["teacher"]["num_parameters"] = teacher_size
    return finish(lm, args, trainer, results, train, texts, tokenizer)
