"""The encoded-data cache (sat_ehft.encoded_cache): tokenized once, reused by Stage 2 and later runs, never stale."""

import json
import shutil

import pytest
from test_pipeline import spec_for

from sat_ehft import encoded_cache
from sat_ehft.encoded_cache import encoded_split, entry_path
from sat_ehft.pipeline import RunSpec, run
from sat_ehft.tasks import Encoding, encode_examples, get_task
from sat_ehft.tokenizer import load_tokenizer


@pytest.fixture
def encodings(monkeypatch):
    """The (task, split file) of every encoding the cache could not spare."""
    calls, original = [], encoded_cache.encode_examples

    def counted(task, examples, tokenizer, max_length):
        calls.append((task.name, examples[0].source.rsplit(":", 1)[0]))
        return original(task, examples, tokenizer, max_length)

    monkeypatch.setattr(encoded_cache, "encode_examples", counted)
    return calls


def test_stage2_other_seeds_and_methods_reuse_stage1s_encoding(tmp_path, tiny_bert, rte_dir, encodings):
    spec = spec_for("ehft-bitfit", tiny_bert, rte_dir)
    run(spec, tmp_path / "first", log=lambda line: None)
    files = [str(rte_dir / "superglue" / "RTE" / name) for name in ("train.jsonl", "val.jsonl")]
    assert encodings == [("rte", files[0]), ("rte", files[1])]  # by Stage 1 only
    run(RunSpec(**{**spec.__dict__, "seed": 9, "method": "ft"}), tmp_path / "second", log=lambda line: None)
    assert len(encodings) == 2
    assert len(list((tmp_path / "sat_ehft_cache" / "encoded").iterdir())) == 2


@pytest.mark.parametrize("task_name", ["rte", "copa", "wic", "sts-b"])  # one row, choice rows, spans, float labels
def test_a_cached_split_equals_a_fresh_encoding(shared_data, minilm_tokenizer, encodings, task_name):
    task = get_task(task_name)
    first = encoded_split(task, shared_data, "dev", minilm_tokenizer, Encoding(64))
    again = encoded_split(task, shared_data, "dev", minilm_tokenizer, Encoding(64))
    assert len(encodings) == 1  # the second came from the cache
    assert again == first == encode_examples(task, task.read(shared_data, "dev"), minilm_tokenizer, Encoding(64))


def test_a_changed_file_or_tokenizer_is_never_served_stale(tmp_path, rte_dir, minilm_dir, minilm_tokenizer,
                                                           encodings):
    task, data = get_task("rte"), tmp_path / "data"
    shutil.copytree(rte_dir, data)
    first = encoded_split(task, data, "train", minilm_tokenizer, Encoding(64))
    train_file = data / "superglue" / "RTE" / "train.jsonl"
    rows = [json.loads(line) for line in train_file.read_text().splitlines()]
    rows[0]["label"] = "not_entailment" if rows[0]["label"] == "entailment" else "entailment"
    train_file.write_text("".join(json.dumps(row) + "\n" for row in rows))
    relabelled = encoded_split(task, data, "train", minilm_tokenizer, Encoding(64))
    assert len(encodings) == 2 and relabelled[0]["label"] == 1 - first[0]["label"]

    swapped = tmp_path / "swapped-tokenizer"  # MiniLM's tokenizer with the ids of "the" and "of" swapped
    shutil.copytree(minilm_dir, swapped, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx", "*.h5"))
    settings = json.loads((swapped / "tokenizer.json").read_text())
    vocab = settings["model"]["vocab"]
    vocab["the"], vocab["of"] = vocab["of"], vocab["the"]
    (swapped / "tokenizer.json").write_text(json.dumps(settings))
    swapped_ids = encoded_split(task, data, "train", load_tokenizer(swapped), Encoding(64))
    assert len(encodings) == 3 and swapped_ids[0]["input_ids"] != relabelled[0]["input_ids"]

    entry = entry_path(task, data, "train", minilm_tokenizer, Encoding(64))
    entry.write_text(entry.read_text()[:100])  # damaged after it was written: encoded again
    assert encoded_split(task, data, "train", minilm_tokenizer, Encoding(64)) == relabelled and len(encodings) == 4


@pytest.mark.parametrize("other", [Encoding(32), Encoding(64, "original")])
def test_another_encoding_is_a_new_entry(shared_data, minilm_tokenizer, encodings, other):
    """A prefix run (max_length - prefix_len) and a pair_input change encode afresh: the cache never serves
    them another encoding's entry."""
    task = get_task("rte")
    first = encoded_split(task, shared_data, "dev", minilm_tokenizer, Encoding(64))
    second = encoded_split(task, shared_data, "dev", minilm_tokenizer, other)
    assert len(encodings) == 2 and entry_path(task, shared_data, "dev", minilm_tokenizer, other) != \
        entry_path(task, shared_data, "dev", minilm_tokenizer, Encoding(64))
    assert second == encode_examples(task, task.read(shared_data, "dev"), minilm_tokenizer, other) != first
