"""Mixout (Lee et al., 2020): while training, each weight entry of the backbone's Linear layers is
swapped for its pretrained value with probability p, rescaled so the expectation stays the weight:

    mixout(w) = (M * w + (1 - M) * w0 - p * w0) / (1 - p),   M ~ Bernoulli(1 - p)

In evaluation the weights are used as they are. The head is not mixed (the original code wrapped it
too, against the method). The pretrained weights are snapshotted when the mixin is attached.

As the original code ran it (config `mixout_draw: column`, `mixout_zero_dropout: true`): one draw per input
column of each weight, shared by its rows, and every dropout of the model set to 0.
"""

import torch
import torch.nn.functional as F
from sat.model.base_model import BaseMixin

from sat_ehft.mixins.projections import attention_forward, mlp_forward, projections

DRAWS = ("element", "column")


def mixout_weight(weight, pretrained, p, draw="element"):
    """`weight` mixed with `pretrained`: each entry (or, with draw='column', each input column, the same for
    every row) swapped for the pretrained value with probability p."""
    shape = weight.shape if draw == "element" else (1, weight.shape[1])
    keep = torch.bernoulli(torch.full(shape, 1 - p, dtype=weight.dtype, device=weight.device))
    return (keep * weight + (1 - keep) * pretrained - p * pretrained) / (1 - p)


class MixoutMixin(BaseMixin):
    def __init__(self, p, draw="element", zero_dropout=False):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"mixout p={p} must lie in [0, 1)")
        if draw not in DRAWS:
            raise ValueError(f"mixout draw={draw!r} must be one of {DRAWS}")
        self.p, self.draw, self.zero_dropout = p, draw, zero_dropout

    def reinit(self, parent_model=None):
        """Snapshot the current (pretrained) Linear weights as non-persistent buffers; with zero_dropout, set
        every dropout of the model to 0."""
        if self.zero_dropout:
            for module in (parent_model or self.transformer).modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        for layer_id, layer in enumerate(self.transformer.layers):
            for name, linear in projections(layer):
                self.register_buffer(f"pretrained_{layer_id}_{name}", linear.weight.detach().clone(),
                                     persistent=False)

    def project(self, layer_id, name, linear, x):
        if not (self.training and self.p > 0):
            return linear(x)
        weight = mixout_weight(linear.weight, getattr(self, f"pretrained_{layer_id}_{name}"), self.p, self.draw)
        return F.linear(x, weight, linear.bias)

    def attention_forward(self, hidden_states, mask, **kw_args):
        return attention_forward(self.transformer, self.project, hidden_states, mask, **kw_args)

    def mlp_forward(self, hidden_states, **kw_args):
        return mlp_forward(self.transformer, self.project, hidden_states, **kw_args)
