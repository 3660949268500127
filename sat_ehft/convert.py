"""Hugging Face RoBERTa/BERT checkpoint folder -> SAT checkpoint folder.

SAT's post-LN layer applies its LayerNorms one position later than HF's: HF's embedding LayerNorm is
SAT layer 0's input LayerNorm, HF layer i's output LayerNorm is SAT layer i+1's input LayerNorm, and
the last one is SAT's final LayerNorm. SAT fuses Q, K and V into one `query_key_value`.
"""

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from sat_ehft.atomic import atomic_dir, load_tensors, read_json

SUPPORTED_TYPES = ("roberta", "bert")
# Parts of HF checkpoints that a backbone does not use: pooler, LM heads, classifiers, buffers.
IGNORED_PREFIXES = ("lm_head.", "cls.", "classifier.")
IGNORED_KEYS = ("embeddings.position_ids", "embeddings.token_type_ids")
POOLER_PREFIX = "pooler."  # unused by the classifier, kept for the way back (hf_origin/)
POSITIONS, TOKEN_TYPES = "embeddings.position_embeddings.weight", "embeddings.token_type_embeddings.weight"
HF_ORIGIN_SUBDIR = "hf_origin"
CONVERSION_FORMAT = 2  # part of the cache key: 2 added hf_origin/
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt")
TOKENIZER_SUBDIR = "tokenizer"


def read_hf_config(folder):
    path = Path(folder) / "config.json"
    config = read_json(path)
    kind = config.get("model_type")
    if kind not in SUPPORTED_TYPES:
        raise ValueError(f"{path}: model_type '{kind}' is not supported; expected one of {SUPPORTED_TYPES}")
    for key, expected in (("hidden_act", "gelu"), ("position_embedding_type", "absolute")):
        if config.get(key, expected) != expected:
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported; expected {expected!r}")
    return config


def hf_weights_file(folder):
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (Path(folder) / name).is_file():
            return Path(folder) / name
    raise FileNotFoundError(f"{folder}: no model.safetensors or pytorch_model.bin "
                            "(sharded checkpoints are not supported; merge the shards first)")


def read_hf_state_dict(folder):
    return load_tensors(hf_weights_file(folder), "the download is truncated or the file is not a checkpoint: "
                        "download it again")


def sat_model_config(hf_config):
    """model_config.json for SAT (and for SAT's AutoModel, which rebuilds `model_class`)."""
    kind = hf_config["model_type"]
    config = {
        "model_class": "RobertaBackbone" if kind == "roberta" else "BertBackbone",
        "num_layers": hf_config["num_hidden_layers"],
        "hidden_size": hf_config["hidden_size"],
        "num_attention_heads": hf_config["num_attention_heads"],
        "vocab_size": hf_config["vocab_size"],
        "max_sequence_length": hf_config["max_position_embeddings"],
        "inner_hidden_size": hf_config["intermediate_size"],
        "layernorm_order": "post",
        "layernorm_epsilon": hf_config["layer_norm_eps"],
        "hidden_dropout": hf_config["hidden_dropout_prob"],
        "attention_dropout": hf_config["attention_probs_dropout_prob"],
        "model_parallel_size": 1,
    }
    if kind == "roberta":
        config["padding_idx"] = hf_config.get("pad_token_id", 1)
    else:
        config["num_types"] = hf_config["type_vocab_size"]
    return config


class _KeyPool:
    """The HF state dict, handed out key by key, so that nothing is silently dropped."""

    def __init__(self, state_dict, kind, source):
        self.source = source
        self.tensors = {}
        for key, value in state_dict.items():
            key = key.removeprefix(f"{kind}.").replace("LayerNorm.gamma", "LayerNorm.weight")
            self.tensors[key.replace("LayerNorm.beta", "LayerNorm.bias")] = value

    def pop(self, key):
        if key not in self.tensors:
            raise KeyError(f"{self.source}: missing tensor '{key}'")
        return self.tensors.pop(key)

    def check_consumed(self):
        unused = [k for k in self.tensors if k not in IGNORED_KEYS and not k.startswith(IGNORED_PREFIXES)]
        if unused:
            raise ValueError(f"{self.source}: tensors not understood by the converter: {sorted(unused)}")


def renamed_tensors(num_layers):
    """(HF name, SAT name) of every tensor that converts one-to-one: all but Q/K/V and the embeddings."""
    pairs = []
    for p in ("weight", "bias"):
        norm_in = f"embeddings.LayerNorm.{p}"
        for i in range(num_layers):
            hf, sat = f"encoder.layer.{i}.", f"transformer.layers.{i}."
            pairs += [(norm_in, sat + f"input_layernorm.{p}"),
                      (hf + f"attention.output.dense.{p}", sat + f"attention.dense.{p}"),
                      (hf + f"attention.output.LayerNorm.{p}", sat + f"post_attention_layernorm.{p}"),
                      (hf + f"intermediate.dense.{p}", sat + f"mlp.dense_h_to_4h.{p}"),
                      (hf + f"output.dense.{p}", sat + f"mlp.dense_4h_to_h.{p}")]
            norm_in = hf + f"output.LayerNorm.{p}"
        pairs.append((norm_in, f"transformer.final_layernorm.{p}"))
    return pairs


def fused_tensors(num_layers):
    """([HF query, key, value names], SAT's fused query_key_value name) for every layer and parameter."""
    return [([f"encoder.layer.{i}.attention.self.{n}.{p}" for n in ("query", "key", "value")],
             f"transformer.layers.{i}.attention.query_key_value.{p}")
            for i in range(num_layers) for p in ("weight", "bias")]


def sat_state_dict(hf_config, hf_state_dict, source="checkpoint"):
    """(SAT state dict, HF extras). The extras are what SAT's model does not hold but the way back to HF
    needs (see hf_state_dict): the pooler, and RoBERTa's position and token-type rows before folding."""
    kind, layers = hf_config["model_type"], hf_config["num_hidden_layers"]
    src = _KeyPool(hf_state_dict, kind, source)
    out = {"transformer.word_embeddings.weight": src.pop("embeddings.word_embeddings.weight")}
    extras = {key: src.pop(key) for key in list(src.tensors) if key.startswith(POOLER_PREFIX)}
    positions = src.pop(POSITIONS)
    token_types = src.pop(TOKEN_TYPES)
    if kind == "roberta":
        # SAT's RoBERTa has no token-type embedding; HF adds row 0 to every token, and every token
        # also gets exactly one position row, so folding it into the positions is exact.
        extras.update({POSITIONS: positions, TOKEN_TYPES: token_types})
        positions = positions + token_types[0]
    else:
        out["mixins.bert-type.type_embeddings.weight"] = token_types
    out["transformer.position_embeddings.weight"] = positions
    for hf, sat in renamed_tensors(layers):
        out[sat] = src.pop(hf)
    for names, sat in fused_tensors(layers):
        out[sat] = torch.cat([src.pop(name) for name in names])
    src.check_consumed()
    return {k: v.contiguous() for k, v in out.items()}, {k: v.contiguous() for k, v in extras.items()}


def hf_state_dict(model_config, sat_state, extras=None):
    """The inverse of sat_state_dict: a SAT backbone state (a classifier's too; its mixins are left out) in
    Hugging Face's names, without the `roberta.`/`bert.` prefix. `extras` (from the conversion) bring back
    the pooler and RoBERTa's unfolded rows: where the folded position row is as converted, its original is
    exact; where it was trained, the token-type row is subtracted (HF adds it back)."""
    extras, layers = extras or {}, model_config["num_layers"]
    out = {"embeddings.word_embeddings.weight": sat_state["transformer.word_embeddings.weight"]}
    positions = sat_state["transformer.position_embeddings.weight"]
    if hf_kind(model_config) == "roberta":
        token_types = extras.get(TOKEN_TYPES, torch.zeros_like(positions[:1])).to(positions.dtype)
        unfolded = positions - token_types[0]
        if POSITIONS in extras:
            original = extras[POSITIONS].to(positions.dtype)
            unfolded = torch.where(original + token_types[0] == positions, original, unfolded)
        out.update({POSITIONS: unfolded, TOKEN_TYPES: token_types})
    else:
        out.update({POSITIONS: positions, TOKEN_TYPES: sat_state["mixins.bert-type.type_embeddings.weight"]})
    for hf, sat in renamed_tensors(layers):
        out[hf] = sat_state[sat]
    for names, sat in fused_tensors(layers):
        out.update(zip(names, sat_state[sat].chunk(3)))
    out.update({k: v for k, v in extras.items() if k.startswith(POOLER_PREFIX)})
    return {k: v.detach().cpu().contiguous().clone() for k, v in out.items()}  # no shared storage (safetensors)


def hf_kind(model_config):
    """'roberta' or 'bert': the Hugging Face model_type of a SAT backbone's model_config.json."""
    return "roberta" if model_config["model_class"].startswith("Roberta") else "bert"


def hf_config_dict(model_config, origin=None):
    """The Hugging Face config.json of a SAT backbone: the converted model's own (`origin`, read from its
    hf_origin/config.json) where there is one, else rebuilt from model_config.json (SAT's model zoo)."""
    if origin is not None:
        return dict(origin)
    kind = hf_kind(model_config)
    config = {"model_type": kind, "num_hidden_layers": model_config["num_layers"],
              "hidden_size": model_config["hidden_size"], "num_attention_heads": model_config["num_attention_heads"],
              "vocab_size": model_config["vocab_size"], "max_position_embeddings": model_config["max_sequence_length"],
              "intermediate_size": model_config.get("inner_hidden_size") or 4 * model_config["hidden_size"],
              "layer_norm_eps": model_config["layernorm_epsilon"], "hidden_act": "gelu",
              "hidden_dropout_prob": model_config["hidden_dropout"],
              "attention_probs_dropout_prob": model_config["attention_dropout"]}
    if kind == "roberta":
        return {**config, "type_vocab_size": 1, "pad_token_id": model_config.get("padding_idx", 1)}
    return {**config, "type_vocab_size": model_config["num_types"], "pad_token_id": 0}


def write_hf_origin(folder, hf_config, extras):
    """What a SAT folder keeps of its Hugging Face source for the way back (sat-ehft export)."""
    from safetensors.torch import save_file

    origin = Path(folder) / HF_ORIGIN_SUBDIR
    origin.mkdir()
    (origin / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
    save_file(extras, str(origin / "extras.safetensors"))


def read_hf_origin(folder):
    """(HF config dict, extras) kept by the conversion in a SAT folder, or (None, {}) for a folder without one."""
    origin = Path(folder) / HF_ORIGIN_SUBDIR
    if not origin.is_dir():
        return None, {}
    extras = load_tensors(origin / "extras.safetensors", f"remove {folder} and convert its source again")
    return json.loads((origin / "config.json").read_text(encoding="utf-8")), extras


def write_sat_checkpoint(folder, model_config, state_dict, iteration=1):
    """Write SAT's layout (model_config.json, latest, <iter>/mp_rank_00_model_states.pt) into `folder`."""
    folder = Path(folder)
    (folder / "model_config.json").write_text(json.dumps(model_config, indent=2) + "\n", encoding="utf-8")
    (folder / str(iteration)).mkdir(parents=True, exist_ok=True)
    torch.save({"module": state_dict}, folder / str(iteration) / "mp_rank_00_model_states.pt")
    (folder / "latest").write_text(str(iteration), encoding="utf-8")


def convert_hf_folder(hf_dir, out_dir):
    """Convert `hf_dir` into a new SAT checkpoint folder `out_dir`, tokenizer files included."""
    hf_config = read_hf_config(hf_dir)
    state_dict, extras = sat_state_dict(hf_config, read_hf_state_dict(hf_dir), source=str(hf_weights_file(hf_dir)))
    with atomic_dir(out_dir) as tmp:
        write_sat_checkpoint(tmp, sat_model_config(hf_config), state_dict)
        copy_tokenizer_files(hf_dir, tmp / TOKENIZER_SUBDIR)
        write_hf_origin(tmp, hf_config, extras)
    return Path(out_dir)


def copy_tokenizer_files(source, target):
    """Copy the tokenizer files found in the folder `source` into the new folder `target` (if there are any)."""
    paths = [Path(source) / n for n in TOKENIZER_FILES if (Path(source) / n).is_file()]
    if paths:
        Path(target).mkdir()
        for path in paths:
            shutil.copy2(path, Path(target) / path.name)


def cache_root():
    return Path(os.environ.get("SAT_EHFT_CACHE", Path.home() / ".cache" / "sat_ehft"))


def cached_conversion(hf_dir, root=None):
    """The SAT folder converted from `hf_dir`, converting once and reusing it while the source is unchanged."""
    hf_dir = Path(hf_dir).resolve()
    read_hf_config(hf_dir)  # another architecture is named before its weights are looked for
    weights = hf_weights_file(hf_dir)
    stat = weights.stat()
    fingerprint = (f"{CONVERSION_FORMAT}|{hf_dir}|{(hf_dir / 'config.json').read_bytes()!r}|{stat.st_size}|"
                   f"{stat.st_mtime_ns}")
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    target = Path(root or cache_root()) / f"{hf_dir.name}-{key}"
    if not target.exists():
        try:
            convert_hf_folder(hf_dir, target)
        except OSError:
            if not target.exists():  # another process may have finished the same conversion first
                raise
    return target
