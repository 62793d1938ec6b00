"""Where a frozen teacher lives when training runs on many processes: replicated (DDP), sharded with torch's FSDP2
``fully_shard`` (under accelerate's FSDP2 only), or handed to DeepSpeed (ZeRO-3 only).

The teacher is inference-only everywhere: ``eval()``, no ``requires_grad``, never wrapped in
``DistributedDataParallel`` (it has no gradients to average), never seen by an optimizer. What changes with the
strategy is whether every rank holds the whole teacher:

- no distribution, DDP, multi-CPU, ZeRO-1/2: a plain module on the device, in the training dtype. ZeRO-1/2
  partition optimizer states and gradients, which a frozen teacher has none of, so it is not given to DeepSpeed.
- FSDP2 (accelerate's FSDP plugin with ``fsdp_version: 2``): the teacher is sharded with FSDP2 ``fully_shard``, one
  unit per transformer block and one for the rest, resharded after every forward, under the plugin's mixed-precision
  policy. Under accelerate's FSDP1 the teacher is replicated instead, with a warning: an FSDP2 teacher beside an
  FSDP1 student has never been run.
- ZeRO-3: the teacher is wrapped in an inference DeepSpeed engine (no optimizer), which partitions its weights
  (TRL's ``prepare_deepspeed`` does the same for reference and teacher models).
"""

from __future__ import annotations

import copy
import logging

import torch
from accelerate.utils import DistributedType
from torch import nn

from .models import get_layers

logger = logging.getLogger(__name__)

PLACEMENTS = ("replicate", "fsdp", "zero12", "zero3")
_HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# ZeRO-3 buffer sizes that a Trainer fills from the *student's* hidden size when it builds its own engine; the
# teacher's copy of the config may still hold "auto" for them (values as in TRL's prepare_deepspeed)
_ZERO3_SIZES = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_param_persistence_threshold": lambda h: 10 * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
}


def zero_stage(accelerator) -> int | None:
    """The DeepSpeed ZeRO stage in use, or ``None`` without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return None
    stage = (plugin.deepspeed_config or {}).get("zero_optimization", {}).get("stage", plugin.zero_stage)
    return int(stage or 0)


def teacher_placement(accelerator) -> str:
    """One of :data:`PLACEMENTS`, from ``accelerator.distributed_type`` (and the ZeRO stage under DeepSpeed)."""
    distributed_type = accelerator.distributed_type
    if distributed_type == DistributedType.DEEPSPEED:
        return "zero3" if zero_stage(accelerator) == 3 else "zero12"
    if distributed_type == DistributedType.FSDP and getattr(accelerator, "is_fsdp2", False):
        return "fsdp"
    return "replicate"  # FSDP1 too: see place_teacher


def default_teacher_dtype(accelerator, default: torch.dtype) -> torch.dtype:
    """The dtype the teacher defaults to: under DeepSpeed and FSDP the ``mixed_precision`` bf16/fp16 (DeepSpeed casts
    the student to it later, in ``train()``; FSDP computes the student's blocks in it, and a teacher sharded under
    the same policy must match it, output head included); elsewhere ``default`` (the student's dtype, fp32 under
    autocast)."""
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        return _HALF_DTYPES.get(str(accelerator.mixed_precision), default)
    return default


def is_placed(teacher) -> bool:
    """Whether ``teacher`` is already sharded (an FSDP2 module) or a DeepSpeed engine, to be left as it is."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(teacher, FSDPModule) or any(c.__name__ == "DeepSpeedEngine" for c in type(teacher).__mro__)


def place_teacher(teacher: nn.Module, accelerator, dtype: torch.dtype | str | None = None):
    """Freeze ``teacher`` and put it where ``accelerator``'s strategy wants it; returns the module to call.

    Args:
        teacher: the teacher model.
        accelerator: an ``accelerate.Accelerator`` (the Trainer's ``self.accelerator``).
        dtype: cast the teacher to it (``None`` or ``"auto"``: keep its dtype). Under ZeRO-3 DeepSpeed decides.

    Returns:
        The teacher itself (replicated or sharded in place), or a DeepSpeed inference engine under ZeRO-3.
    """
    teacher.eval().requires_grad_(False)
    if is_placed(teacher):  # sharded or wrapped by the caller
        return teacher
    dtype = None if dtype == "auto" else dtype
    placement = teacher_placement(accelerator)
    if accelerator.distributed_type == DistributedType.FSDP and placement != "fsdp":
        logger.warning(
            "place_teacher: accelerate runs FSDP1 (fsdp_version: 1); the teacher is replicated on every rank, not "
            "sharded (an FSDP2 teacher beside an FSDP1 student is untested). Use fsdp_version: 2 to shard it."
        )
    if placement == "zero3":
        return deepspeed_inference_engine(teacher, accelerator)
    if dtype is not None:
        teacher.to(dtype)
    if placement == "fsdp":
        # sharding moves each shard to the mesh's device; the whole teacher never lands on one GPU
        return shard_teacher(
            teacher, _fsdp_mesh(accelerator), device=accelerator.device, **_fsdp2_policies(accelerator)
        )
    return teacher.to(accelerator.device)


# ---- FSDP2 ----


def _fsdp_mesh(accelerator):
    """The data-parallel shard mesh accelerate uses for the student (``None``: FSDP2's default, all ranks)."""
    mesh = getattr(accelerator, "torch_device_mesh", None)
    config = getattr(accelerator, "parallelism_config", None)
    if mesh is None or config is None:
        return None
    return mesh[tuple(config.fsdp_dim_names)]


def _fsdp2_policies(accelerator) -> dict:
    """The FSDP2 plugin's mixed-precision and CPU-offload policies, when they are FSDP2 ones (FSDP1 has others)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    policies = {}
    if isinstance(getattr(plugin, "mixed_precision_policy", None), MixedPrecisionPolicy):
        policies["mp_policy"] = plugin.mixed_precision_policy
    if isinstance(getattr(plugin, "cpu_offload", None), OffloadPolicy):
        policies["offload_policy"] = plugin.cpu_offload
    return policies


def _shard_units(teacher: nn.Module) -> list[nn.Module]:
    """The transformer blocks, each an FSDP unit: from :mod:`hf_distill.mapping`'s table, else ``_no_split_modules``."""
    try:
        return list(get_layers(teacher))
    except (ValueError, AttributeError):
        names = set(getattr(teacher, "_no_split_modules", None) or ())
        blocks = [m for m in teacher.modules() if type(m).__name__ in names]
        if not blocks:
            logger.warning("shard_teacher: no transformer blocks found in %s; sharding it as one unit.", type(teacher))
        return blocks


def shard_teacher(
    teacher: nn.Module,
    mesh=None,
    *,
    keep_output_head: bool = True,
    device: torch.device | str | None = None,
    mp_policy=None,
    offload_policy=None,
) -> nn.Module:
    """Shard a frozen teacher across the ranks of ``mesh`` with FSDP2 ``fully_shard``, for inference only.

    Every transformer block becomes one FSDP unit, the root module another; each unit's weights are all-gathered
    for its forward and freed again after it (``reshard_after_forward=True``, also at the root: no backward comes),
    so a rank holds ``1 / world_size`` of the teacher plus one block at a time. Needs an initialised process group.

    Args:
        teacher: the teacher model (on CPU or its device; the shards go to the mesh's device).
        mesh: a 1-D ``DeviceMesh`` (``None``: all ranks, on the accelerator if there is one, else the CPU).
        keep_output_head: leave the output head (and a tied input embedding) whole on every rank, because the
            chunked causal-LM loss reads the head's weight outside the teacher's forward. ``V x D`` weights per rank.
            FSDP does not cast ignored weights, so with ``mp_policy`` the kept head is cast to its ``param_dtype``
            (the sharded final norm hands it activations in that dtype).
        device: where the kept head goes (default: the mesh's device).
        mp_policy, offload_policy: FSDP2 policies, e.g. ``CPUOffloadPolicy()`` to keep the shards in CPU memory.

    Returns:
        ``teacher``, sharded in place (now also an ``FSDPModule``).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    if not torch.distributed.is_initialized():
        raise ValueError("shard_teacher needs torch.distributed: launch with torchrun/accelerate (world size >= 2).")
    teacher.eval().requires_grad_(False)
    if mesh is None:
        device_type = torch.accelerator.current_accelerator().type if torch.accelerator.is_available() else "cpu"
        mesh = init_device_mesh(device_type, (torch.distributed.get_world_size(),))
    kwargs = {"mesh": mesh, "reshard_after_forward": True}
    kwargs.update({k: v for k, v in (("mp_policy", mp_policy), ("offload_policy", offload_policy)) if v is not None})
    head = teacher.get_output_embeddings() if keep_output_head and hasattr(teacher, "get_output_embeddings") else None
    ignored = set(head.parameters()) if head is not None else set()
    if head is not None:
        # a tied input embedding shares the head's Parameter (`.to` swaps its data in place): it is cast with it
        dtype = getattr(mp_policy, "param_dtype", None)
        head.to(device=device if device is not None else _mesh_device(mesh), dtype=dtype)
    for block in _shard_units(teacher):
        fully_shard(block, ignored_params=ignored or None, **kwargs)
    fully_shard(teacher, ignored_params=ignored or None, **kwargs)
    return teacher


def _mesh_device(mesh) -> torch.device:
    if mesh.device_type == "cpu":
        return torch.device("cpu")
    return torch.device(mesh.device_type, torch.get_device_module(mesh.device_type).current_device())


# ---- DeepSpeed ZeRO-3 ----


def deepspeed_inference_config(config: dict, hidden_size: int | None = None) -> dict:
    """A copy of the training DeepSpeed ``config`` for a frozen model: no optimizer or scheduler, ZeRO stage kept,
    and the ZeRO-3 bucket sizes still set to ``"auto"`` filled from ``hidden_size``."""
    config = copy.deepcopy(config)
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    zero = config.setdefault("zero_optimization", {})
    for key, size in _ZERO3_SIZES.items():
        if zero.get(key) == "auto":
            if hidden_size is None:
                raise ValueError(
                    f"The DeepSpeed config sets zero_optimization.{key}='auto' but the teacher's config has no "
                    "hidden_size to fill it from; give a number in the DeepSpeed config."
                )
            zero[key] = size(hidden_size)
    return config


def deepspeed_inference_engine(teacher: nn.Module, accelerator):
    """Wrap a frozen ``teacher`` in a DeepSpeed engine without optimizer (ZeRO-3 partitions its weights)."""
    try:
        import deepspeed
    except ImportError as err:
        raise ValueError(
            "DeepSpeed ZeRO-3 is active but `deepspeed` cannot be imported: pip install deepspeed."
        ) from err
    hidden_size = getattr(getattr(teacher, "config", None), "hidden_size", None)
    config = deepspeed_inference_config(accelerator.state.deepspeed_plugin.deepspeed_config, hidden_size)
    engine, *_ = deepspeed.initialize(model=teacher, config=config)
    engine.eval()
    return engine
