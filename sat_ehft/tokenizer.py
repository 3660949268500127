"""Tokenizers from checkpoint folders, with the checks that catch a silently broken vocabulary.

transformers 5 ignores `vocab_file=`/`merges_file=` in tokenizer constructors and builds a 5-token
vocabulary, after which every word is UNK; so tokenizers only ever come from `from_pretrained(folder)`,
and both the vocabulary size and the UNK rate are checked.
"""

from pathlib import Path

UNK_LIMIT = 0.05
# Checkpoints may pad the embedding matrix past the tokenizer's vocabulary (to a multiple of 8..128).
EMBEDDING_PADDING_LIMIT = 128


class TokenizerMismatch(ValueError):
    """The tokenizer does not belong to the model, or is producing mostly unknown tokens."""


def check_vocab_size(tokenizer, embedding_rows, folder):
    size = len(tokenizer)
    if size > embedding_rows or embedding_rows - size >= EMBEDDING_PADDING_LIMIT:
        raise TokenizerMismatch(
            f"{folder}: tokenizer has {size} tokens but the model's embedding has {embedding_rows} rows; "
            "the tokenizer does not belong to this model (or was built without its vocabulary files)")


def load_tokenizer(folder, embedding_rows=None):
    """AutoTokenizer.from_pretrained(folder), checked against the model's embedding when given."""
    from transformers import AutoTokenizer

    if not Path(folder).is_dir():
        raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    if not tokenizer.is_fast:
        raise TokenizerMismatch(f"{folder}: a fast tokenizer (tokenizer.json) is needed for offsets")
    if embedding_rows is not None:
        check_vocab_size(tokenizer, embedding_rows, folder)
    return tokenizer


def check_unk_rate(batch_ids, unk_id, where, limit=UNK_LIMIT):
    """Raise when more than `limit` of the tokens in `batch_ids` (lists of ids) are UNK."""
    total = sum(len(ids) for ids in batch_ids)
    unknown = sum(ids.count(unk_id) for ids in batch_ids)
    if total and unknown > limit * total:
        raise TokenizerMismatch(
            f"{where}: {unknown} of {total} tokens ({unknown / total:.1%}) are UNK, over the "
            f"{limit:.0%} limit; the tokenizer's vocabulary is wrong for this text")
