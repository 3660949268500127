"""SAT RoBERTa/BERT backbones (post-LN, LM head removed) and where they load from.

`load_backbone(spec)` takes a SAT checkpoint folder, a Hugging Face checkpoint folder (converted once
and cached as a SAT folder) or a model name (the Hugging Face hub; `sat:NAME` for SAT's model zoo).
Importing this module registers RobertaBackbone and BertBackbone with SAT's model registry, which
SAT's `AutoModel.from_pretrained` needs to rebuild a converted folder.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from sat.model.base_model import BaseMixin, replacable
from sat.model.official.bert_model import BertModel
from sat.model.official.roberta_model import RobertaModel

from sat_ehft.atomic import load_tensors
from sat_ehft.convert import cached_conversion
from sat_ehft.folders import folder_kind, resolve_folder, tokenizer_folder
from sat_ehft.mixins import attach
from sat_ehft.mixins.attention import SDPA_NAME, SDPAttention
from sat_ehft.packing import pack, padded_states


class HiddenStatesOutput(BaseMixin):
    """Makes the backbone return its final hidden states ([b, s, hidden]) instead of SAT's tied LM logits."""

    @replacable
    def final_forward(self, logits, **kw_args):
        return padded_states(logits, kw_args)


class _Backbone:
    """What RoBERTa and BERT backbones share: no LM head, hidden states out, SAT's mask layout."""

    uses_token_types = False
    unpad = True  # run on the real tokens only (sat_ehft.packing); False keeps SAT's padded layout

    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.del_mixin("bert-final")  # SAT names the LM head 'bert-final' for RoBERTa too
        self.add_mixin("hidden-states", HiddenStatesOutput())
        self.add_mixin(SDPA_NAME, SDPAttention())  # before any PET mixin, which may wrap it
        attach(self, getattr(args, "ehft_mixins", None) or {})  # a saved classifier's head and PET mixins

    def encode(self, input_ids, attention_mask, token_type_ids=None, **kw_args):
        """Run on [batch, seq] ids and 0/1 mask: the [batch, seq, hidden] final-layer features, or the
        head's scores once a head is attached (`kw_args`, e.g. WiC's spans, reach the head)."""
        position_ids = self.position_ids(attention_mask)
        if self.uses_token_types and token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        if self.unpad and SDPA_NAME in self.mixins:  # packed rows need the packing-aware attention hook
            rows = (input_ids, position_ids) + ((token_type_ids,) if self.uses_token_types else ())
            kw_args["packing"], (input_ids, position_ids, *types) = pack(attention_mask, *rows)
            token_type_ids = types[0] if types else None
            sat_mask = torch.ones(1, 1, 1, 1, device=input_ids.device)  # attention follows the packing instead
        else:
            sat_mask = attention_mask[:, None, None, :]  # SAT: [b, 1, 1, s], 1 = keep
        if self.uses_token_types:
            kw_args["token_type_ids"] = token_type_ids
        dtype = next(self.parameters()).dtype
        return self(input_ids, position_ids, sat_mask.to(dtype), **kw_args)[0]


class BertBackbone(_Backbone, BertModel):
    uses_token_types = True

    def position_ids(self, attention_mask):
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        return positions.expand_as(attention_mask)


class RobertaBackbone(_Backbone, RobertaModel):
    def __init__(self, args, transformer=None, **kwargs):
        super().__init__(args, transformer=transformer, **kwargs)
        self.padding_idx = args.padding_idx

    def position_ids(self, attention_mask):
        # RoBERTa counts positions from padding_idx + 1 and gives padding the padding index.
        mask = attention_mask.long()
        return torch.cumsum(mask, dim=1) * mask + self.padding_idx

    @classmethod
    def add_model_specific_args(cls, parser):
        group = parser.add_argument_group("RoBERTa backbone")
        group.add_argument("--padding-idx", type=int, default=1, help="RoBERTa's padding token id")
        return super().add_model_specific_args(parser)


# model_class in model_config.json -> our class; SAT's own classes load with their LM head dropped.
SAT_CLASSES = {"RobertaBackbone": RobertaBackbone, "RobertaModel": RobertaBackbone,
               "BertBackbone": BertBackbone, "BertModel": BertBackbone}
DROPPED_PREFIXES = ("mixins.bert-final.",)


@dataclass
class Backbone:
    model: torch.nn.Module
    folder: Path  # the SAT checkpoint folder it was loaded from
    config: dict  # its model_config.json
    fingerprint: str  # identifies the pretrained weights, so a head cannot cross to another backbone

    def load_tokenizer(self):
        from sat_ehft.tokenizer import load_tokenizer

        return load_tokenizer(tokenizer_folder(self.folder), self.config["vocab_size"])

    @property
    def max_tokens(self):
        """The longest sequence its position table holds: RoBERTa's positions start after its padding index."""
        offset = self.config["padding_idx"] + 1 if "padding_idx" in self.config else 0
        return self.config["max_sequence_length"] - offset


def read_sat_config(folder):
    path = Path(folder) / "model_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("model_class") not in SAT_CLASSES:
        raise ValueError(f"{path}: model_class {config.get('model_class')!r} is not a supported backbone; "
                         f"expected one of {sorted(SAT_CLASSES)}")
    if config.get("model_parallel_size", 1) != 1:
        raise ValueError(f"{path}: model-parallel checkpoints are not supported; merge them first")
    return config


def sat_weights_file(folder):
    folder = Path(folder)
    tracker = folder / "latest"
    if not tracker.is_file():
        raise FileNotFoundError(f"{tracker}: missing; a SAT checkpoint folder names its iteration there")
    tag = tracker.read_text().strip()
    path = folder / tag / "mp_rank_00_model_states.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (named by {tracker})")
    return path


def build_backbone(config):
    """A backbone of the architecture described by a model_config.json dict, its memory not initialised
    (SAT's skip_init): load weights into it."""
    cls = SAT_CLASSES[config["model_class"]]
    args = cls.get_args(**{k: v for k, v in config.items() if k != "model_class"}, skip_init=True)
    return cls(args)


def load_sat_folder(folder):
    folder = Path(folder)
    config = read_sat_config(folder)
    weights = sat_weights_file(folder)
    state = load_tensors(weights, "the checkpoint is truncated or not a SAT checkpoint: copy or convert it again")["module"]
    state = {k: v for k, v in state.items() if not k.startswith(DROPPED_PREFIXES)}
    model = backbone_with_weights(config, state, weights)
    return Backbone(model=model, folder=folder, config=config, fingerprint=weights_fingerprint(state))


def backbone_with_weights(config, state, source):
    """The backbone of a model_config.json dict holding `state` (every tensor, nothing else: else an error
    naming `source`)."""
    model = build_backbone(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{source}: does not fit {config['model_class']}: "
                         f"missing {sorted(missing)}, unexpected {sorted(unexpected)}")
    return model


def weights_fingerprint(state):
    """A short hash of the pretrained word embeddings and final LayerNorm: equal only for the same backbone."""
    digest = hashlib.sha256()
    for key in ("transformer.word_embeddings.weight", "transformer.final_layernorm.weight"):
        digest.update(state[key].detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_backbone(spec, cache_dir=None):
    """Load a backbone from a SAT folder, an HF folder (converted and cached) or a model name."""
    folder = resolve_folder(spec)
    if folder_kind(folder) == "hf":
        folder = cached_conversion(folder, cache_dir)
    return load_sat_folder(folder)
