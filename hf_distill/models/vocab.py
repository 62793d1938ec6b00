"""Vocabulary checks for token-level KD: do student and teacher score the same tokens in the same logit rows?

Comparing ``vocab_size`` is not enough: two tokenizers of the same size can map ids to different tokens (the
logits then line up by id but mean different things), and two models with one tokenizer can have a different
number of output rows (Qwen2.5-0.5B pads its embeddings to 151,936 rows, Qwen2.5-7B to 152,064).
"""

from __future__ import annotations

import logging
import os

from torch import nn

from .facts import unwrap

logger = logging.getLogger(__name__)


def output_rows(model: nn.Module) -> int:
    """Rows of the output embedding, i.e. the logits' last dimension ``V`` in ``(B, T, V)``.

    Falls back to ``config.vocab_size`` for models without an output embedding. PEFT and DDP wrappers are looked
    through.
    """
    model = unwrap(model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(head, "weight", None) if head is not None else None
    if weight is not None:
        return int(weight.shape[0])
    return int(model.config.vocab_size)


def _model_name(model: nn.Module) -> str:
    config = getattr(unwrap(model), "config", None)
    return getattr(config, "name_or_path", None) or type(unwrap(model)).__name__


def _tokenizer_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__


def _id_to_token(tokenizer) -> dict[int, str]:
    """``get_vocab()`` (added tokens included) inverted to id -> token."""
    return {int(i): t for t, i in tokenizer.get_vocab().items()}


def _show(token: str | None) -> str:
    return "no token" if token is None else repr(token)


def first_vocab_difference(student_tokenizer, teacher_tokenizer) -> tuple[int, str | None, str | None] | None:
    """The first id the two tokenizers disagree on, or ``None`` when their vocabularies are identical.

    Returns:
        ``(id, student_token, teacher_token)`` for the smallest differing id; a token is ``None`` where that
        tokenizer has no token with this id.
    """
    s_vocab, t_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    if s_vocab == t_vocab:
        return None
    s_map, t_map = _id_to_token(student_tokenizer), _id_to_token(teacher_tokenizer)
    for i in sorted(s_map.keys() | t_map.keys()):
        if s_map.get(i) != t_map.get(i):
            return i, s_map.get(i), t_map.get(i)
    return None  # same id -> token pairs, e.g. one token listed under two spellings in one map


def check_tokenizers(student_tokenizer, teacher_tokenizer, student_name="student", teacher_name="teacher") -> None:
    """Refuse two tokenizers that map some id to different tokens: token-level logit KD would compare unrelated
    rows. ``student_name``/``teacher_name`` say which models they belong to in the message."""
    diff = first_vocab_difference(student_tokenizer, teacher_tokenizer)
    if diff is None:
        return
    index, s_tok, t_tok = diff
    raise ValueError(
        f"The {student_name} tokenizer ({_tokenizer_name(student_tokenizer)!r}, {len(student_tokenizer)} tokens) and "
        f"the {teacher_name} tokenizer ({_tokenizer_name(teacher_tokenizer)!r}, {len(teacher_tokenizer)} tokens) "
        f"differ, first at id {index}: {student_name} {_show(s_tok)}, {teacher_name} {_show(t_tok)}. Token-level logit "
        f"KD needs one tokenizer: use a {student_name} with the {teacher_name}'s tokenizer (e.g. build_student), "
        "or set alpha_logits=0."
    )


def shared_vocab_rows(student: nn.Module, teacher: nn.Module, student_tokenizer=None, teacher_tokenizer=None) -> int:
    """The number ``V`` of leading logit rows that logit KD should compare between student and teacher.

    Equal output rows give that number (after :func:`check_tokenizers` when both tokenizers are given). Different
    row counts are accepted only for one tokenizer with padded embeddings (Qwen2.5-0.5B vs -7B): both tokenizers
    must be given and identical, and fit in the smaller model; the padded rows beyond it are then ignored. KD
    compares ``student_logits[..., :V]`` with ``teacher_logits[..., :V]``, both ``(B, T, V)``.
    """
    s_rows, t_rows = output_rows(student), output_rows(teacher)
    if student_tokenizer is not None and teacher_tokenizer is not None:
        check_tokenizers(student_tokenizer, teacher_tokenizer)
    elif s_rows != t_rows:
        missing = " and ".join(
            role for role, tok in (("student", student_tokenizer), ("teacher", teacher_tokenizer)) if tok is None
        )
        raise ValueError(
            f"The student ({_model_name(student)}) has {s_rows} output rows and the teacher ({_model_name(teacher)}) "
            f"{t_rows}. This is fine for one tokenizer with padded embeddings, but the {missing} tokenizer was not "
            "given: pass both tokenizers (the trainer's processing_class and the teacher's tokenizer) so hf_distill "
            "can check they are the same, or set alpha_logits=0."
        )
    rows = min(s_rows, t_rows)
    for role, tokenizer in (("student", student_tokenizer), ("teacher", teacher_tokenizer)):
        if tokenizer is not None and len(tokenizer) > rows:
            raise ValueError(
                f"The {role} tokenizer ({_tokenizer_name(tokenizer)!r}) has {len(tokenizer)} tokens but the student "
                f"has {s_rows} output rows and the teacher {t_rows}: a model cannot emit every token. Resize the "
                "model's embeddings (model.resize_token_embeddings(len(tokenizer))) or use the matching tokenizer."
            )
    if s_rows != t_rows:
        logger.info(
            "Student has %d output rows, teacher %d, with one tokenizer of %d tokens: logit KD compares the first %d "
            "rows and ignores the padded rows beyond them.",
            s_rows,
            t_rows,
            len(student_tokenizer),
            rows,
        )
    return rows


def load_tokenizer_for(model_or_name):
    """The tokenizer saved beside a model (``config.name_or_path``) or in a folder, else ``None``.

    Only local folders are read, so this never reaches the network; a Hub id or a folder without tokenizer files
    gives ``None``.
    """
    from transformers import AutoTokenizer

    if isinstance(model_or_name, str | os.PathLike):
        path = os.fspath(model_or_name)
    else:
        config = getattr(unwrap(model_or_name), "config", None)
        path = getattr(config, "name_or_path", None) or ""
    if not path or not os.path.isdir(path):
        return None
    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:  # a checkpoint folder saved without its tokenizer
        logger.debug("No tokenizer could be loaded from %s: %s", path, err)
        return None
