"""Column maps: the teacher and the student read different columns of one example (hf_distill.teachers.columns)."""

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, classification_dataset, tiny_bert, trainer_config
from datasets import Dataset
from transformers import HfArgumentParser, default_data_collator

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.data import PadColumns
from hf_distill.teachers import ModelTeacher
from hf_distill.teachers.columns import claimed_columns, parse_column_map

CLEAN = {"input_ids": "teacher_input_ids", "attention_mask": "teacher_attention_mask"}


def paired_dataset(n=16, seq_len=10, teacher_len=None, seed=0) -> Dataset:
    """``input_ids`` (the student's, "noised") and ``teacher_input_ids`` (other ids, "clean"), both unpadded."""
    g = torch.Generator().manual_seed(seed)
    noised = torch.randint(5, VOCAB, (n, seq_len), generator=g)
    clean = torch.randint(5, VOCAB, (n, teacher_len or seq_len), generator=g)
    return Dataset.from_dict(
        {
            "input_ids": noised.tolist(),
            "attention_mask": torch.ones_like(noised).tolist(),
            "teacher_input_ids": clean.tolist(),
            "teacher_attention_mask": torch.ones_like(clean).tolist(),
            "labels": torch.randint(0, 2, (n,), generator=g).tolist(),
        }
    )


def recorded_kwargs(model) -> list[dict]:
    """The keyword arguments of each of ``model``'s forward calls, appended as they happen."""
    calls = []
    model.register_forward_pre_hook(lambda m, args, kwargs: calls.append(dict(kwargs)), with_kwargs=True)
    return calls


def test_a_column_map_is_a_dict_or_a_json_object_of_names():
    assert parse_column_map('{"input_ids": "teacher_input_ids"}', "x") == {"input_ids": "teacher_input_ids"}
    assert parse_column_map(CLEAN, "x") == CLEAN
    assert parse_column_map(None, "x") is None
    for bad in ("input_ids", "{}", {}, {"input_ids": ""}, {"input_ids": 3}, '{"input_ids": [1]}'):
        with pytest.raises(ValueError, match="x"):
            parse_column_map(bad, "x")
    with pytest.raises(ValueError, match="labels.*no model input"):
        parse_column_map({"input_ids": "labels"}, "teacher_columns")


def test_the_config_parses_column_maps_from_the_command_line(tmp_path):
    (args,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--teacher_columns", '{"input_ids": "teacher_input_ids"}']
    )
    assert args.teacher_columns == {"input_ids": "teacher_input_ids"} and args.student_columns is None
    with pytest.raises(ValueError, match="student_columns must be a non-empty map"):
        DistillationConfig(output_dir=str(tmp_path), student_columns="not json")


def test_a_column_only_teacher_maps_name_is_hidden_from_the_others():
    assert claimed_columns([CLEAN, None], None) == {"teacher_input_ids", "teacher_attention_mask"}
    both = {"input_ids": "student_input_ids", "attention_mask": "teacher_attention_mask"}
    assert claimed_columns([CLEAN], both) == {"teacher_input_ids"}


def kd_loss(teacher_logits, student_logits, temperature):
    """Forward KL(teacher || student) at ``temperature``, times T**2, averaged over rows: written from the
    definition."""
    p = F.softmax(teacher_logits / temperature, -1)
    log_q = F.log_softmax(student_logits / temperature, -1)
    return (p * (p.log() - log_q)).sum(-1).mean() * temperature**2


def test_the_teacher_reads_its_columns_and_the_student_the_rest(tmp_out):
    teacher, student = tiny_bert(seed=1), tiny_bert(num_layers=2, seed=2)
    data = paired_dataset()
    args = trainer_config(tmp_out, teacher_columns=CLEAN, alpha_task=0.0, alpha_logits=1.0, temperature=2.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    teacher_calls, student_calls = recorded_kwargs(teacher), recorded_kwargs(student)
    batch = default_data_collator([data[i] for i in range(8)])
    loss = trainer.compute_loss(trainer.model, batch)

    assert set(teacher_calls[0]) >= {"input_ids", "attention_mask"}
    assert torch.equal(teacher_calls[0]["input_ids"], batch["teacher_input_ids"])
    assert not any(k.startswith("teacher_") for k in student_calls[0])
    assert torch.equal(student_calls[0]["input_ids"], batch["input_ids"])
    with torch.no_grad():
        t = teacher(input_ids=batch["teacher_input_ids"], attention_mask=batch["teacher_attention_mask"]).logits
        noised_t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(loss, kd_loss(t, s, 2.0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, kd_loss(noised_t, s, 2.0))  # the teacher on the student's text: another loss


def test_the_student_reads_its_own_map_and_shares_a_column_named_in_both(tmp_out):
    teacher, student = tiny_bert(seed=1), tiny_bert(num_layers=2, seed=2)
    data = paired_dataset().rename_column("input_ids", "student_input_ids")
    data = data.rename_column("teacher_input_ids", "input_ids")  # the teacher reads input_ids, the student not
    args = trainer_config(
        tmp_out,
        teacher_columns={"input_ids": "input_ids", "attention_mask": "attention_mask"},
        student_columns={"input_ids": "student_input_ids", "attention_mask": "attention_mask"},
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data)
    teacher_calls, student_calls = recorded_kwargs(teacher), recorded_kwargs(student)
    batch = next(iter(trainer.get_train_dataloader()))  # remove_unused_columns (the default) keeps mapped columns
    assert {"student_input_ids", "input_ids", "attention_mask"} <= set(batch)
    trainer.compute_loss(trainer.model, batch)

    assert torch.equal(student_calls[0]["input_ids"], batch["student_input_ids"])
    assert torch.equal(teacher_calls[0]["input_ids"], batch["input_ids"])
    assert student_calls[0]["attention_mask"] is teacher_calls[0]["attention_mask"]  # named in both maps
    trainer.train()
    assert trainer.state.global_step == 3


def test_a_map_naming_a_missing_column_is_refused_before_training(tmp_out):
    data = classification_dataset(n=16)
    args = trainer_config(tmp_out, teacher_columns=CLEAN)
    with pytest.raises(ValueError, match="column 'teacher_input_ids', which the dataset lacks.*input_ids, "):
        DistillationTrainer(model=tiny_bert(num_layers=2), teacher_model=tiny_bert(), args=args, train_dataset=data)
    args = trainer_config(tmp_out, student_columns={"input_ids": "student_ids"})
    with pytest.raises(ValueError, match=r"student_columns \(eval data\) reads 'input_ids' from column 'student_ids'"):
        DistillationTrainer(
            model=tiny_bert(num_layers=2), teacher_model=tiny_bert(), args=args,
            train_dataset=classification_dataset(n=16).add_column("student_ids", [[1]] * 16),
            eval_dataset=classification_dataset(n=4),
        )  # fmt: skip


def test_a_teacher_object_keeps_its_own_map_over_the_config(tmp_out):
    teacher = ModelTeacher(tiny_bert(seed=1), columns={"input_ids": "teacher_input_ids"})
    args = trainer_config(tmp_out, teacher_columns=CLEAN)
    trainer = DistillationTrainer(
        model=tiny_bert(num_layers=2), teacher_model=teacher, args=args, train_dataset=paired_dataset()
    )
    assert trainer.teachers[0].columns == {"input_ids": "teacher_input_ids"}


def test_position_wise_terms_need_the_same_positions(tmp_out):
    """Hidden-state KD pairs positions: a teacher reading another length is refused in one line; the same length
    (a token-for-token rewrite, as the GLUE augmentation makes) trains."""
    args = trainer_config(tmp_out, teacher_columns=CLEAN, alpha_hidden=1.0, layer_map="uniform")
    data = paired_dataset(teacher_len=7)
    trainer = DistillationTrainer(
        model=tiny_bert(num_layers=2), teacher_model=tiny_bert(), args=args, train_dataset=data
    )
    with pytest.raises(ValueError, match=r"reads input_ids of shape \(8, 7\).*student input_ids of shape \(8, 10\)"):
        trainer.train()
    trainer = DistillationTrainer(
        model=tiny_bert(num_layers=2), teacher_model=tiny_bert(), args=args, train_dataset=paired_dataset()
    )
    trainer.train()
    assert trainer.state.global_step == 3
    logs = [h for h in trainer.state.log_history if "loss/hidden" in h]
    assert logs and all(h["loss/hidden"] > 0 for h in logs)


def test_pad_columns_pads_the_mapped_columns_and_hands_on_the_rest():
    rows = [
        {"input_ids": [1, 2, 3], "teacher_input_ids": [4, 5], "labels": 1},
        {"input_ids": [1], "teacher_input_ids": [6, 7, 8, 9], "labels": 0},
    ]

    def collator(features):  # a stand-in for DataCollatorWithPadding: it sees no teacher column
        assert all(set(f) == {"input_ids", "labels"} for f in features)
        width = max(len(f["input_ids"]) for f in features)
        ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor([f["labels"] for f in features])}

    batch = PadColumns(collator, {"teacher_input_ids": 0})(rows)
    assert batch["teacher_input_ids"].tolist() == [[4, 5, 0, 0], [6, 7, 8, 9]]
    assert batch["input_ids"].tolist() == [[1, 2, 3], [1, 0, 0]]


def test_the_noisy_students_clean_copy_is_padded_on_the_tokenizers_side():
    """The teacher's copy of the token columns is collated as the student's columns are, left padding included: the
    hidden-state and relation terms pair their positions one to one."""
    from conftest import word_tokenizer
    from transformers import DataCollatorWithPadding

    from hf_distill.recipes.glue import clean_teacher_inputs

    for side in ("right", "left"):
        tokenizer = word_tokenizer(["the", "cat", "sat"])
        tokenizer.padding_side = side
        data = Dataset.from_dict({**tokenizer(["the cat sat", "cat"]), "labels": [0, 1]})
        data, columns, collator = clean_teacher_inputs({"train": data}, tokenizer, DataCollatorWithPadding(tokenizer))
        batch = collator([data["train"][i] for i in range(2)])
        assert set(columns) == {"input_ids", "attention_mask", "token_type_ids"}
        for column in columns:
            assert torch.equal(batch[f"teacher_{column}"], batch[column]), (side, column)
