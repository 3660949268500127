"""Encoded data, tokenized once: Stage 2, later seeds and other methods of a grid reuse Stage 1's.

Each split is cached as JSON under `$SAT_EHFT_CACHE/encoded/` (default ~/.cache/sat_ehft), keyed by a
SHA-256 over the data file's bytes, the tokenizer's whole state (vocabulary, merges, normalizer, special
tokens), the task's encoding settings, the split and the Encoding (max_length, pair_input). A changed file or tokenizer makes a new
key, so a stale entry is never read. Entries are written atomically; an unreadable one is encoded again.
Data read from the hub (no file) is encoded every time.
"""

import dataclasses
import hashlib
import json

from sat_ehft.atomic import file_sha256, write_text
from sat_ehft.convert import cache_root
from sat_ehft.tasks import encode_examples

ENCODING_VERSION = 1  # bump when what Task.encode produces changes for the same settings


def tokenizer_sha256(tokenizer):
    """A hash of everything that decides the ids a (fast) tokenizer gives, but not the truncation and padding it
    was last called with (the backend keeps them, and each encoding passes its own)."""
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    backend.pop("truncation", None)
    backend.pop("padding", None)
    state = {"class": type(tokenizer).__name__, "backend": backend,
             "special": {name: str(token) for name, token in tokenizer.special_tokens_map.items()},
             "added": sorted((str(token), index) for token, index in tokenizer.get_added_vocab().items())}
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def entry_path(task, data_dir, split, tokenizer, encoding):
    key = {"version": ENCODING_VERSION, "task": task.encoding_settings(), "split": split,
           "encoding": dataclasses.asdict(encoding),
           "data": file_sha256(task.file(data_dir, split)), "tokenizer": tokenizer_sha256(tokenizer)}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
    return cache_root() / "encoded" / f"{task.name}-{split}-{digest[:32]}.json"


def encoded_split(task, data_dir, split, tokenizer, encoding):
    """The examples of `split` (official files under `data_dir`, or the hub when it is None), encoded as
    `encoding` (sat_ehft.tasks.Encoding) says."""
    if not data_dir:
        return encode_examples(task, task.read_hub(split), tokenizer, encoding)
    if not task.file(data_dir, split).is_file():
        task.read(data_dir, split)  # raises the DataError that says which file is missing and where it belongs
    path = entry_path(task, data_dir, split, tokenizer, encoding)
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            pass  # damaged since it was written: encode it again below
    features = encode_examples(task, task.read(data_dir, split), tokenizer, encoding)
    write_text(path, json.dumps(features))
    return features
