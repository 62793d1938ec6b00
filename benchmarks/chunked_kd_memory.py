"""Memory and time of token-level logit KD: the naive loss on full logits vs the chunked KD term of
``fused_causal_lm_loss`` (``alpha_task=0``: the path the trainer runs), on CPU.

The shapes of issue #4 (batch 8 x seq 512, SmolLM2's vocabulary 49,152 and width 576): one (B, T, V) float32 tensor
is 0.8 GB. Each variant runs forward + backward of the KD loss alone, from the student's last hidden states and
lm_head, in a fresh subprocess, and reports

- saved for backward: the distinct storages autograd holds for the backward pass when the forward returns
  (torch.autograd.graph.saved_tensors_hooks; the head's weight counts when it is saved);
- peak RSS increase: the process's resident-memory high-water mark (VmHWM, reset through /proc/self/clear_refs)
  during forward + backward, above the resident memory before it: the real peak, transient chunk tensors and the
  gradients included (Linux only);
- time: wall time of one forward + backward (after one warm-up run).

    python benchmarks/chunked_kd_memory.py                      # the issue's shapes
    python benchmarks/chunked_kd_memory.py --seq 128 --vocab 8192  # quicker

Each run writes its own file in --results_dir (the commit, versions, machine, every argument and the measurements);
`python benchmarks/summarize.py chunked_kd_memory` prints the table. Timings are noisy on shared machines: compare the
ratios measured within one run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import weakref
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import default_dir, new_path, run_record, write_record  # noqa: E402
from memory import reset_peak_rss, rss_mb  # noqa: E402
from summarize import chunked_kd_memory, load  # noqa: E402

from hf_distill.losses import TeacherTargets, fused_causal_lm_loss, get_loss  # noqa: E402


class _Saved:
    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor):
        self.tensor = tensor


def _inputs(args):
    """Student hidden (B, T, D) + lm_head, teacher hidden (B, T, Dt) + head, bf16 teacher logits (B, T, V), mask."""
    torch.manual_seed(0)
    head = nn.Linear(args.dim, args.vocab, bias=False)
    teacher_head = nn.Linear(args.teacher_dim, args.vocab, bias=False)
    hidden = torch.randn(args.batch, args.seq, args.dim, requires_grad=True)
    teacher_hidden = torch.randn(args.batch, args.seq, args.teacher_dim)
    teacher_logits = torch.empty(args.batch, args.seq, args.vocab, dtype=torch.bfloat16)
    with torch.no_grad():  # row by row, so that no full float32 (B, T, V) tensor raises the RSS high-water mark
        for b in range(args.batch):
            teacher_logits[b] = teacher_head(teacher_hidden[b]).to(torch.bfloat16)
    mask = torch.ones(args.batch, args.seq, dtype=torch.bool)
    mask[:, : args.seq // 8] = False  # a prompt that is not distilled
    return head, hidden, teacher_head, teacher_hidden, teacher_logits, mask


def _loss(variant, teacher, args, head, hidden, teacher_head, teacher_hidden, teacher_logits, mask):
    kw = {"mask": mask, "temperature": args.temperature, "beta": args.beta}
    if variant == "naive":
        if teacher == "hidden":
            with torch.no_grad():
                teacher_logits = teacher_head(teacher_hidden)  # (B, T, V) float32
        return get_loss("logits", args.loss)(head(hidden), teacher_logits, **kw)
    targets = (
        TeacherTargets(logits=[teacher_logits])
        if teacher == "logits"
        else TeacherTargets(hidden=[teacher_hidden], heads=[teacher_head])
    )
    total, _ = fused_causal_lm_loss(
        hidden, head, labels=None, teacher=targets, alpha_task=0.0, alpha_logits=1.0, loss=args.loss,
        chunk_size=args.chunk_size, **kw,
    )  # fmt: skip
    return total


def run_variant(variant: str, teacher: str, args) -> dict:
    inputs = _inputs(args)
    head, hidden = inputs[0], inputs[1]
    times, saved = [], {}
    for _ in range(2):  # warm-up (thread pools, kernels, first-touch pages), then the measured run
        head.zero_grad(set_to_none=True)
        hidden.grad = None
        loss = None
        reset_peak_rss()
        rss_before = rss_mb("VmRSS")
        packed = weakref.WeakSet()

        def pack(t, packed=packed):
            packed.add(s := _Saved(t))
            return s

        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda s: s.tensor):
            loss = _loss(variant, teacher, args, *inputs)
        saved = {s.tensor.untyped_storage().data_ptr(): s.tensor.untyped_storage().nbytes() for s in packed}
        loss.backward()
        times.append(time.perf_counter() - start)
        peak = rss_mb("VmHWM") - rss_before
    return {
        "loss": loss.item(),
        "saved_mb": sum(saved.values()) / 2**20,
        "peak_mb": peak,
        "time_s": times[-1],
    }


INTERNAL = ("chunk_size", "variant")  # flags of the subprocesses, not of a run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=49152)
    parser.add_argument("--dim", type=int, default=576)
    parser.add_argument("--teacher_dim", type=int, default=576)
    parser.add_argument("--chunk_sizes", type=int, nargs="+", default=[1024, 256])
    parser.add_argument("--chunk_size", type=int, default=1024, help=argparse.SUPPRESS)  # internal, per variant
    parser.add_argument("--loss", default="kl")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--results_dir", default=default_dir("chunked_kd_memory"), help="Where the run's file goes.")
    parser.add_argument("--variant", default=None, help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    return parser


def main():
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.variant:
        print(json.dumps(run_variant(*args.variant.split(":"), args)))
        return
    variants = []
    for teacher in ("logits", "hidden"):
        for variant, chunk_size in [("naive", None)] + [("chunked", c) for c in args.chunk_sizes]:
            extra = [] if chunk_size is None else ["--chunk_size", str(chunk_size)]
            cmd = [sys.executable, __file__, *sys.argv[1:], *extra, "--variant", f"{variant}:{teacher}"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            variants.append(
                {
                    "label": "naive" if chunk_size is None else f"chunked {chunk_size}",
                    "teacher": "bf16 logits" if teacher == "logits" else "hidden + head",
                    "chunk_size": chunk_size,
                    **json.loads(out.strip().splitlines()[-1]),
                }
            )
    full_mb = args.batch * args.seq * args.vocab * 4 / 2**20
    config = {k: v for k, v in vars(args).items() if k not in INTERNAL}
    record = run_record("chunked_kd_memory", config, {"full_logits_mb": full_mb, "variants": variants})
    path = new_path(args.results_dir, f"{args.loss}-b{args.batch}-t{args.seq}-v{args.vocab}")
    write_record(path, record)
    print(chunked_kd_memory(load([path])))
    print(f"[bench] {path}")


if __name__ == "__main__":
    main()
