"""GLUE task facts, TSV readers (real files where present, tiny files in the GLUE formats otherwise), tokenization."""

from __future__ import annotations

import functools
import logging
from collections import Counter
from pathlib import Path

import datasets
import pytest
from conftest import SHARED_DIR
from transformers import BertTokenizerFast

from hf_distill.tasks import GLUE_TASKS, features_for, get_task, load_glue, tokenize_glue
from hf_distill.tasks import glue as glue_module

GLUE_DIR = SHARED_DIR / "data" / "glue"
requires_real_glue = pytest.mark.usefixtures("shared_dir")  # fails, never skips, without ../shared


@functools.cache
def real(task: str) -> datasets.DatasetDict:
    return load_glue(task, data_dir=str(GLUE_DIR / get_task(task).dir_name))


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(row) for row in rows) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- task facts


def test_get_task_accepts_glue_folder_names_and_any_case():
    assert get_task("sst2") is get_task("SST-2") is get_task("sst-2") is GLUE_TASKS["sst2"]
    assert get_task("STS-B").name == get_task("stsb").name == "stsb"
    assert get_task("MNLI") is get_task(GLUE_TASKS["mnli"]) is GLUE_TASKS["mnli"]
    assert get_task("CoLA").dir_name == "CoLA"


@pytest.mark.parametrize("name", ["sst3", "", "glue", None])
def test_get_task_unknown_lists_valid_names(name):
    with pytest.raises(ValueError, match="Unknown GLUE task") as err:
        get_task(name)
    assert all(valid in str(err.value) for valid in GLUE_TASKS)


def test_task_facts():
    assert sorted(GLUE_TASKS) == sorted(["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"])
    mnli = GLUE_TASKS["mnli"]
    assert (mnli.num_labels, mnli.is_regression, mnli.text_keys) == (3, False, ("premise", "hypothesis"))
    assert mnli.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}
    assert mnli.label2id == {"entailment": 0, "neutral": 1, "contradiction": 2}
    assert mnli.eval_splits == ("validation_matched", "validation_mismatched")
    stsb = GLUE_TASKS["stsb"]
    assert (stsb.num_labels, stsb.is_regression, stsb.label_names, stsb.metric) == (1, True, None, "pearson")
    assert stsb.id2label == {0: "LABEL_0"} and stsb.label2id == {"LABEL_0": 0}
    metrics = {name: task.metric for name, task in GLUE_TASKS.items()}
    assert metrics == {
        "cola": "matthews_correlation",
        "sst2": "accuracy",
        "mrpc": "f1",
        "stsb": "pearson",
        "qqp": "f1",
        "mnli": "accuracy",
        "qnli": "accuracy",
        "rte": "accuracy",
        "wnli": "accuracy",
    }
    assert GLUE_TASKS["wnli"].label_names == ("not_entailment", "entailment")
    assert GLUE_TASKS["qnli"].text_keys == ("question", "sentence")


# ---------------------------------------------------------------- real files


@requires_real_glue
@pytest.mark.parametrize(
    "task, n_train, n_dev", [("sst2", 67_349, 872), ("cola", 8_551, 1_043), ("stsb", 5_749, 1_500)]
)
def test_real_row_counts_and_columns(task, n_train, n_dev):
    data = real(task)
    assert list(data) == ["train", "validation"]
    assert (data["train"].num_rows, data["validation"].num_rows) == (n_train, n_dev)
    for split in data.values():
        assert split.column_names == [*get_task(task).text_keys, "label", "idx"]
        assert split.features == features_for(task)
        assert split["idx"] == list(range(split.num_rows))


@requires_real_glue
@pytest.mark.parametrize(
    "task, names, train_counts, dev_counts",
    [
        ("sst2", ["negative", "positive"], {1: 37_569, 0: 29_780}, {1: 444, 0: 428}),
        ("cola", ["unacceptable", "acceptable"], {1: 6_023, 0: 2_528}, {1: 721, 0: 322}),
    ],
)
def test_real_label_counts(task, names, train_counts, dev_counts):
    data = real(task)
    assert data["train"].features["label"].names == names
    assert Counter(data["train"]["label"]) == train_counts
    assert Counter(data["validation"]["label"]) == dev_counts


@requires_real_glue
def test_real_first_rows_are_read_verbatim():
    # SST-2 keeps its trailing space; CoLA has no header, so its first line is an example.
    assert real("sst2")["train"][0] == {
        "sentence": "hide new secretions from the parental units ",
        "label": 0,
        "idx": 0,
    }
    assert (
        real("cola")["train"][0]["sentence"]
        == "Our friends won't buy this analysis, let alone the next one we propose."
    )
    assert real("stsb")["train"][0] == {
        "sentence1": "A plane is taking off.",
        "sentence2": "An air plane is taking off.",
        "label": 5.0,
        "idx": 0,
    }


@requires_real_glue
def test_real_stsb_scores_are_floats_in_range():
    for split in real("stsb").values():
        assert split.features["label"] == datasets.Value("float32")
        scores = split["label"]
        assert all(isinstance(s, float) and 0.0 <= s <= 5.0 for s in scores)
        assert len(set(scores)) > 50  # real-valued, not collapsed to classes


@requires_real_glue
def test_real_bare_quotes_survive():
    # This copy of SST-2 holds no '"' (see test_sst2_bare_quotes_survive for that case); CoLA and STS-B do.
    cola = real("cola")["train"]["sentence"]
    assert 'Susan whispered "Shut up".' in cola and 'Susan whispered "Shut up" at them.' in cola
    row = real("stsb")["validation"][698]  # a field that *starts* with a quote: the case QUOTE_MINIMAL mangles
    assert row["sentence2"] == '"I had mainly been" is fine, in the context you\'re using it.'
    assert row["label"] == pytest.approx(0.6)


@requires_real_glue
def test_data_dir_may_be_the_glue_root():
    from_root = load_glue("CoLA", data_dir=GLUE_DIR)
    assert from_root["validation"]["sentence"] == real("cola")["validation"]["sentence"]


# ---------------------------------------------------------------- tiny files in the GLUE formats


def test_sst2_bare_quotes_survive(tmp_path):
    write_tsv(
        tmp_path / "train.tsv",
        [["sentence", "label"], ['" a lovely film ', "1"], ['the " best " part ', "1"], ["dull ", "0"]],
    )
    write_tsv(tmp_path / "dev.tsv", [["sentence", "label"], ['it is " fine ', "0"]])
    data = load_glue("sst2", data_dir=tmp_path)
    assert data["train"]["sentence"] == ['" a lovely film ', 'the " best " part ', "dull "]
    assert data["train"]["label"] == [1, 1, 0]
    assert data["validation"][0] == {"sentence": 'it is " fine ', "label": 0, "idx": 0}


def test_mrpc_header_with_byte_order_mark(tmp_path):
    header = ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"]
    write_tsv(
        tmp_path / "train.tsv",
        [
            header,
            ["1", "702876", "702977", 'He called " the witness " a liar .', 'He named " the witness " a liar .'],
            ["0", "2108705", "2108831", "Yucaipa owned Dominick 's .", "Yucaipa sold it in 1998 ."],
        ],
    )
    write_tsv(tmp_path / "dev.tsv", [header, ["1", "1", "2", "a b", "b a"]])
    data = load_glue("MRPC", data_dir=tmp_path)
    assert data["train"].column_names == ["sentence1", "sentence2", "label", "idx"]
    assert data["train"]["sentence1"][0] == 'He called " the witness " a liar .'
    assert data["train"]["sentence2"][1] == "Yucaipa sold it in 1998 ."
    assert data["train"]["label"] == [1, 0]  # 1 = equivalent
    assert data["train"].features["label"].names == ["not_equivalent", "equivalent"]


def test_qqp_malformed_rows_are_skipped_and_counted(tmp_path, caplog):
    header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsv(
        tmp_path / "train.tsv",
        [
            header,
            ["133273", "213221", "213222", "How is the life of a math student?", "Which level is enough?", "0"],
            ["360472", "364011", "490273", "What causes stool color to change?"],  # broken across two lines
            ["", "What can cause it?", "0"],
            ["402555", "536040", "536041", "How do I control emotions?", "How do you control emotions?", "1"],
            ["1", "2", "3", "a label that is not 0/1", "b", "maybe"],
        ],
    )
    write_tsv(tmp_path / "dev.tsv", [header, ["7", "8", "9", "q1", "", "1"]])
    logger = logging.getLogger(glue_module.__name__)
    logger.addHandler(caplog.handler)
    try:
        data = load_glue("qqp", data_dir=tmp_path)
    finally:
        logger.removeHandler(caplog.handler)
    assert data["train"]["question1"] == ["How is the life of a math student?", "How do I control emotions?"]
    assert data["train"]["label"] == [0, 1]
    assert data["train"]["idx"] == [0, 1]
    assert data["validation"][0] == {"question1": "q1", "question2": "", "label": 1, "idx": 0}  # empty text is valid
    assert "Skipped 3 malformed row(s) of 5" in caplog.text


def _mnli_row(i: int, premise: str, hypothesis: str, gold: str, n_annotator_labels: int) -> list[str]:
    parses = ["( p )", "( h )", "(ROOT p)", "(ROOT h)"]
    return [str(i), f"{i}1", f"{i}1e", "fiction", *parses, premise, hypothesis, *[gold] * n_annotator_labels, gold]


def write_mnli(folder: Path, with_mismatched: bool = True) -> None:
    base = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse"]
    base += ["sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
    train_header = [*base, "label1", "gold_label"]  # 12 columns
    dev_header = [*base, "label1", "label2", "label3", "label4", "label5", "gold_label"]  # 16 columns
    write_tsv(
        folder / "train.tsv",
        [
            train_header,
            _mnli_row(0, "A man eats.", "Someone eats.", "entailment", 1),
            _mnli_row(1, "A man eats.", "A man sleeps.", "contradiction", 1),
            _mnli_row(2, 'He said "hi".', "He is tall.", "neutral", 1),
        ],
    )
    write_tsv(folder / "dev_matched.tsv", [dev_header, _mnli_row(0, "P m.", "H m.", "neutral", 5)])
    if with_mismatched:
        write_tsv(
            folder / "dev_mismatched.tsv",
            [
                dev_header,
                _mnli_row(0, "P mm.", "H mm.", "contradiction", 5),
                _mnli_row(1, "P2 mm.", "H2 mm.", "entailment", 5),
            ],
        )


def test_mnli_two_dev_files_and_string_labels(tmp_path):
    write_mnli(tmp_path)
    data = load_glue("mnli", data_dir=tmp_path)
    assert list(data) == ["train", "validation_matched", "validation_mismatched"]
    train = data["train"]
    assert train.column_names == ["premise", "hypothesis", "label", "idx"]
    assert train["premise"] == ["A man eats.", "A man eats.", 'He said "hi".']
    assert train["hypothesis"] == ["Someone eats.", "A man sleeps.", "He is tall."]
    assert train["label"] == [0, 2, 1]  # Hub order: entailment, neutral, contradiction
    assert data["validation_matched"][0] == {"premise": "P m.", "hypothesis": "H m.", "label": 1, "idx": 0}
    assert data["validation_mismatched"]["label"] == [2, 0]
    assert data["validation_mismatched"]["premise"] == ["P mm.", "P2 mm."]


@pytest.mark.parametrize(
    "task, header, file_labels, expected",
    [
        ("qnli", ["index", "question", "sentence", "label"], ["entailment", "not_entailment"], [0, 1]),
        ("rte", ["index", "sentence1", "sentence2", "label"], ["not_entailment", "entailment"], [1, 0]),
        ("wnli", ["index", "sentence1", "sentence2", "label"], ["1", "0"], [1, 0]),  # 1 = entailment on the Hub too
    ],
)
def test_two_sentence_tasks_map_labels_to_hub_order(tmp_path, task, header, file_labels, expected):
    rows = [[str(i), f"first {i}", f"second {i}", label] for i, label in enumerate(file_labels)]
    write_tsv(tmp_path / "train.tsv", [header, *rows])
    write_tsv(tmp_path / "dev.tsv", [header, rows[0]])
    data = load_glue(task, data_dir=tmp_path)
    keys = GLUE_TASKS[task].text_keys
    assert data["train"].column_names == [*keys, "label", "idx"]
    assert data["train"][keys[0]] == ["first 0", "first 1"] and data["train"][keys[1]] == ["second 0", "second 1"]
    assert data["train"]["label"] == expected
    names = data["train"].features["label"].names
    assert [names[i] for i in expected] == [{"1": "entailment", "0": "not_entailment"}.get(x, x) for x in file_labels]


# ---------------------------------------------------------------- errors and the Hub path


def test_missing_file_names_the_path_and_what_the_folder_must_hold(tmp_path):
    write_mnli(tmp_path, with_mismatched=False)
    with pytest.raises(ValueError, match="dev_mismatched.tsv") as err:
        load_glue("mnli", data_dir=tmp_path)
    message = str(err.value)
    assert str(tmp_path / "dev_mismatched.tsv") in message
    assert "train.tsv and dev_matched.tsv and dev_mismatched.tsv" in message
    with pytest.raises(ValueError, match=r"train\.tsv and dev\.tsv"):
        load_glue("sst2", data_dir=tmp_path / "nowhere")


def test_another_tasks_files_are_rejected(tmp_path):
    write_tsv(tmp_path / "train.tsv", [["sentence", "label"], ["fine ", "1"]])  # SST-2 format
    write_tsv(tmp_path / "dev.tsv", [["sentence", "label"], ["fine ", "1"]])
    with pytest.raises(ValueError, match="Unexpected header.*RTE"):
        load_glue("rte", data_dir=tmp_path)
    with pytest.raises(ValueError, match="No usable rows.*CoLA"):
        load_glue("cola", data_dir=tmp_path)  # CoLA has no header: two fields per row is malformed


@pytest.mark.parametrize(
    "task, kept", [("mnli", ["train", "validation_matched", "validation_mismatched"]), ("sst2", None)]
)
def test_hub_path_keeps_train_and_eval_splits(monkeypatch, task, kept):
    kept = kept or ["train", "validation"]
    calls = []

    def fake_load_dataset(path, name, cache_dir=None):
        calls.append((path, name, cache_dir))
        splits = kept + (["test_matched", "test_mismatched"] if name == "mnli" else ["test"])
        return datasets.DatasetDict({s: datasets.Dataset.from_dict({"label": [0]}) for s in splits})

    monkeypatch.setattr(glue_module.datasets, "load_dataset", fake_load_dataset)
    data = load_glue(task.upper(), cache_dir="/tmp/cache")
    assert calls == [("nyu-mll/glue", task, "/tmp/cache")]
    assert list(data) == kept


# ---------------------------------------------------------------- tokenization


@pytest.fixture
def tokenizer_dir(tmp_path):
    words = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "first", "second", "0", "1", "."]
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    return tmp_path / "tok"


def test_tokenize_pairs_truncates_and_keeps_labels(tmp_path, tokenizer_dir):
    header = ["index", "sentence1", "sentence2", "label"]
    rows = [["0", "the cat sat on the mat", "a dog ran", "entailment"], ["1", "the cat", "a dog", "not_entailment"]]
    write_tsv(tmp_path / "rte" / "train.tsv", [header, *rows])
    write_tsv(tmp_path / "rte" / "dev.tsv", [header, rows[1]])
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir)
    data = tokenize_glue(load_glue("rte", data_dir=tmp_path / "rte"), tokenizer, "rte", max_length=8)
    assert list(data) == ["train", "validation"]
    train = data["train"]
    assert sorted(train.column_names) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert train["labels"] == [0, 1]
    assert len(train[0]["input_ids"]) == 8  # 6 + 3 words + 3 specials, truncated
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    short = train[1]  # [CLS] the cat [SEP] a dog [SEP]: unpadded, second segment typed 1
    assert short["input_ids"][:4] == [cls, *tokenizer.convert_tokens_to_ids(["the", "cat"]), sep]
    assert short["input_ids"][4:] == [*tokenizer.convert_tokens_to_ids(["a", "dog"]), sep]
    assert short["token_type_ids"] == [0, 0, 0, 0, 1, 1, 1]
    assert short["attention_mask"] == [1] * 7


def test_tokenize_without_token_type_ids_and_float_scores(tmp_path, tokenizer_dir):
    header = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]
    rows = [["0", "g", "f", "2012", "0", "none", "none", "the cat", "a cat", "4.250"]]
    write_tsv(tmp_path / "train.tsv", [[*header, "score"], *rows])
    write_tsv(tmp_path / "dev.tsv", [[*header, "score"], *rows])
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir, model_input_names=["input_ids", "attention_mask"])
    data = tokenize_glue(load_glue("STS-B", data_dir=tmp_path), tokenizer, "stsb")
    assert sorted(data["validation"].column_names) == ["attention_mask", "input_ids", "labels"]
    assert data["validation"].features["labels"] == datasets.Value("float32")
    assert data["validation"]["labels"] == [4.25]


def test_tokenize_rejects_wrong_columns_and_length(tokenizer_dir):
    tokenizer = BertTokenizerFast.from_pretrained(tokenizer_dir)
    data = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"sentence": ["the cat"], "label": [1]})})
    with pytest.raises(ValueError, match=r"lacks columns \['sentence1', 'sentence2'\]"):
        tokenize_glue(data, tokenizer, "rte")
    with pytest.raises(ValueError, match="max_length must be a positive int, got 0"):
        tokenize_glue(data, tokenizer, "sst2", max_length=0)
    single = tokenize_glue(data["train"], tokenizer, "sst2")
    assert single["labels"] == [1]
