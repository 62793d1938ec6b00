"""``DistillationConfig``: ``TrainingArguments`` plus the knobs of knowledge distillation."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import yaml
from transformers import HfArgumentParser, TrainingArguments

from .losses import available_losses
from .losses.cross_tokenizer import CrossTokenizerMix
from .mapping import parse_layer_pairs
from .schedules import INTERMEDIATE_SCHEDULES
from .teachers.columns import parse_column_map

_TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")
# where the teacher comes from: a fixed model, or the moving average of the student's own weights
DISTILL_MODES = ("frozen", "ema", "born_again", "noisy_student", "mutual", "cotrain")
GENERATION_MODES = ("born_again", "noisy_student")  # hf_distill.generations: one trainer per generation
# written beside every saved student: the distillation settings, teachers and layer matches
DISTILLATION_CONFIG_FILE = "distillation_config.json"
# the modes whose teachers are never cast to teacher_dtype: why, for the one-line refusal
_OWN_DTYPE_TEACHERS = {
    "ema": "the teacher is the moving average of the student's own weights, kept in the student's dtype",
    "mutual": "the peers are trained like the student, each in the dtype it is loaded in",
}


def check_number(name: str, value, valid: str, ok: Callable[[float], bool] = lambda v: True) -> None:
    """Refuse ``value`` unless it is a finite number for which ``ok`` holds: one ``ValueError`` line that names the
    field, the value and ``valid`` (the range in words, e.g. ``"> 0"``). ``None`` (an unset optional) passes."""
    if value is None:
        return
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or not ok(number):
        raise ValueError(f"{name} must be a finite number{' ' + valid if valid else ''}, got {value!r}.")


@dataclass
class DistillationConfig(TrainingArguments):
    r"""
    Configuration for [`DistillationTrainer`]: every ``TrainingArguments`` field, plus the ones below.

    Parameters that control the teacher:
        teacher_model_name_or_path (`str` or `None`): Hub name or local folder of the teacher, used when the trainer
            is given no teacher object and recorded in ``distillation_config.json``.
        teacher_dtype (`str` or `None`): ``auto``, ``float32``, ``bfloat16`` or ``float16``; default: the student's.
        teacher_weights (`list[float]` or `None`): one weight per teacher when several teachers are given.
        trust_remote_code (`bool`): allow custom code when loading models by name (off unless you ask).
        teacher_length_groups (`int` or `None`): run the teacher's forward on up to this many groups of rows of
            similar length, each cut to its longest row: the same outputs without the work on padding (about half
            the teacher's time on SST-2 batches). Default: 4 when the teacher is on a CPU, 1 (off) on an accelerator,
            where small sub-batches underfill it. Encoders only (causal LMs run whole), right padding only.
        teacher_columns, student_columns (`dict` or `None`): column maps, ``{forward argument: batch column}``
            (a JSON object string is parsed): each model reads exactly the columns its map names, so that the teacher
            and the student may read different inputs of one example (the clean text and its noised copy, a sentence
            and its translation). A column a teacher's map names is hidden from models without a map; a column both
            read is named in both maps. ``teacher_columns`` applies to every teacher without a map of its own
            (``ModelTeacher(columns=...)``). See ``docs/concepts.md``, "Column maps".

    Parameters of teachers that learn (``docs/modes.md``):
        distill_mode (`str`): ``frozen`` (the teacher is a fixed model; the default), ``ema`` (no separate
            teacher: the exponential moving average of the student's own weights, updated after each optimizer step)
            ``born_again`` (generations of the same student, each taught by the one before; a frozen teacher each),
            ``noisy_student`` (the same generations, the student trained with noise on its inputs and its dropout on
            unlabelled text the teacher labels),
            ``mutual`` (peers trained with the student, each learning from the others' current predictions) or
            ``cotrain`` (the teacher fine-tuned on the task in the same loop while the student distils from it).
        ema_decay (`float`): the EMA's decay ``d`` in ``[0, 1)``: ``ema <- d * ema + (1 - d) * student``.
        ema_warmup_steps (`int`): the decay ramps linearly from 0 to ``ema_decay`` over this many optimizer steps.
        save_ema (`bool`): end training with the EMA weights in the student, so that they are what is saved and
            evaluated (``ema`` mode only).
        generations (`int`): ``born_again`` / ``noisy_student``: how many generations to train, each learning from
            the one before (:mod:`hf_distill.generations`; the jobs run it).
        ensemble_generations (`bool`): ``born_again`` / ``noisy_student``: the last generation learns from the
            ensemble of the teacher and every earlier generation, their soft targets averaged.
        kd_delay_steps (`int`): the student learns from its labels alone for this many optimizer steps (the KD
            weights at 0), then from the teachers too: a KD warm-up delay, e.g. while a ``cotrain`` teacher, trained
            from the start, learns the task. A trained teacher's own objective is not delayed.

    Parameters that control the loss:
        temperature (`float`): softmax temperature ``T`` of the soft targets; the soft terms are scaled by ``T^2``.
        alpha_task, alpha_logits, alpha_hidden, alpha_attention (`float`): weights of the student's own loss and of
            the logit, hidden-state and attention KD terms (each >= 0, not all zero).
        intermediate_schedule (`str`): ``constant``, ``linear`` or ``cosine``: the factor on ``alpha_hidden`` and
            ``alpha_attention`` over training; the decays go from 1 at the first step to 0 at the last (internals
            early, outputs late, as TinyBERT's two stages in one run).
        logit_loss (`str`): ``kl`` (forward KL), ``reverse_kl``, ``jsd`` (generalised, with ``jsd_beta``),
            ``skew_kl`` / ``skew_reverse_kl`` (DistiLLM, skew ``jsd_beta``) or ``mse``.
        hidden_loss (`str`): ``mse`` or ``cosine``.
        attention_loss (`str`): ``kl`` or ``mse`` on attention probabilities (eager attention), or ``relation``
            (MiniLM v2 Q/K/V self-relations; any head count, any attention backend).

    Parameters that control layer matching:
        layer_map (`str`): ``uniform``, ``last``, ``init`` (the layers ``build_student`` copied) or explicit
            ``student:teacher`` pairs such as ``0:0,1:2,2:4``.
        attention_layer_map (`str` or `None`): the attention term's own map (e.g. ``last``); default ``layer_map``.
        projection (`str`): ``linear`` adds a trainable projection where widths differ; ``none`` refuses.
        adapter_learning_rate (`float` or `None`): learning rate of the projections (default: ``learning_rate``).
        attention_head_reduction (`str`): ``none`` (head counts must match) or ``mean`` (average over heads).
        relation_heads (`int` or `None`): relation heads for ``attention_loss=relation`` (default: picked from
            the student's head count).

    Parameters of causal-LM distillation:
        kd_chunk_size (`int`): the next-token and token-level KD losses are computed together over chunks of this
            many tokens from the last hidden states, so that no ``(batch, seq, vocab)`` logits exist (``0``: full
            logits, the naive way).
        lmbda (`float`): fraction of training batches whose completions the student generates itself (on-policy
            KD, GKD's lambda); needs prompts in the data.
        seq_kd (`bool`): the teacher generates the completions of the other batches (sequence-level KD).
        max_new_tokens, generation_temperature, generation_top_p: sampling of those completions.
        cross_tokenizer_exact, cross_tokenizer_uld, cross_tokenizer_chain (`float`): a teacher with another
            tokenizer (:class:`hf_distill.teachers.CrossTokenizerTeacher`): the weights of the parts of its logit
            term (docs/losses.md, "Cross-tokenizer distillation"); non-negative, at least one positive.
        uld_top_k (`int`): the sorted probabilities the ULD part compares.

    Parameters of the jobs (``hf-distill glue`` / ``causal-lm``):
        overwrite_output_dir (`bool`): an ``output_dir`` that already holds a run is refused unless this is set
            (which first deletes what that run left: ``teacher/``, ``student_no_kd/``, checkpoints, weights,
            ``results.json``, ``report.png``) or ``resume_from_checkpoint`` is. ``TrainingArguments`` dropped the
            field in transformers 5.
    """

    # --- teacher ---
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Hub name or local folder of the teacher; recorded in distillation_config.json."},
    )
    teacher_dtype: str | None = field(
        default=None,
        metadata={"help": f"dtype of the teacher: one of {list(_TEACHER_DTYPES)}; default: the student's dtype."},
    )
    teacher_weights: list[float] | None = field(
        default=None,
        metadata={
            "help": "With several teachers: one non-negative weight each, for their soft targets and their hidden-state "
            "and attention terms alike."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code when loading models by name."}
    )
    teacher_length_groups: int | None = field(
        default=None,
        metadata={
            "help": "Run the teacher on up to this many groups of rows of similar length, without their padding "
            "(same outputs, less work); default: 4 on a CPU, 1 (off) on an accelerator. Encoders only."
        },
    )
    teacher_columns: dict | str | None = field(
        default=None,
        metadata={
            "help": "The teacher's column map, {forward argument: batch column} (a JSON object on the command line), "
            'e.g. {"input_ids": "teacher_input_ids", "attention_mask": "teacher_attention_mask"}: the '
            "teacher reads exactly those; the columns it names are hidden from the student. Default: the batch's "
            "model inputs."
        },
    )
    student_columns: dict | str | None = field(
        default=None,
        metadata={
            "help": "The student's column map (as teacher_columns); default: the batch's model inputs less the "
            "columns the teachers' maps name."
        },
    )
    # --- loss ---
    distill_mode: str = field(
        default="frozen",
        metadata={"help": f"Where the teacher comes from: {' or '.join(DISTILL_MODES)} (see docs/modes.md)."},
    )
    ema_decay: float = field(default=0.999, metadata={"help": "ema mode: the moving average's decay, in [0, 1)."})
    ema_warmup_steps: int = field(
        default=0, metadata={"help": "ema mode: ramp the decay linearly from 0 over this many optimizer steps."}
    )
    save_ema: bool = field(
        default=False, metadata={"help": "ema mode: end training with the EMA weights in the student (saved, scored)."}
    )
    generations: int = field(
        default=1,
        metadata={"help": "born_again / noisy_student: generations to train, each taught by the one before (>= 1)."},
    )
    ensemble_generations: bool = field(
        default=False,
        metadata={
            "help": "born_again / noisy_student: the last generation learns from the teacher and all earlier ones."
        },
    )
    kd_delay_steps: int = field(
        default=0,
        metadata={
            "help": "The student learns from its labels alone for this many optimizer steps, then from the teachers "
            "too (e.g. while a cotrain teacher learns the task). 0: from the first step."
        },
    )
    temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature T of the soft targets (> 0); soft terms scale by T^2."}
    )
    alpha_task: float = field(default=0.5, metadata={"help": "Weight of the student's own hard-label loss (>= 0)."})
    alpha_logits: float = field(default=0.5, metadata={"help": "Weight of the logit (soft-target) KD loss (>= 0)."})
    alpha_hidden: float = field(default=0.0, metadata={"help": "Weight of the hidden-state KD loss (>= 0)."})
    alpha_attention: float = field(default=0.0, metadata={"help": "Weight of the attention KD loss (>= 0)."})
    intermediate_schedule: str = field(
        default="constant",
        metadata={
            "help": "Schedule of alpha_hidden and alpha_attention over training: constant, linear or cosine (both "
            "decay from the full weight at the first step to 0 at the last)."
        },
    )
    logit_loss: str = field(
        default="kl",
        metadata={
            "help": "Logit KD loss: kl (forward), reverse_kl, jsd, skew_kl, skew_reverse_kl (the last three use "
            "jsd_beta) or mse."
        },
    )
    jsd_beta: float = field(
        default=0.5,
        metadata={
            "help": "beta of the generalised JSD (strictly between 0 and 1, 0.5: symmetric), and the skew of "
            "skew_kl / skew_reverse_kl (the mixture weight of the distribution being matched)."
        },
    )
    hidden_loss: str = field(default="mse", metadata={"help": "Hidden-state KD loss: mse or cosine."})
    attention_loss: str = field(
        default="kl",
        metadata={"help": "Attention KD loss: kl or mse on attention maps (needs eager attention), or relation."},
    )
    # --- layer matching ---
    layer_map: str = field(
        default="uniform",
        metadata={
            "help": "uniform, last, init (the teacher layers build_student copied), or 'student:teacher' pairs "
            "such as '0:0,1:2,2:4' (0 = embeddings)."
        },
    )
    attention_layer_map: str | None = field(
        default=None,
        metadata={
            "help": "Layer map of the attention term only (same syntax as layer_map), e.g. 'last' for MiniLM v2 "
            "relations on the last layer; default: layer_map."
        },
    )
    projection: str = field(
        default="linear", metadata={"help": "linear: trainable projection where widths differ; none: refuse."}
    )
    adapter_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the projection adapters (default: learning_rate)."}
    )
    attention_head_reduction: str = field(
        default="none", metadata={"help": "none (equal head counts required) or mean (average maps over heads)."}
    )
    relation_heads: int | None = field(
        default=None, metadata={"help": "Relation heads for attention_loss=relation (default: from the student)."}
    )

    # --- causal LMs ---
    kd_chunk_size: int = field(
        default=256,
        metadata={
            "help": "Causal LMs: compute the next-token and KD losses over chunks of this many tokens from the last "
            "hidden states (memory O(chunk x vocab) instead of batch x seq x vocab); 0: full logits."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={"help": "Fraction of batches whose completions the student generates (on-policy KD, 0 to 1)."},
    )
    seq_kd: bool = field(
        default=False, metadata={"help": "The teacher generates the completions of the other batches (seq-level KD)."}
    )
    max_new_tokens: int = field(default=128, metadata={"help": "Most tokens generated per completion."})
    generation_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of completions."})
    generation_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling of completions (0 < p <= 1)."})

    # --- a teacher with another tokenizer ---
    cross_tokenizer_exact: float = field(
        default=1.0,
        metadata={
            "help": "A teacher with another tokenizer: weight of the exact part (logit_loss over the tokens both "
            "vocabularies share, plus one bucket for the rest)."
        },
    )
    cross_tokenizer_uld: float = field(
        default=0.0,
        metadata={"help": "A teacher with another tokenizer: weight of ULD (L1 between the sorted probabilities)."},
    )
    cross_tokenizer_chain: float = field(
        default=0.0,
        metadata={
            "help": "A teacher with another tokenizer: weight of the chain-rule part (the teacher's probability of a "
            "student token's text, merged over its own tokens)."
        },
    )
    uld_top_k: int = field(default=1024, metadata={"help": "The sorted probabilities ULD compares (>= 1)."})

    # --- jobs ---
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Jobs: replace a run already in output_dir (its teacher/, student_no_kd/, checkpoints, weights, "
            "results.json and report.png are deleted first); without it such an output_dir is refused."
        },
    )

    def __post_init__(self):
        self._validate_distillation()
        super().__post_init__()

    def _validate_distillation(self):
        self._validate_numbers()
        alphas = {k: getattr(self, k) for k in ("alpha_task", "alpha_logits", "alpha_hidden", "alpha_attention")}
        if not any(alphas.values()):
            raise ValueError("alpha_task, alpha_logits, alpha_hidden and alpha_attention are all 0: nothing to train.")
        if self.intermediate_schedule not in INTERMEDIATE_SCHEDULES:
            raise ValueError(
                f"intermediate_schedule={self.intermediate_schedule!r} is unknown; choose one of "
                f"{list(INTERMEDIATE_SCHEDULES)}."
            )
        for kind, name in (("logits", "logit_loss"), ("hidden", "hidden_loss"), ("attention", "attention_loss")):
            if getattr(self, name) not in available_losses(kind):
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; choose one of {available_losses(kind)}.")
        if not isinstance(self.layer_map, str):  # a list of pairs from Python or YAML
            self.layer_map = ",".join(f"{s}:{t}" for s, t in parse_layer_pairs(self.layer_map))
        if self.attention_layer_map is not None and not isinstance(self.attention_layer_map, str):
            self.attention_layer_map = ",".join(f"{s}:{t}" for s, t in parse_layer_pairs(self.attention_layer_map))
        for spec in (self.layer_map, self.attention_layer_map):
            if spec is not None and spec not in ("uniform", "last", "init"):
                parse_layer_pairs(spec)
        if self.projection not in ("linear", "none"):
            raise ValueError(f"projection must be 'linear' or 'none', got {self.projection!r}.")
        if self.attention_head_reduction not in ("none", "mean"):
            raise ValueError(
                f"attention_head_reduction must be 'none' or 'mean', got {self.attention_head_reduction!r}."
            )
        if self.teacher_dtype is not None and self.teacher_dtype not in _TEACHER_DTYPES:
            raise ValueError(
                f"teacher_dtype={self.teacher_dtype!r} is unknown; choose one of {list(_TEACHER_DTYPES)}."
            )
        _ = self.cross_tokenizer_mix  # building the mix checks its weights
        if self.uld_top_k < 1:
            raise ValueError(f"uld_top_k must be >= 1 (the sorted probabilities ULD compares), got {self.uld_top_k}.")
        self.teacher_columns = parse_column_map(self.teacher_columns, "teacher_columns")
        self.student_columns = parse_column_map(self.student_columns, "student_columns")
        if self.teacher_length_groups is not None and self.teacher_length_groups < 1:
            raise ValueError(
                f"teacher_length_groups must be >= 1 (1: the teacher runs on the whole padded batch), got "
                f"{self.teacher_length_groups}."
            )
        if self.distill_mode not in DISTILL_MODES:
            raise ValueError(f"distill_mode must be one of {', '.join(DISTILL_MODES)}, got {self.distill_mode!r}.")
        if self.save_ema and self.distill_mode != "ema":
            raise ValueError(
                f"save_ema saves the student's moving average, which only distill_mode ema keeps (distill_mode is "
                f"{self.distill_mode!r}): set distill_mode ema, or drop save_ema."
            )
        if self.teacher_dtype is not None and self.distill_mode in _OWN_DTYPE_TEACHERS:
            raise ValueError(
                f"teacher_dtype {self.teacher_dtype} with distill_mode {self.distill_mode}: "
                f"{_OWN_DTYPE_TEACHERS[self.distill_mode]}, so teacher_dtype would be ignored; drop teacher_dtype."
            )
        if self.generations < 1:
            raise ValueError(f"generations must be >= 1, got {self.generations}.")
        if (self.generations > 1 or self.ensemble_generations) and self.distill_mode not in GENERATION_MODES:
            flag = f"generations {self.generations}" if self.generations > 1 else "ensemble_generations"
            raise ValueError(
                f"{flag} chains generations of students, but distill_mode is {self.distill_mode!r}: set distill_mode "
                "born_again or noisy_student, or drop it."
            )
        if self.distill_mode in GENERATION_MODES and self.resume_from_checkpoint:
            raise ValueError(
                f"resume_from_checkpoint {self.resume_from_checkpoint}: a {self.distill_mode} run does not resume "
                "(each generation is saved in output_dir/generation_<g> when it ends): start it afresh."
            )
        if self.ensemble_generations and self.generations < 2:
            raise ValueError(
                "ensemble_generations needs generations >= 2 (the last generation learns from the earlier ones), got "
                f"generations {self.generations}."
            )
        if self.max_steps > 0 and self.kd_delay_steps >= self.max_steps:
            raise ValueError(
                f"kd_delay_steps {self.kd_delay_steps} >= max_steps {self.max_steps}: the student would never learn "
                "from a teacher; set kd_delay_steps below max_steps, or 0."
            )
        if self.kd_delay_steps < 0:
            raise ValueError(f"kd_delay_steps must be >= 0 (0: KD from the first step), got {self.kd_delay_steps}.")
        if self.kd_delay_steps > 0 and self.alpha_task == 0:
            raise ValueError(
                f"kd_delay_steps {self.kd_delay_steps} with alpha_task {self.alpha_task}: before step "
                f"{self.kd_delay_steps} the student learns from its labels alone, so it would have no loss; set "
                "alpha_task > 0 (e.g. 0.5), or kd_delay_steps 0."
            )
        if self.ema_warmup_steps < 0:
            raise ValueError(f"ema_warmup_steps must be >= 0 (0: no warm-up), got {self.ema_warmup_steps}.")
        if self.relation_heads is not None and self.relation_heads < 1:
            raise ValueError(f"relation_heads must be >= 1, got {self.relation_heads}.")
        if self.kd_chunk_size < 0:
            raise ValueError(f"kd_chunk_size must be >= 0 (0: full logits), got {self.kd_chunk_size}.")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"lmbda must lie in [0, 1] (the fraction of on-policy batches), got {self.lmbda}.")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}.")
        if not 0.0 < self.generation_top_p <= 1.0:
            raise ValueError(f"generation_top_p must lie in (0, 1], got {self.generation_top_p}.")

    def _validate_numbers(self):
        """Values that cannot train (nan, inf, out of range) are refused before anything is built."""
        check_number("temperature", self.temperature, "> 0", lambda v: v > 0)
        for name in ("alpha_task", "alpha_logits", "alpha_hidden", "alpha_attention"):
            check_number(name, getattr(self, name), ">= 0", lambda v: v >= 0)
        check_number("jsd_beta", self.jsd_beta, "strictly between 0 and 1", lambda v: 0 < v < 1)
        for name in ("learning_rate", "adapter_learning_rate"):
            check_number(name, getattr(self, name), "> 0", lambda v: v > 0)
        for name in ("adam_beta1", "adam_beta2"):
            check_number(name, getattr(self, name), "in [0, 1)", lambda v: 0 <= v < 1)
        check_number("adam_epsilon", self.adam_epsilon, ">= 0", lambda v: v >= 0)
        check_number("weight_decay", self.weight_decay, "")
        check_number("label_smoothing_factor", self.label_smoothing_factor, "in [0, 1]", lambda v: 0 <= v <= 1)
        check_number("generation_temperature", self.generation_temperature, "> 0", lambda v: v > 0)
        check_number("ema_decay", self.ema_decay, "in [0, 1)", lambda v: 0 <= v < 1)
        if self.teacher_weights is not None:
            for i, weight in enumerate(self.teacher_weights):
                check_number(f"teacher_weights[{i}]", weight, ">= 0", lambda v: v >= 0)
            if not sum(self.teacher_weights) > 0:
                raise ValueError(f"teacher_weights must have a positive sum, got {self.teacher_weights}.")

    def live_teacher_needs(self, cached: bool = False) -> list[str]:
        """The settings that need the teacher model itself, given soft targets from a top-k cache (``cached``) or
        not, e.g. ``["alpha_hidden > 0"]``: hidden-state and attention KD, generated completions (which carry no
        cache) and uncached logit KD do. Empty when soft targets alone, from the cache, will do."""
        needs = [f"{name} > 0" for name in ("alpha_hidden", "alpha_attention") if getattr(self, name) > 0]
        if self.seq_kd:
            needs.append("seq_kd")
        if self.alpha_logits > 0 and not cached:
            needs.append("alpha_logits > 0 without a top-k cache")
        elif self.alpha_logits > 0 and self.lmbda > 0:
            needs.append("lmbda > 0 (generated completions have no cache)")
        return needs

    @property
    def cross_tokenizer_mix(self) -> CrossTokenizerMix:
        """The weights of the parts of a cross-tokenizer teacher's logit term, checked."""
        return CrossTokenizerMix(self.cross_tokenizer_exact, self.cross_tokenizer_uld, self.cross_tokenizer_chain)

    # --- serialisation helpers ---

    @classmethod
    def distillation_field_names(cls) -> list[str]:
        """Names of the fields this class adds to ``TrainingArguments``."""
        base = {f.name for f in dataclasses.fields(TrainingArguments)}
        return [f.name for f in dataclasses.fields(cls) if f.name not in base]

    def distillation_dict(self) -> dict:
        """The distillation fields and their values (what ``distillation_config.json`` records)."""
        return {name: getattr(self, name) for name in self.distillation_field_names()}

    @classmethod
    def from_yaml(cls, path: str, **overrides) -> DistillationConfig:
        """Load a YAML file of fields (any ``TrainingArguments`` field too); keyword arguments override it."""
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        values.update(overrides)
        (config,) = HfArgumentParser(cls).parse_dict(values)
        return config

    def to_yaml(self, path: str, all_fields: bool = False) -> None:
        """Write the fields that differ from a default config (or all of them) as YAML; tokens are masked."""
        values = self.to_dict()
        if not all_fields:
            defaults = type(self)(output_dir=self.output_dir).to_dict()
            values = {k: v for k, v in values.items() if k == "output_dir" or v != defaults.get(k)}
        init_fields = {f.name for f in dataclasses.fields(self) if f.init}
        with open(path, "w") as f:
            yaml.safe_dump({k: v for k, v in values.items() if k in init_fields}, f, sort_keys=True)
