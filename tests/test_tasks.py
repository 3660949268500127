"""The nine tasks read from their official files, with the official quirks and clear errors."""

import json

import pandas as pd
import pytest
from conftest import BPE_VOCAB, bpe_tokenizer_folder

from sat_ehft.tasks import TASKS, DataError, Encoding, encode_examples, get_task

OFFICIAL_SIZES = {"rte": (2490, 277), "cb": (250, 56), "copa": (400, 100), "wic": (5428, 638),
                  "mrpc": (3668, 408), "cola": (8551, 1043), "sts-b": (5749, 1500)}


def official_labels(task, path):
    """Gold labels read independently of our readers (pandas / json)."""
    if path.suffix == ".jsonl":
        raw = [json.loads(line)["label"] for line in path.read_text().splitlines()]
        return [task.labels.index(r if isinstance(r, str) else json.dumps(r)) for r in raw]
    header = None if task.name == "cola" else 0
    frame = pd.read_csv(path, sep="\t", quoting=3, header=header, encoding="utf-8-sig", keep_default_na=False)
    column = {"cola": 1, "mrpc": "Quality", "sts-b": "score"}[task.name]
    values = frame[column].tolist()
    return [float(v) for v in values] if task.is_regression else [task.labels.index(str(v)) for v in values]


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_official_files_read_completely(shared_data, name):
    task = get_task(name)
    for split, size in zip(("train", "dev"), OFFICIAL_SIZES[name]):
        examples = task.read(shared_data, split)
        assert len(examples) == size
        assert [e.label for e in examples] == official_labels(task, task.file(shared_data, split))


def test_registry_has_the_nine_tasks():
    assert sorted(TASKS) == ["boolq", "cb", "cola", "copa", "mrpc", "qnli", "rte", "sts-b", "wic"]
    assert get_task("STS-B") is get_task("stsb") is TASKS["sts-b"]
    with pytest.raises(KeyError, match="unknown task 'mnli'; known tasks: boolq, cb, cola"):
        get_task("mnli")


def test_quirks(shared_data):
    mrpc = get_task("mrpc").read(shared_data, "train")[0]
    assert mrpc.fields["sentence1"].startswith("Amrozi accused") and mrpc.label == 1  # BOM header parsed
    cola = get_task("cola").read(shared_data, "dev")  # no header, no final newline
    assert cola[-1].fields["sentence"].endswith("about himself.")
    stsb = get_task("sts-b").read(shared_data, "train")[1]
    assert stsb.label == 3.8 and isinstance(stsb.label, float)


def write_lines(path, lines, bom=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def glue_like(tmp_path):
    """BoolQ and QNLI in their official formats (jsonl with bool labels; tsv with text labels)."""
    boolq = [{"question": "is the sky blue", "passage": "The sky is blue on a clear day. " * 30,
              "idx": 0, "label": True},
             {"question": "do fish fly", "passage": "Most fish swim in water.", "idx": 1, "label": False}]
    for split in ("train", "val"):
        write_lines(tmp_path / "superglue/BoolQ" / f"{split}.jsonl", [json.dumps(r) for r in boolq])
    qnli = ["index\tquestion\tsentence\tlabel",
            "0\tWhat colour is the sky?\tThe sky is blue.\tentailment",
            "1\tWhere do fish live?\tBirds fly south.\tnot_entailment",
            "2\tWho wrote it?\tIt was written by \"Anon\".\tnot_entailment"]
    for split in ("train", "dev"):
        write_lines(tmp_path / "glue/QNLI" / f"{split}.tsv", qnli)
    return tmp_path


def test_boolq_truncates_only_the_passage(glue_like, minilm_tokenizer):
    task = get_task("boolq")
    examples = task.read(glue_like, "train")
    assert [e.label for e in examples] == [1, 0]
    feature = encode_examples(task, examples, minilm_tokenizer, Encoding(32))[0]
    tokens = minilm_tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert len(tokens) == 32 and tokens[:6] == ["[CLS]", "is", "the", "sky", "blue", "[SEP]"]
    assert feature["token_type_ids"][:6] == [0] * 6 and set(feature["token_type_ids"][6:]) == {1}


def test_original_pair_input_puts_the_passage_first_and_truncates_only_it(glue_like, minilm_tokenizer):
    """As the original code: BoolQ (passage, question), QNLI (sentence, question), the first segment cut."""
    boolq = get_task("boolq")
    feature = encode_examples(boolq, boolq.read(glue_like, "train"), minilm_tokenizer, Encoding(32, "original"))[0]
    tokens = minilm_tokenizer.convert_ids_to_tokens(feature["input_ids"])
    assert len(tokens) == 32 and tokens[:4] == ["[CLS]", "the", "sky", "is"]
    assert tokens[-6:] == ["[SEP]", "is", "the", "sky", "blue", "[SEP]"]  # the question whole, at the end
    assert set(feature["token_type_ids"][-5:]) == {1} and set(feature["token_type_ids"][:-5]) == {0}
    qnli = get_task("qnli")
    example = qnli.read(glue_like, "dev")[0]
    for pair_input, first in (("original", "the sky is blue."), ("standard", "what colour is the sky?")):
        ids = qnli.encode(example, minilm_tokenizer, Encoding(64, pair_input))["input_ids"]
        assert minilm_tokenizer.decode(ids, skip_special_tokens=True).startswith(first)


@pytest.mark.parametrize("name", ["rte", "cb", "mrpc", "sts-b", "wic"])
def test_original_pair_input_keeps_the_order_of_the_other_pairs_and_truncates_their_first_segment(
        name, shared_data, minilm_tokenizer):
    task = get_task(name)
    example = max(task.read(shared_data, "dev")[:50], key=lambda e: len(e.fields[task.text_fields[0]]))
    first, second = (minilm_tokenizer(example.fields[f], add_special_tokens=False)["input_ids"]
                     for f in task.text_fields)
    length = len(second) + 8 if name != "wic" else len(first) + len(second) + 3  # WiC: nothing to cut
    ids = task.encode(example, minilm_tokenizer, Encoding(length, "original"))["input_ids"]
    assert ids[-len(second) - 1:-1] == second  # the second segment whole, in its place
    assert ids[1:1 + min(len(first), length - len(second) - 3)] == first[:length - len(second) - 3]


def test_qnli_text_labels_and_quotes(glue_like):
    examples = get_task("qnli").read(glue_like, "dev")
    assert [e.label for e in examples] == [0, 1, 1]
    assert examples[2].fields["sentence"] == 'It was written by "Anon".'


def test_copa_scores_two_sequences(shared_data, minilm_tokenizer):
    task = get_task("copa")
    example = task.read(shared_data, "dev")[0]  # "The man turned on the faucet." effect, label 1
    feature = task.encode(example, minilm_tokenizer, Encoding(64))
    texts = [minilm_tokenizer.decode(ids, skip_special_tokens=True) for ids in feature["input_ids"]]
    assert texts == ["the man turned on the faucet so the toilet filled with water.",
                     "the man turned on the faucet so water flowed from the spout."]
    assert feature["label"] == 1 and task.lengths(feature) == [len(i) for i in feature["input_ids"]]
    causes = [e for e in task.read(shared_data, "train") if e.fields["question"] == "cause"]
    first = minilm_tokenizer.decode(task.encode(causes[0], minilm_tokenizer, Encoding(64))["input_ids"][0])
    assert " because " in first


def test_wic_spans_cover_the_target_word(shared_data, minilm_tokenizer):
    task = get_task("wic")
    examples = task.read(shared_data, "dev")
    for example, feature in zip(examples, encode_examples(task, examples, minilm_tokenizer, Encoding(128))):
        for (first, last), sentence, start, end in zip(feature["spans"], ("sentence1", "sentence2"),
                                                      ("start1", "start2"), ("end1", "end2")):
            word = example.fields[sentence][example.fields[start]:example.fields[end]]
            decoded = minilm_tokenizer.decode(feature["input_ids"][first:last])
            assert decoded.replace(" ", "") == word.lower().replace(" ", ""), example.source
            assert set(feature["token_type_ids"][first:last]) == {0 if sentence == "sentence1" else 1}


def test_hub_rows_map_onto_official_examples(shared_data, monkeypatch):
    """The hub stores labels as class indices; they map back onto the official label strings."""
    import datasets

    import sat_ehft.hub

    task = get_task("cb")
    rows = [json.loads(line) for line in task.file(shared_data, "dev").read_text().splitlines()]
    hub_rows = {key: [r[key] for r in rows] for key in ("premise", "hypothesis", "idx")}
    hub_rows["label"] = [task.labels.index(r["label"]) for r in rows]
    monkeypatch.setattr(sat_ehft.hub, "require_hub", lambda what, instead: None)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, split: datasets.Dataset.from_dict(hub_rows))
    from_hub = task.read_hub("dev")
    official = task.read(shared_data, "dev")
    assert [(e.fields, e.label) for e in from_hub] == [(e.fields, e.label) for e in official]


def test_hub_test_rows_have_no_labels(monkeypatch):
    """The hub marks a test row's missing label as -1; it reads as an example without a label."""
    import datasets

    import sat_ehft.hub

    rows = {"question": ["is it wet", "is it dry"], "passage": ["It rained.", "It rained."], "idx": [7, 8],
            "label": [-1, -1]}
    monkeypatch.setattr(sat_ehft.hub, "require_hub", lambda what, instead: None)
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, split: asked.append((args, split)) or
                        datasets.Dataset.from_dict(rows))
    examples = get_task("boolq").read_hub("test")
    assert asked == [(("aps/super_glue", "boolq"), "test")]
    assert [(e.id, e.label, e.fields["question"]) for e in examples] == [(7, None, "is it wet"), (8, None, "is it dry")]


def test_hub_fails_fast_offline():
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE.*--data-dir"):
        get_task("rte").read_hub("train")


RTE_ROW = '{"premise": "A cat sat.", "hypothesis": "A cat.", "label": "entailment", "idx": 0}'


@pytest.mark.parametrize("lines, message", [
    ([RTE_ROW, '{"premise": "x", "hypothesis": "y", "label": "entailment"'], r"train\.jsonl:2: malformed JSON"),
    ([RTE_ROW, RTE_ROW.replace('"entailment"', '"maybe"')],
     r"train\.jsonl:2: unknown label 'maybe'; expected one of \['entailment', 'not_entailment'\]"),
    ([RTE_ROW.replace('"hypothesis": "A cat.", ', "")], r"train\.jsonl:1: missing field 'hypothesis'"),
    ([RTE_ROW, "", RTE_ROW], r"train\.jsonl:2: empty line"),
    (["[1, 2]"], r"train\.jsonl:1: expected a JSON object, found list"),
    ([RTE_ROW.replace('"A cat."', "3")], r"train\.jsonl:1: field 'hypothesis' should be text"),
])
def test_bad_jsonl_names_file_line_and_expectation(tmp_path, lines, message):
    write_lines(tmp_path / "superglue/RTE/train.jsonl", lines)
    with pytest.raises(DataError, match=message):
        get_task("rte").read(tmp_path, "train")


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(DataError, match=r"superglue/RTE/val\.jsonl: missing; expected the official RTE dev file"):
        get_task("rte").read(tmp_path, "dev")
    (tmp_path / "superglue/RTE").mkdir(parents=True)
    (tmp_path / "superglue/RTE/train.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"train\.jsonl: empty file"):
        get_task("rte").read(tmp_path, "train")
    with pytest.raises(DataError, match="task rte has no split 'validation'; known: train, dev, test"):
        get_task("rte").read(tmp_path, "validation")


def test_valid_text_loads_whatever_line_separators_it_holds(tmp_path):
    """JSON strings may hold U+2028/U+2029 (Wikipedia passages do), GLUE text other Unicode separators;
    only newlines end a line. Trailing blank lines and CRLF endings are fine."""
    premise = "First line\u2028second\u2029third\x85fourth\x1cfifth."
    row = json.dumps({"premise": premise, "hypothesis": "A cat.", "label": "entailment", "idx": 0}, ensure_ascii=False)
    path = tmp_path / "superglue/RTE/train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes((row + "\r\n" + row.replace('"idx": 0', '"idx": 1') + "\r\n\r\n\n").encode("utf-8"))
    examples = get_task("rte").read(tmp_path, "train")
    assert [e.fields["premise"] for e in examples] == [premise, premise] and [e.id for e in examples] == [0, 1]
    qnli = tmp_path / "glue/QNLI/dev.tsv"
    qnli.parent.mkdir(parents=True)
    qnli.write_text("index\tquestion\tsentence\tlabel\n0\tWho\u2028ran?\tHe ran.\tentailment\n\n", encoding="utf-8")
    assert get_task("qnli").read(tmp_path, "dev")[0].fields["question"] == "Who\u2028ran?"


def test_a_byte_that_is_not_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "superglue/RTE/train.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes((RTE_ROW + "\n").encode() * 2 + b'{"premise": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"train\.jsonl:3: byte 0xe9 is not UTF-8 \(.*\); expected a UTF-8 text file"):
        get_task("rte").read(tmp_path, "train")


STSB_HEADER = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore"


@pytest.mark.parametrize("task, path, lines, message", [
    ("sts-b", "glue/STS-B/dev.tsv", [STSB_HEADER, "0\tg\tf\t2012\t1\tn\tn\tA.\tB.\t7.5"],
     r"dev\.tsv:2: label '7\.5' is outside the range \[0\.0, 5\.0\]"),
    ("sts-b", "glue/STS-B/dev.tsv", [STSB_HEADER, "0\tg\tf\t2012\t1\tn\tn\tA.\tB.\thigh"],
     r"dev\.tsv:2: label 'high' is not a number"),
    ("sts-b", "glue/STS-B/dev.tsv", [STSB_HEADER, "0\tg\tA.\tB.\t1.0"],
     r"dev\.tsv:2: expected 10 tab-separated fields, found 5"),
    ("mrpc", "glue/MRPC/dev.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String", "1\t1\t2\tA."],
     r"dev\.tsv:1: header lacks column\(s\) \['#2 String'\]"),
    ("cola", "glue/CoLA/dev.tsv", ["gj04\t1\t\tFine.", "gj04\t2\t*\tBad label."],
     r"dev\.tsv:2: unknown label '2'; expected one of \['0', '1'\]"),
    ("qnli", "glue/QNLI/dev.tsv", ["index\tquestion\tsentence\tlabel"], r"dev\.tsv: has a header but no rows"),
    ("wic", "superglue/WiC/val.jsonl",
     [json.dumps({"word": "w", "sentence1": "a w", "sentence2": "w b", "start1": 2, "end1": 9,
                  "start2": 0, "end2": 1, "label": True})],
     r"val\.jsonl:1: start1/end1 = 2/9 is not a character span of sentence1 \(3 characters\)"),
    ("copa", "superglue/COPA/val.jsonl",
     [json.dumps({"premise": "p.", "choice1": "a", "choice2": "b", "question": "why", "label": 0})],
     r"val\.jsonl:1: question 'why' should be one of \['cause', 'effect'\]"),
])
def test_bad_rows_name_file_line_and_expectation(tmp_path, task, path, lines, message):
    write_lines(tmp_path / path, lines)
    with pytest.raises(DataError, match=message):
        get_task(task).read(tmp_path, "dev")


def test_wic_word_truncated_away_is_an_error(tmp_path, minilm_tokenizer):
    long = "word " * 40 + "target"
    write_lines(tmp_path / "superglue/WiC/val.jsonl", [json.dumps(
        {"word": "target", "sentence1": long, "sentence2": "target", "start1": len(long) - 6, "end1": len(long),
         "start2": 0, "end2": 6, "label": False})])
    task = get_task("wic")
    with pytest.raises(DataError, match=r"val\.jsonl:1: the target word of sentence 1 was truncated away"):
        task.encode(task.read(tmp_path, "dev")[0], minilm_tokenizer, Encoding(16))


@pytest.fixture(scope="module")
def roberta_style_tokenizer(tmp_path_factory, shared_data):
    from sat_ehft.tokenizer import load_tokenizer

    return load_tokenizer(bpe_tokenizer_folder(tmp_path_factory.mktemp("bpe"), shared_data), BPE_VOCAB)


def test_wic_spans_with_a_byte_level_bpe_tokenizer(shared_data, roberta_style_tokenizer):
    """RoBERTa-style offsets include the leading space of a word; the span must still be the word's tokens."""
    task, tokenizer = get_task("wic"), roberta_style_tokenizer
    examples = task.read(shared_data, "dev")
    for example, feature in zip(examples, encode_examples(task, examples, tokenizer, Encoding(128))):
        for (first, last), sentence, start, end in zip(feature["spans"], ("sentence1", "sentence2"),
                                                      ("start1", "start2"), ("end1", "end2")):
            word = example.fields[sentence][example.fields[start]:example.fields[end]]
            assert tokenizer.decode(feature["input_ids"][first:last]).strip() == word, example.source
    assert "token_type_ids" in feature and set(feature["token_type_ids"]) == {0}  # RoBERTa has no token types


def test_a_configs_pair_input_reaches_the_encoding_a_run_uses(glue_like, minilm_tokenizer):
    """The shipped QNLI config (recipe original) encodes (sentence, question) through the run's own Encoding;
    --set pair_input=standard puts the question first."""
    from conftest import REPO

    from sat_ehft.config import load_config
    from sat_ehft.pipeline import run_encoding
    from sat_ehft.runspec import RunSpec

    qnli = get_task("qnli")
    example = qnli.read(glue_like, "dev")[0]
    for overrides, first in (({}, "the sky is blue."), ({"pair_input": "standard"}, "what colour is the sky?")):
        config = load_config(REPO / "configs" / "qnli.yaml", overrides)
        ids = qnli.encode(example, minilm_tokenizer, run_encoding(RunSpec("qnli", "ft", "m", "d", 1, config)))["input_ids"]
        assert minilm_tokenizer.decode(ids, skip_special_tokens=True).startswith(first)


@pytest.mark.parametrize("pair_input", ["standard", "original"])
def test_mrpc_rte_and_cb_encode_the_files_first_text_first(shared_data, minilm_tokenizer, pair_input):
    """The order as the official files give it (read here with the csv and json modules, not the task's reader):
    MRPC "#1 String" then "#2 String", RTE and CB premise then hypothesis, in both pair inputs."""
    import csv

    with open(shared_data / "glue" / "MRPC" / "dev.tsv", encoding="utf-8-sig", newline="") as file:
        row = next(csv.DictReader(file, delimiter="\t", quoting=csv.QUOTE_NONE))
    official = {"mrpc": (row["#1 String"], row["#2 String"])}
    for name, folder in (("rte", "RTE"), ("cb", "CB")):
        record = json.loads((shared_data / "superglue" / folder / "val.jsonl").read_text().splitlines()[0])
        official[name] = (record["premise"], record["hypothesis"])
    for name, (first, second) in official.items():
        task = get_task(name)
        example = task.read(shared_data, "dev")[0]
        ids = task.encode(example, minilm_tokenizer, Encoding(256, pair_input))["input_ids"]
        expected = minilm_tokenizer.decode(minilm_tokenizer(first, second)["input_ids"], skip_special_tokens=True)
        assert minilm_tokenizer.decode(ids, skip_special_tokens=True) == expected, name
