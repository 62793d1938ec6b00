"""The mean teacher: an exponential moving average (EMA) of the student's own weights, run live as the teacher.

No separate teacher model is trained or loaded: the teacher starts as a copy of the student and follows it, after
each optimizer step, as ``ema <- d_t * ema + (1 - d_t) * student`` (Tarvainen & Valpola, 2017). It is never trained
by the optimizer, its state (weights and update count) is saved in and restored from each checkpoint, and with
``publish`` the student ends training holding the EMA weights (often the better model), which are then what is
saved and evaluated.
"""

from __future__ import annotations

import copy

import torch
from accelerate.utils import DistributedType
from torch import nn

from ..distributed import teacher_placement
from ..mapping import ADAPTERS_ATTR
from ..models import unwrap
from .model import ModelTeacher

_UPDATES = "updates"  # the update count's entry in the checkpoint state (the weights are under "model.")
# 16-bit floats keep 8 (bf16) or 11 (fp16) significant bits: a (1 - d) step of the average rounds away in them
_LOW_PRECISION = (torch.float16, torch.bfloat16)


class EMATeacher(ModelTeacher):
    """The exponential moving average of ``student``'s weights as the teacher.

    Args:
        student: the model being trained; the teacher starts as a copy of its current weights (the projection
            adapters of a KD run are not copied: they belong to the student's side).
        decay: ``d`` in ``ema <- d * ema + (1 - d) * student``, in ``[0, 1)``.
        warmup_steps: the decay ramps linearly from 0 to ``decay`` over this many optimizer steps
            (``d_t = decay * min(1, t / warmup_steps)`` at the ``t``-th update, ``t`` from 0): early on the average
            follows the fast-moving student closely instead of keeping its random start. 0: ``decay`` throughout.
        publish: at the end of training copy the EMA weights into the student, so that they are what is saved.
        name: recorded in ``distillation_config.json``.
        columns: ``{forward argument: batch column}`` the average reads (:class:`ModelTeacher`); ``None``: the
            student's inputs.
    """

    def __init__(
        self,
        student: nn.Module,
        *,
        decay: float = 0.999,
        warmup_steps: int = 0,
        publish: bool = False,
        name: str | None = None,
        columns: dict[str, str] | None = None,
    ):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1) (the weight kept by the average each step), got {decay}.")
        if warmup_steps < 0:
            raise ValueError(f"ema_warmup_steps must be >= 0, got {warmup_steps}.")
        inner = unwrap(student)
        model = copy.deepcopy(inner)
        if hasattr(model, ADAPTERS_ATTR):  # the student's projection adapters are not part of the average
            delattr(model, ADAPTERS_ATTR)
        model.eval().requires_grad_(False)
        source = inner.config.name_or_path or type(inner).__name__
        super().__init__(model, name=name or f"EMA of {source}", length_groups=None, columns=columns)
        self.decay, self.warmup_steps, self.publish = decay, warmup_steps, publish
        self.updates = 0
        # the average of a 16-bit student's trained weights is kept in float32 (the teacher runs on its 16-bit copy):
        # in bf16 `ema + 0.001 * (student - ema)` rounds back to `ema` unless they differ by more than their size
        # only the weights the student trains move: a frozen base (a LoRA student's) stays equal to the student's
        self.trained = [name for name, p in inner.named_parameters() if p.requires_grad]
        trained = set(self.trained)
        self.master = {
            name: p.detach().float()
            for name, p in model.named_parameters()
            if p.dtype in _LOW_PRECISION and name in trained
        }

    def decay_at(self, update: int) -> float:
        """``d_t`` of the ``update``-th update (from 0)."""
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * min(1.0, update / self.warmup_steps)

    def prepare(self, accelerator, dtype=None) -> None:
        """On the run's device, in the student's own dtype (a 16-bit student's trained weights are averaged in
        float32 beside it, see ``master``): ``dtype`` is not used. The student's full weights must be on every
        process: FSDP and ZeRO-3 shard them."""
        if accelerator.distributed_type == DistributedType.FSDP or teacher_placement(accelerator) == "zero3":
            raise ValueError(
                "An EMA teacher averages the student's full weights on every process, but FSDP / DeepSpeed ZeRO-3 "
                "shard them: train with DDP (or ZeRO-1/2), or one process."
            )
        self.model.to(accelerator.device).eval().requires_grad_(False)
        self.master = {name: m.to(accelerator.device) for name, m in self.master.items()}
        self.placement = "replicate"

    @torch.no_grad()
    def on_optimizer_step(self, student: nn.Module) -> None:
        """``ema <- d_t * ema + (1 - d_t) * student`` for every parameter the student trains (a frozen one keeps the
        value both share); buffers are copied."""
        weight = 1.0 - self.decay_at(self.updates)
        params, own = dict(unwrap(student).named_parameters()), dict(self.inner.named_parameters())
        for name in self.trained:
            p = own[name]
            source = params[name].detach().to(p.device)  # a device-mapped student spans several devices
            master = self.master.get(name)
            if master is None:
                p.lerp_(source.to(p.dtype), weight)
            else:
                p.copy_(master.lerp_(source.to(master.dtype), weight))
        buffers = dict(unwrap(student).named_buffers())
        for name, b in self.inner.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
        self.updates += 1

    def check_student(self, student: nn.Module) -> None:
        """The average must be of this student: every averaged parameter has the same name and shape in it."""
        params = {name: p.shape for name, p in unwrap(student).named_parameters()}
        for name, p in self.inner.named_parameters():
            if params.get(name) != p.shape:
                got = "has none" if name not in params else f"has {tuple(params[name])}"
                raise ValueError(
                    f"{self.name} averages {name!r} {tuple(p.shape)}, but the student {got}: build the EMATeacher "
                    "from the student you train (EMATeacher(student))."
                )

    def on_train_end(self, student: nn.Module) -> None:
        """With ``publish``: the student takes the EMA weights (adapters and anything else not averaged stay)."""
        if self.publish:
            self.copy_to(student)

    @torch.no_grad()
    def copy_to(self, student: nn.Module) -> None:
        """Copy the EMA weights and buffers into ``student``."""
        target = unwrap(student)
        params, buffers = dict(target.named_parameters()), dict(target.named_buffers())
        for name, p in self.inner.named_parameters():
            params[name].copy_(p)
        for name, b in self.inner.named_buffers():
            if name in buffers:
                buffers[name].copy_(b)

    def record(self) -> dict:
        """What this average ran with, whatever the config says (a user may pass ``teacher_model=EMATeacher(...)``)."""
        return {
            "distill_mode": "ema",
            "ema_decay": self.decay,
            "ema_warmup_steps": self.warmup_steps,
            "save_ema": self.publish,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The average's weights (the float32 ones of a 16-bit student), buffers and update count."""
        state = {**self.inner.state_dict(), **self.master}
        return {**{f"model.{k}": v for k, v in state.items()}, _UPDATES: torch.tensor(self.updates, dtype=torch.int64)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        weights = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
        self.inner.load_state_dict(weights, strict=True)
        for name, master in self.master.items():
            master.copy_(weights[name])
        self.updates = int(state[_UPDATES])
