"""Training batches from generated text: on-policy KD (GKD's lambda), sequence-level KD from teacher outputs and
data-free distillation from teacher samples."""

from __future__ import annotations

import random
from contextlib import contextmanager

import torch
from torch import nn
from transformers import GenerationConfig

from .constants import IGNORE_INDEX
from .data.padding import pad_rows
from .models.facts import unwrap


class SamplingRNG:
    """The random stream of on-policy / sequence-level KD, apart from the global one, so that a checkpoint can hold it.

    ``choose()`` draws the per-batch coin (student completions with probability ``lmbda``); inside ``active(device)``
    the global torch generator (and ``device``'s CUDA one) is this stream's, so ``generate`` samples from it; the
    global state is put back afterwards, so generation does not move dropout or data order either. The coin is the
    same on every process (all of them generate, or none: a sharded model generates collectively); the sampling
    stream is seeded with ``seed + rank``.
    """

    def __init__(self, seed: int, rank: int = 0):
        self.seed = seed + rank  # of the sampling stream
        self.coin = random.Random(seed)
        self.cpu = torch.Generator().manual_seed(self.seed).get_state()
        self.cuda: dict[int, torch.Tensor] = {}  # device index -> state, created on first use

    def choose(self) -> float:
        return self.coin.random()

    @contextmanager
    def active(self, device: torch.device):
        index = (device.index or 0) if device.type == "cuda" else None
        with torch.random.fork_rng(devices=[] if index is None else [index]):
            torch.set_rng_state(self.cpu)
            if index is not None:
                if index in self.cuda:
                    torch.cuda.set_rng_state(self.cuda[index], index)
                else:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(self.seed)
            yield
            self.cpu = torch.get_rng_state()
            if index is not None:
                self.cuda[index] = torch.cuda.get_rng_state(index)

    def state_dict(self) -> dict:
        return {"seed": self.seed, "coin": self.coin.getstate(), "cpu": self.cpu, "cuda": dict(self.cuda)}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        self.coin.setstate(state["coin"])
        self.cpu = state["cpu"]
        self.cuda = dict(state["cuda"])


def _eos_list(eos_token_id) -> list[int]:
    return [int(i) for i in eos_token_id] if isinstance(eos_token_id, list | tuple) else [int(eos_token_id)]


def _generation_config(max_new_tokens, pad_token_id, eos_token_id, temperature, top_k, top_p, do_sample):
    if eos_token_id is None:
        raise ValueError("eos_token_id is None; pass the tokenizer's eos id (or a list of ids) so completions end.")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature must be > 0 when sampling, got {temperature}; use do_sample=False for greedy.")
    sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
    # Pin everything that would change the sampled distribution or the output's shape, so a model's own
    # generation_config.json (repetition_penalty, num_return_sequences...) does not leak into the KD targets.
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        num_beams=1,
        num_return_sequences=1,
        repetition_penalty=1.0,
        return_dict_in_generate=False,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        **sampling,
    )


def pack_completions(
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    eos_token_id,
    pad_token_id: int,
) -> dict[str, torch.Tensor]:
    """Right-padded training rows from prompts (any padding) and the tokens generated after them.

    Args:
        prompt_input_ids, prompt_attention_mask: ``(B, P)``; padding positions (mask 0) are dropped.
        completion_ids: ``(B, N)`` generated tokens; each row is cut after its first eos (``int`` or list of ids).
        pad_token_id: fills the padding of the output.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels``, each ``(B, L)`` with ``L`` the longest prompt + completion;
        ``labels`` holds the completion (eos included) and -100 on the prompt and on padding.
    """
    if prompt_input_ids.shape != prompt_attention_mask.shape or prompt_input_ids.shape[0] != completion_ids.shape[0]:
        raise ValueError(
            f"prompt_input_ids {tuple(prompt_input_ids.shape)}, prompt_attention_mask "
            f"{tuple(prompt_attention_mask.shape)} and completion_ids {tuple(completion_ids.shape)} must be "
            "(B, P), (B, P) and (B, N)."
        )
    eos = torch.tensor(_eos_list(eos_token_id), dtype=completion_ids.dtype, device=completion_ids.device)
    is_eos = torch.isin(completion_ids, eos)  # (B, N)
    # keep a token when no eos came strictly before it: up to and including the first eos
    kept = ((is_eos.long().cumsum(1) - is_eos.long()) == 0).sum(1)  # (B,)
    rows = []
    for ids, mask, completion, n in zip(prompt_input_ids, prompt_attention_mask, completion_ids, kept.tolist()):
        rows.append((ids[mask.bool()].cpu(), completion[:n].cpu()))
    input_ids = pad_rows([torch.cat([p, c]) for p, c in rows], pad_token_id, dtype=torch.long)
    labels = pad_rows(
        [torch.cat([torch.full_like(p, IGNORE_INDEX), c]) for p, c in rows], IGNORE_INDEX, dtype=torch.long
    )
    attention_mask = pad_rows([[1] * (len(p) + len(c)) for p, c in rows], 0, dtype=torch.long)
    device = prompt_input_ids.device
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "labels": labels.to(device),
    }


@torch.no_grad()
def generate_completions(
    model: nn.Module,
    prompt_input_ids: torch.Tensor,
    prompt_attention_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_id,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    do_sample: bool = True,
) -> dict[str, torch.Tensor]:
    """Complete LEFT-padded prompts with ``model`` and return right-padded rows to train on.

    The model generates in eval mode (its previous mode is restored) without gradients; ``top_k=0`` and
    ``top_p=1.0`` sample from the full distribution at ``temperature``. ``eos_token_id`` is an id or a list of ids.

    Args:
        prompt_input_ids, prompt_attention_mask: ``(B, P)``, left-padded as ``generate`` needs.

    Returns:
        ``input_ids``, ``attention_mask``, ``labels`` ``(B, L)`` on the prompts' device: each row is its prompt
        without padding, then the generated tokens up to and including the first eos; ``labels`` are -100 on the
        prompt and on padding (see :func:`pack_completions`).
    """
    config = _generation_config(max_new_tokens, pad_token_id, eos_token_id, temperature, top_k, top_p, do_sample)
    generator = unwrap(model, peft=False)
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    try:
        sequences = generator.generate(
            input_ids=prompt_input_ids.to(device),
            attention_mask=prompt_attention_mask.to(device),
            generation_config=config,
        )  # (B, P + N): the prompts as given, then N new tokens, pad after a row's eos
    finally:
        generator.train(was_training)
    completion = sequences[:, prompt_input_ids.shape[1] :].to(prompt_input_ids.device)
    return pack_completions(prompt_input_ids, prompt_attention_mask, completion, eos_token_id, pad_token_id)


def maybe_generate(batch: dict, args, sampling: SamplingRNG, student, teacher, tokenizer, unwrap_model) -> dict:
    """``batch`` with new completions, or as it is: with probability ``args.lmbda`` the ``student`` writes them
    (on-policy KD), else with ``args.seq_kd`` the ``teacher`` (a :class:`hf_distill.teachers.Teacher`) does.
    ``unwrap_model`` takes a model out of the launcher's wrapper (``accelerator.unwrap_model``)."""
    if args.lmbda == 0 and not args.seq_kd:
        return batch
    if sampling.choose() < args.lmbda:
        model = student
    elif args.seq_kd:
        model = teacher.model if teacher is not None else None
        if model is None:
            name = teacher.name if teacher is not None else "the run"
            raise ValueError(f"seq_kd needs a teacher model to generate with; {name} has none.")
    else:
        return batch
    if "prompt_input_ids" not in batch:
        raise ValueError(
            "lmbda > 0 or seq_kd needs prompts: train on prompt/completion or messages data, or give the text "
            "data a prompt_length column (hf-distill causal-lm --generation_prompt_length)."
        )
    pad_id = getattr(tokenizer, "pad_token_id", None)
    eos_id = getattr(tokenizer, "eos_token_id", None) or unwrap(student).config.eos_token_id
    with sampling.active(next(unwrap(unwrap_model(model)).parameters()).device):
        return generate_completions(
            model,
            batch["prompt_input_ids"],
            batch["prompt_attention_mask"],
            max_new_tokens=args.max_new_tokens,
            pad_token_id=pad_id if pad_id is not None else eos_id,
            eos_token_id=eos_id,
            temperature=args.generation_temperature,
            top_p=args.generation_top_p,
        )


def _prompt_ids(tokenizer, prompt: str | None) -> list[int]:
    if prompt is None:
        if tokenizer.bos_token_id is None:
            raise ValueError("The tokenizer has no bos token to start samples from; pass prompt='...'.")
        return [tokenizer.bos_token_id]
    ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {prompt!r} tokenizes to no tokens; pass a non-empty prompt.")
    return list(ids)


def _fork_rng_devices(model: nn.Module) -> list[int]:
    device = next(model.parameters()).device
    return [device.index or 0] if device.type == "cuda" else []


def sample_sequences(
    model: nn.Module,
    tokenizer,
    *,
    num_samples: int,
    max_length: int,
    batch_size: int = 8,
    prompt: str | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
):
    """A ``datasets.Dataset`` of ``num_samples`` sequences sampled from ``model`` (data-free distillation).

    Each sample starts from ``[bos]`` (or the tokenized ``prompt``) and runs to the first eos or ``max_length``
    tokens in all, prompt included. Rows are unpadded lists: ``input_ids``, ``attention_mask`` (all 1) and
    ``labels`` (-100 on the prompt). With ``seed`` the samples are reproducible; the global RNG state is restored
    afterwards.
    """
    from datasets import Dataset
    from tqdm.auto import tqdm

    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples ({num_samples}) and batch_size ({batch_size}) must be at least 1.")
    prompt_ids = _prompt_ids(tokenizer, prompt)
    if max_length <= len(prompt_ids):
        raise ValueError(
            f"max_length={max_length} leaves no room to generate after the {len(prompt_ids)}-token prompt; "
            f"pass max_length > {len(prompt_ids)}."
        )
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("The tokenizer has no eos token, so samples could not end; set tokenizer.eos_token first.")
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    columns = {"input_ids": [], "attention_mask": [], "labels": []}
    with torch.random.fork_rng(devices=_fork_rng_devices(model), enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with tqdm(total=num_samples, desc="Sampling sequences", unit="seq") as progress:
            while len(columns["input_ids"]) < num_samples:
                n = min(batch_size, num_samples - len(columns["input_ids"]))
                ids = torch.tensor([prompt_ids] * n)  # (n, P): one prompt, so no padding
                batch = generate_completions(
                    model,
                    ids,
                    torch.ones_like(ids),
                    max_new_tokens=max_length - len(prompt_ids),
                    pad_token_id=pad,
                    eos_token_id=eos,
                    temperature=temperature,
                    top_p=top_p,
                )
                for key in columns:
                    columns[key] += [row[m.bool()].tolist() for row, m in zip(batch[key], batch["attention_mask"])]
                progress.update(n)
    return Dataset.from_dict(columns)
