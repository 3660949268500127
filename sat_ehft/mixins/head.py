"""The paper's classification head: a 2-layer MLP (in -> 2048 -> outputs, ReLU) on pooled features.

It replaces the backbone's final_forward, so it sees the final hidden states and pools them first
(SAT's own MLPHeadMixin runs the MLP over every token):
- 'cls': the first token;
- 'spans' (WiC): [CLS, span1, span2, |span1 - span2|, span1 * span2], spans mean-pooled;
and with `choices` > 1 (COPA) each sequence gets one score and rows are regrouped per example.
"""

import warnings

import torch
import torch.nn.functional as F
from sat.model.base_model import BaseMixin

from sat_ehft.hf_modeling import pool_features  # shared with the exported Hugging Face classifier
from sat_ehft.packing import padded_states

HEAD_NAME = "head"
POOLINGS = ("cls", "spans")


class ClassificationHead(BaseMixin):
    def __init__(self, hidden_size, num_outputs, pooling="cls", choices=1, inner_size=2048, init_std=0.005):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling {pooling!r} is not one of {POOLINGS}")
        self.pooling, self.choices = pooling, choices
        in_size = hidden_size * (5 if pooling == "spans" else 1)
        self.dense = torch.nn.Linear(in_size, inner_size)
        self.out = torch.nn.Linear(inner_size, num_outputs)
        for layer in (self.dense, self.out):  # as the original code: weights N(0, 0.005), default biases
            torch.nn.init.normal_(layer.weight, std=init_std)
        self.mix_weight = None  # set by a Mixout mixin that mixes the head too: (layer name, weight) -> weight

    def linear(self, name, x):
        """`x` through the head's Linear layer `name` ('dense' or 'out'), its weight mixed where Mixout says so
        (in training only); otherwise through the layer itself, so that hooks on it see its inputs (Figure 1)."""
        layer = getattr(self, name)
        if self.mix_weight is None or not self.training:
            return layer(x)
        return F.linear(x, self.mix_weight(name, layer.weight), layer.bias)

    def hidden_features(self, hidden, spans=None):
        """The head's 2048-d hidden layer (what the paper's Figure 4 plots)."""
        return torch.relu(self.linear("dense", pool_features(hidden, self.pooling, spans)))

    def final_forward(self, logits, **kw_args):
        scores = self.linear("out", self.hidden_features(padded_states(logits, kw_args), kw_args.get("spans")))
        return scores.view(-1, self.choices) if self.choices > 1 else scores


def add_mixin(model, name, mixin):
    """model.add_mixin, without SAT's warning (repeated at every later add_mixin) that the head's
    final_forward replaces the backbone's hidden-states output: that replacement is the design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Hook final_forward at head replaces")
        model.add_mixin(name, mixin)
    return model


def add_head(model, head):
    """Attach `head` as the model's final_forward (it replaces the backbone's hidden-states output)."""
    return add_mixin(model, HEAD_NAME, head)
