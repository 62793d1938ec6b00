"""Print the benchmarks' tables (markdown) from their run files in benchmarks/results/<benchmark>/*.json.

Every run of a benchmark writes its own file (``benchmarks/common.py``); this script only reads them. Each table
says which files, commits, library versions and machines its numbers come from. The README tables are pasted from
its output.

    python benchmarks/summarize.py                     # every benchmark that has run files
    python benchmarks/summarize.py demo_seeds          # one benchmark
    python benchmarks/summarize.py --files a.json b.json  # just these files (of any benchmarks)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
NAN = float("nan")


def load(paths) -> list[dict]:
    """The run records in ``paths``, each with its file name as ``path`` (a file that is no run record: ValueError).

    An empty file is skipped: ``common.new_path`` claims a run's file empty, and the run fills it when it is done."""
    records = []
    for path in map(Path, paths):
        text = path.read_text()
        if not text:
            print(f"summarize: skipping {path}: empty (its run has not finished)", file=sys.stderr)
            continue
        record = json.loads(text)
        if not isinstance(record, dict) or "benchmark" not in record or "results" not in record:
            raise ValueError(f"{path} is not a benchmark run file (no 'benchmark' and 'results'): remove it.")
        records.append({**record, "path": path.name})
    return sorted(records, key=lambda r: (r["created"], r["path"]))


def run_files(results_dir: Path, benchmark: str) -> list[Path]:
    return sorted((Path(results_dir) / benchmark).glob("*.json"))


# ---- provenance ----


def _short(commit: dict | None) -> str:
    """The commit's short hash, ``+dirty`` when tracked files differed from it."""
    if not commit or not commit.get("sha"):
        return "unknown"
    return commit["sha"][:7] + ("+dirty" if commit.get("dirty") else "")


def _machine(m: dict | None) -> str:
    """CPU, cores, threads and GPU, as far as recorded."""
    m = m or {}
    parts = [m.get("cpu") or "CPU not recorded"]
    parts += [f"{k} {m[k]}" for k in ("cores", "threads") if m.get(k)]
    if "gpu" in m:
        parts.append(m["gpu"] or "no GPU")
    return ", ".join(parts)


def _versions(v: dict | None) -> str:
    known = {k: x for k, x in (v or {}).items() if x is not None}
    return ", ".join(f"{k} {x}" for k, x in known.items()) or "library versions not recorded"


def provenance(records: list[dict]) -> str:
    """One line: the files, their commits, library versions and machines (each distinct value once)."""

    def distinct(f: Callable) -> str:
        return "; ".join(dict.fromkeys(f(r) for r in records))

    converted = [r["path"] for r in records if r.get("converted_from")]
    unknown = sum(1 for r in records if (r.get("commit") or {}).get("dirty") is None)
    line = (
        f"_{len(records)} run file(s): {', '.join(r['path'] for r in records)}. Commit {distinct(lambda r: _short(r['commit']))}; "
        f"{distinct(lambda r: _versions(r['versions']))}; machine: {distinct(lambda r: _machine(r['machine']))}."
    )
    if unknown:
        line += f" Whether the tree had uncommitted changes: not recorded for {unknown}."
    if converted:
        line += f" {len(converted)} converted from an older results file (see its `converted_from`)."
    return line + "_"


def _threads(record: dict) -> str:
    return str((record.get("machine") or {}).get("threads") or "?")


def _table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return ["| " + " | ".join(cells) + " |" for cells in [header, align, *rows]]


def _mean(values) -> float:
    values = list(values)
    return statistics.mean(values) if values else NAN


# ---- the demo (benchmarks/demo_seeds.py) ----


def demo_seeds(records: list[dict]) -> str:
    """Per run: teacher, no-KD and KD student scores x100 on the task's metric, the gain, retention, minutes; means."""
    records = sorted(records, key=lambda r: (r["config"]["seed"], r["created"]))
    metric = records[0]["results"]["job"]["metric"]
    lines = [
        "| seed | teacher | no KD | KD | KD - no KD | retention | minutes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = []
    for record in records:
        job, minutes = record["results"]["job"], record["results"]["minutes"]
        t, s, b = (100 * job[k][metric] for k in ("teacher", "student", "student_no_kd"))
        rows.append((t, b, s, s - b, 100 * s / t, minutes))
        lines.append(
            f"| {record['config']['seed']} | {t:.2f} | {b:.2f} | {s:.2f} | {s - b:+.2f} | {100 * s / t:.1f}% | "
            f"{minutes:.1f} |"
        )
    mean = [statistics.mean(col) for col in zip(*rows)]
    lines.append(
        f"| mean | {mean[0]:.2f} | {mean[1]:.2f} | {mean[2]:.2f} | **{mean[3]:+.2f}** | {mean[4]:.1f}% | "
        f"{mean[5]:.1f} |"
    )
    return "\n".join(lines)


# ---- GLUE quality (benchmarks/glue_quality.py) ----

DROP = "_drop"  # a variant whose student keeps the teacher's dropout (glue_quality.DROP)


def baseline(variant: str) -> str:
    """The no-KD student that ``variant`` is compared with: the same student, dropout and all."""
    return f"no_kd{DROP}" if variant.endswith(DROP) else "no_kd"


def glue_quality(records: list[dict]) -> str:
    """Per task and budget: each run's dev scores x100, then per variant the mean score, the gain over the no-KD
    student of the same dropout (same run), retention (score / the run's teacher) and step time / that student's."""
    out = []
    groups = dict.fromkeys((r["config"]["task"], r["config"]["epochs"]) for r in records)
    for task, epochs in sorted(groups, key=lambda g: (g[0], g[1])):
        runs = sorted(
            (r for r in records if (r["config"]["task"], r["config"]["epochs"]) == (task, epochs)),
            key=lambda r: (r["config"]["seed"], r["created"]),
        )
        res = [r["results"] for r in runs]
        names = list(dict.fromkeys(n for r in res for n in r["scores"] if n != "teacher"))
        examples = "/".join(dict.fromkeys(str(x["train_examples"]) for x in res))
        out.append(
            f"**{task}**, {epochs:g} epoch(s) of {examples} training examples ({res[0]['metric']} x100 on the dev "
            "set; one row per run)\n"
        )
        rows = [
            [str(r["config"]["seed"]), *(_score(x["scores"], n) for n in ["teacher", *names])]
            for r, x in zip(runs, res)
        ]
        out += _table(["seed", "teacher", *[f"`{n}`" for n in names]], rows)
        out.append("")
        rows = []
        for name in names:
            have = [x for x in res if name in x["scores"]]
            base = baseline(name)
            gain = [100 * (x["scores"][name] - x["scores"][base]) for x in have if base in x["scores"]]
            # a teacher scoring 0 (CoLA's MCC of a constant predictor) has no retention
            kept = [x["scores"][name] / x["scores"]["teacher"] if x["scores"]["teacher"] else NAN for x in have]
            steps = [x["step_ms"][name] / x["step_ms"][base] for x in have if {name, base} <= set(x["step_ms"])]
            rows.append(
                [
                    f"`{name}`",
                    ",".join(str(x["seed"]) for x in have),
                    f"{_mean(100 * x['scores'][name] for x in have):.2f}",
                    "" if name == base else f"{_mean(gain):+.2f}",
                    f"{100 * _mean(kept):.1f}%",
                    f"{_mean(steps):.2f}x" if steps else "",
                ]
            )
        header = ["variant", "seeds", "mean", "vs its no-KD student", "retention", "step / its no-KD step"]
        out += _table(header, rows, right_from=2)
        bounds = []
        for base in dict.fromkeys(map(baseline, names)):
            timed = [x for x in res if base in x["step_ms"] and x.get("teacher_forward_ms")]
            if timed:
                b = _mean((x["step_ms"][base] + x["teacher_forward_ms"]) / x["step_ms"][base] for x in timed)
                bounds.append(f"{b:.2f}x on `{base}`")
        if bounds:
            out.append(f"\nBound on a KD step (student step + a teacher forward) / student step: {', '.join(bounds)}.")
        out += ["", provenance(runs), ""]
    return "\n".join(out).rstrip()


def _score(scores: dict, name: str) -> str:
    return f"{100 * scores[name]:.2f}" if name in scores else ""


# ---- GLUE step time (benchmarks/glue_step_time.py) ----


def glue_step_time(records: list[dict]) -> str:
    """Per run: each step's median ms and its ratio to the no-KD student of its dropout, against the bound."""
    out = []
    for record in records:
        c, r = record["config"], record["results"]
        data = (
            f"random batches of {c['batch_size']} x {c['seq_len']} tokens"
            if c["data"] == "random"
            else f"SST-2 batches of {c['batch_size']} (padded to the longest, at most {c['seq_len']})"
        )
        out.append(
            f"**{data}**, {_threads(record)} thread(s), {c['rounds']} rounds on {c['device']} "
            "(medians; ratios are medians of per-round ratios)\n"
        )
        rows = []
        for name, ms in r["ms"].items():
            base = r["baseline"][name]
            ok = (
                ""
                if name == base or name.startswith("teacher")
                else ("yes" if r["ratio"][name] <= r["bound"][base] else "no")
            )
            rows.append([f"`{name}`", f"{ms:.1f}", f"{r['ratio'][name]:.2f}x", ok])
        out += _table(["step", "ms", "/ its no-KD step", "within bound"], rows)
        for base in r["bound"]:
            out.append(
                f"\nBound on `{base}`: student step + a plain teacher forward = {r['bound'][base]:.2f}x; with the "
                f"teacher's forward as the KD step runs it (length groups) = {r['strict_bound'][base]:.2f}x."
            )
        if r.get("cache"):
            k = r["cache"]
            out.append(
                f"\n`kd_cached` reads the teacher from an encoder cache (float16, no padding) of {k['examples']} "
                f"examples, {k['tokens']} tokens: {k['bytes'] / 1e6:.0f} MB ({k['bytes_per_token']:.0f} bytes a "
                f"token), built in {k['build_s']:.0f} s."
            )
        out += ["", provenance([record]), ""]
    return "\n".join(out).rstrip()


# ---- causal-LM quality (benchmarks/lm_quality.py) ----


def lm_quality(records: list[dict]) -> str:
    """Perplexities of the teacher, the untrained student and each trained run; then each run's curve, if any."""
    texts = list(dict.fromkeys(t for r in records for t in r["results"]["teacher"]))
    header = ["model", "student layers", "steps", *[f"{t} ppl" for t in texts], "step s", "commit"]
    rows, curves, teachers = [], [], []
    for record in records:
        c, r = record["config"], record["results"]
        layers, commit = _layers(c["student_layers"]), _short(record["commit"])
        if r["teacher"] not in teachers:  # one row per measurement (converted runs share one)
            teachers.append(r["teacher"])
            rows.append(["teacher", "", "", *_ppl(r["teacher"], texts), "", commit])
        if r.get("student_before_training"):
            rows.append(
                ["student before training", layers, "0", *_ppl(r["student_before_training"], texts), "", commit]
            )
        for name, run in r["runs"].items():
            rows.append(
                [f"`{name}`", layers, str(c["steps"]), *_ppl(run["perplexity"], texts), f"{run['step_s']:.2f}", commit]
            )
            for step, ppl in sorted(run["curve"].items(), key=lambda kv: int(kv[0])):
                if len(run["curve"]) > 1:
                    ratio = ", ".join(f"{ppl[t] / r['teacher'][t]:.2f}x" for t in texts)
                    tokens = int(step) * c["batch"] * c["block_size"]
                    curves.append(
                        [f"`{name}`", layers, str(step), f"{tokens / 1000:.0f}k", *_ppl(ppl, texts), ratio, commit]
                    )
    out = _table(header, rows, right_from=3)
    if curves:
        out += [
            "",
            *_table(
                ["run", "student layers", "step", "tokens seen", *[f"{t} ppl" for t in texts], "/ teacher", "commit"],
                curves,
                right_from=2,
            ),
        ]
    return "\n".join([*out, "", provenance(records)])


def _ppl(values: dict, texts: list[str]) -> list[str]:
    return [f"{values[t]:,.1f}" if t in values else "" for t in texts]


def _layers(layers: list[int]) -> str:
    """``0,2,...,28`` for an arithmetic run of more than 3 layers, else every index."""
    steps = {b - a for a, b in zip(layers, layers[1:])}
    if len(layers) > 3 and len(steps) == 1:
        return f"{layers[0]},{layers[1]},...,{layers[-1]}"
    return ",".join(map(str, layers))


# ---- causal-LM memory (benchmarks/lm_memory.py) ----


def lm_memory(records: list[dict]) -> str:
    """Per run: peak memory and time of one training step per mode; the teacher cache's size; the memory target."""
    out = []
    for record in records:
        c, r = record["config"], record["results"]
        unit, student = ("RSS" if c["device"] == "cpu" else "CUDA"), r["modes"].get("student")
        out.append(
            f"**B={c['batch']} x T={c['seq']}**, student layers {_layers(c['student_layers'])}, chunk {c['chunk_size']}, "
            f"{_threads(record)} thread(s), {c['device']}; one step = loss forward + backward, no optimizer step\n"
        )
        rows = [
            [
                f"`{mode}`",
                f"{m['peak_mb']:,.0f}",
                f"{m['peak_increase_mb']:,.0f}",
                f"{m['step_increase_mb']:,.0f}",
                f"{m['time_s']:.1f}",
                f"{m['time_s'] / student['time_s']:.2f}x" if student else "",
            ]
            for mode, m in r["modes"].items()
        ]
        out += _table(["mode", f"peak {unit} MB", "peak +MB", "step +MB", "step s", "/ student step"], rows)
        out += [""] + [f"- {line}" for line in _cache_lines(r)] + ["", provenance([record]), ""]
    return "\n".join(out).rstrip()


def _cache_lines(r: dict) -> list[str]:
    cache, meta, teacher_mb = r["cache"], r["prepare"]["cache_meta"], r["prepare"]["teacher_bytes"] / 2**20
    lines = [
        f"teacher cache (k={meta['k']}, {meta['dtype']}): {cache['topk_bytes_per_token']:.1f} bytes/token in the "
        f"top-k columns, {cache['file_bytes_per_token']:.1f} in the saved files, against "
        f"{cache['full_logits_bytes_per_token']:,} for a float32 row of logits; built in "
        f"{r['prepare']['cache_build_s']:.1f} s for this batch",
    ]
    if "speedup_per_epoch" in cache:
        lines.append(f"an epoch from the cache: {cache['speedup_per_epoch']:.2f}x faster than live chunked KD")
    for name, check in r["checks"].items():
        base = name.split("_vs_")[-1]
        lines.append(
            f"chunked KD's peak against `{base}`'s: {check['extra_mb']:+,.0f} MB, limit 1.25 x the teacher's weights "
            f"({teacher_mb:,.0f} MB) = {check['limit_mb']:,.0f} MB: {'PASS' if check['pass'] else 'FAIL'}"
        )
    return lines


# ---- chunked KD loss memory (benchmarks/chunked_kd_memory.py) ----


def chunked_kd_memory(records: list[dict]) -> str:
    """Per run: memory and time of the naive and the chunked token-level KD loss."""
    out = []
    for record in records:
        c, r = record["config"], record["results"]
        out.append(
            f"**{c['loss']} KD loss**, B={c['batch']} T={c['seq']} V={c['vocab']} D={c['dim']}, temperature {c['temperature']}, "
            f"{_threads(record)} thread(s)\n"
        )
        rows = [
            [
                v["label"],
                v["teacher"],
                f"{v['saved_mb']:.1f}",
                f"{v['peak_mb']:.0f}",
                f"{v['time_s']:.2f}",
                f"{v['loss']:.5f}",
            ]
            for v in r["variants"]
        ]
        out += _table(["loss", "teacher", "saved for backward MB", "peak RSS +MB", "fwd+bwd s", "loss"], rows, 2)
        out += ["", provenance([record]), ""]
    return "\n".join(out).rstrip()


# ---- distillation modes (benchmarks/glue_modes.py) ----


def _merge_seeds(runs: list[dict]) -> list[dict]:
    """One result per seed (and budget) of ``runs`` (sorted by seed, then time): the runs of a seed merged in the
    order they were made, a later run's scores, minutes and steps replacing an earlier one's (modes added with
    --reuse_teacher); runs of another ``train_samples`` or ``epochs`` stay apart."""
    merged: dict[int, dict] = {}
    for run in runs:
        budget = tuple(run["config"].get(k) for k in ("seed", "train_samples", "epochs"))  # one budget per row
        x = merged.setdefault(budget, {"scores": {}, "minutes": {}, "steps": {}})
        x.update({k: v for k, v in run["results"].items() if k not in x})
        for key in ("scores", "minutes", "steps"):
            x[key].update(run["results"].get(key, {}))
    return list(merged.values())


def glue_modes(records: list[dict]) -> str:
    """Per task: each seed's dev scores x100 for every mode (the runs of a seed merged), then per score its mean, gain
    over the same seed's no-KD student and the mean wall time of its training; then the two-stage pipeline's time
    against co-training's."""
    out = []
    for task in sorted({r["config"]["task"] for r in records}):
        runs = sorted(
            (r for r in records if r["config"]["task"] == task), key=lambda r: (r["config"]["seed"], r["created"])
        )
        res = _merge_seeds(runs)
        names = list(dict.fromkeys(n for x in res for n in x["scores"]))
        out.append(f"**{task}** ({res[0]['metric']} x100 on the dev set; one row per seed)\n")
        rows = [[str(x["seed"]), *(_score(x["scores"], n) for n in names)] for x in res]
        out += _table(["seed", *[f"`{n}`" for n in names]], rows)
        out.append("")
        rows = []
        for name in names:
            have = [x for x in res if name in x["scores"]]
            gain = [100 * (x["scores"][name] - x["scores"]["no_kd"]) for x in have if "no_kd" in x["scores"]]
            minutes = [x["minutes"][name] for x in have if name in x.get("minutes", {})]
            rows.append(
                [
                    f"`{name}`",
                    ",".join(str(x["seed"]) for x in have),
                    f"{_mean(100 * x['scores'][name] for x in have):.2f}",
                    "" if name in ("no_kd", "teacher") or not gain else f"{_mean(gain):+.2f}",
                    f"{_mean(minutes):.1f}" if minutes else "",
                ]
            )
        out += _table(["model", "seeds", "mean", "vs no-KD", "training minutes"], rows, right_from=2)
        for cotrain in [n for n in names if n.startswith("cotrain") and not n.endswith("_teacher")]:
            both = [x for x in res if {"teacher", "kd", cotrain} <= set(x.get("minutes", {}))]
            if both:
                two = _mean(x["minutes"]["teacher"] + x["minutes"]["kd"] for x in both)
                one = _mean(x["minutes"][cotrain] for x in both)
                gap = _mean(100 * (x["scores"][cotrain] - x["scores"]["kd"]) for x in both)
                seeds = ",".join(str(x["seed"]) for x in both)
                out.append(
                    f"\nTwo-stage pipeline (fine-tune the teacher, then `kd`; seeds {seeds}): {two:.1f} minutes; "
                    f"`{cotrain}` (both in one loop): {one:.1f} minutes; `{cotrain}` - `kd`: {gap:+.2f} points."
                )
        out += ["", provenance(runs), ""]
    return "\n".join(out).rstrip()


def xtok_lm(records: list[dict]) -> str:
    """Cross-tokenizer KD (issue 19), the rows of every run merged (a later run's row replaces an earlier one of the
    same name): each row's perplexities in the student's tokens, its ratio to CE-only and to same-tokenizer KD on
    wikitext-2, step time (and its ratio to the same-tokenizer KD step) and peak memory; then each teacher on its own
    tokens."""
    runs, teachers, steps = {}, {}, {}
    for record in sorted(records, key=lambda r: r["created"]):
        for name, run in record["results"]["runs"].items():
            runs[name], steps[name] = run, record["config"]["steps"]
        teachers.update(record["results"].get("teachers", {}))
    texts = list(dict.fromkeys(t for run in runs.values() for t in run["perplexity"]))
    ce, same = runs.get("ce"), runs.get("same_tok")
    rows = []
    for name, run in runs.items():
        ppl = run["perplexity"]
        rows.append(
            [
                f"`{name}`",
                str(steps[name]),
                *_ppl(ppl, texts),
                f"{ce['perplexity']['wikitext2'] / ppl['wikitext2']:.2f}x" if ce else "",
                f"{ppl['wikitext2'] / same['perplexity']['wikitext2']:.2f}x" if same else "",
                f"{run['step_s']:.2f}",
                f"{run['step_s'] / same['step_s']:.2f}x" if same else "",
                f"{run['peak_rss_gb']:.2f}",
            ]
        )
    header = ["run", "steps", *[f"{t} ppl" for t in texts], "CE / run (wikitext2)", "run / same_tok (wikitext2)"]
    out = _table([*header, "step s", "step / same_tok", "peak RSS GB"], rows, right_from=1)
    if teachers:
        out += ["", "Teachers on their own tokens (Gemma-3 after its `<bos>`): " + "; ".join(
            f"{name}: " + ", ".join(f"{t} {v:.1f}" for t, v in ppl.items()) for name, ppl in teachers.items()
        ) + "."]  # fmt: skip
    out += [
        f"Shared vocabulary: {s}."
        for s in {r["shared_vocabulary"] for r in runs.values() if r.get("shared_vocabulary")}
    ]
    return "\n".join([*out, "", provenance(records)])


TABLES: dict[str, Callable[[list[dict]], str]] = {
    "demo_seeds": demo_seeds,
    "glue_quality": glue_quality,
    "glue_step_time": glue_step_time,
    "lm_quality": lm_quality,
    "lm_memory": lm_memory,
    "chunked_kd_memory": chunked_kd_memory,
    "glue_modes": glue_modes,
    "xtok_lm": xtok_lm,
}


def summarize(records: list[dict]) -> str:
    """Every benchmark's tables for ``records``, each under a ``## <benchmark>`` heading."""
    unknown = {r["benchmark"] for r in records} - set(TABLES)
    if unknown:
        raise ValueError(f"no table for benchmark {sorted(unknown)[0]!r}: choose from {', '.join(TABLES)}.")
    parts = []
    for name in [n for n in TABLES if any(r["benchmark"] == n for r in records)]:
        table = TABLES[name]([r for r in records if r["benchmark"] == name])
        if name == "demo_seeds":  # its table is the README's as printed; the provenance goes below it
            table += "\n\n" + provenance([r for r in records if r["benchmark"] == name])
        parts.append(f"## {name}\n\n{table}")
    return "\n\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("benchmarks", nargs="*", help=f"Of {', '.join(TABLES)} (default: every one with run files).")
    parser.add_argument("--results_dir", default=str(RESULTS), help="Holds one folder of run files per benchmark.")
    parser.add_argument("--files", nargs="+", default=None, help="Summarise these run files instead.")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    unknown = [name for name in opts.benchmarks if name not in TABLES]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}: choose from {', '.join(TABLES)}")
    if opts.files:
        paths = opts.files
    else:
        paths = [p for name in (opts.benchmarks or TABLES) for p in run_files(opts.results_dir, name)]
    records = load(paths)
    if not records:
        print(
            f"summarize: no run files under {opts.results_dir} for {', '.join(opts.benchmarks or TABLES)}",
            file=sys.stderr,
        )
        return 1
    print(summarize(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
