"""Tokenizers load from checkpoint folders; a wrong vocabulary fails loudly instead of silently."""

import pytest

from sat_ehft.folders import load_model_tokenizer
from sat_ehft.tasks import Encoding, encode_examples, get_task
from sat_ehft.tokenizer import TokenizerMismatch, check_unk_rate, load_tokenizer


@pytest.fixture
def constructor_built_tokenizer(tmp_path, minilm_dir):
    """The transformers-5 trap: `vocab_file=` is ignored and a 5-token vocabulary is built."""
    from transformers import BertTokenizerFast

    broken = BertTokenizerFast(vocab_file=str(minilm_dir / "vocab.txt"))
    broken.save_pretrained(tmp_path / "broken")
    return tmp_path / "broken", broken


def test_minilm_tokenizer_matches_its_model(minilm_dir, minilm_tokenizer):
    assert len(minilm_tokenizer) == 30522
    assert minilm_tokenizer.convert_ids_to_tokens(minilm_tokenizer("The water")["input_ids"]) == ["[CLS]", "the", "water", "[SEP]"]
    assert len(load_model_tokenizer(minilm_dir)) == 30522


def test_vocab_size_mismatch_fails(minilm_dir, constructor_built_tokenizer):
    with pytest.raises(TokenizerMismatch, match=r"30522 tokens but .* 50265 rows"):
        load_tokenizer(minilm_dir, 50265)
    folder, broken = constructor_built_tokenizer
    assert len(broken) < 10
    with pytest.raises(TokenizerMismatch, match=str(folder)):
        load_tokenizer(folder, 30522)
    load_tokenizer(minilm_dir, 30522 + 64)  # embedding padded to a round size is fine


def test_unk_rate_limit():
    check_unk_rate([[5] * 96 + [1] * 4], unk_id=1, where="batch")  # 4% UNK passes
    with pytest.raises(TokenizerMismatch, match=r"batch: 6 of 100 tokens \(6.0%\)"):
        check_unk_rate([[5] * 44 + [1] * 6, [5] * 50], unk_id=1, where="batch")


def test_encoding_real_rows_with_broken_vocab_fails(shared_data, constructor_built_tokenizer):
    _, broken = constructor_built_tokenizer
    task = get_task("rte")
    with pytest.raises(TokenizerMismatch, match=r"rte, examples from .*train\.jsonl:1: .* UNK"):
        encode_examples(task, task.read(shared_data, "train")[:20], broken, Encoding(128))


def test_packaged_model_name_resolves_offline(minilm_dir):
    from sat_ehft.folders import resolve_folder

    assert resolve_folder("all-MiniLM-L6-v2") == resolve_folder("sentence-transformers/all-MiniLM-L6-v2") == minilm_dir
