"""Mixout (Lee et al., 2020): while training, each weight entry of the backbone's Linear layers is
swapped for its pretrained value with probability p, rescaled so the expectation stays the weight:

    mixout(w) = (M * w + (1 - M) * w0 - p * w0) / (1 - p),   M ~ Bernoulli(1 - p)

In evaluation the weights are used as they are. The pretrained weights are snapshotted when the mixin is
attached. With `head=True` (config `mixout_head`, as the original code wrapped every Linear) the head's two
Linear layers are mixed too, towards the head's initial (random) weights, snapshotted the same way.

As the original code ran it (config `mixout_draw: column`, `mixout_zero_dropout: true`): one draw per input
column of each weight, shared by its rows, and every dropout of the model set to 0.
"""

import torch
import torch.nn.functional as F
from sat.model.base_model import BaseMixin

from sat_ehft.mixins.head import HEAD_NAME
from sat_ehft.mixins.projections import attention_forward, mlp_forward, projections

DRAWS = ("element", "column")


def mixout_weight(weight, pretrained, p, draw="element"):
    """`weight` mixed with `pretrained`: each entry (or, with draw='column', each input column, the same for
    every row) swapped for the pretrained value with probability p."""
    shape = weight.shape if draw == "element" else (1, weight.shape[1])
    keep = torch.bernoulli(torch.full(shape, 1 - p, dtype=weight.dtype, device=weight.device))
    return (keep * weight + (1 - keep) * pretrained - p * pretrained) / (1 - p)


class MixoutMixin(BaseMixin):
    def __init__(self, p, draw="element", zero_dropout=False, head=False):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"mixout p={p} must lie in [0, 1)")
        if draw not in DRAWS:
            raise ValueError(f"mixout draw={draw!r} must be one of {DRAWS}")
        self.p, self.draw, self.zero_dropout, self.head = p, draw, zero_dropout, head

    def reinit(self, parent_model=None):
        """Snapshot the current (pretrained) Linear weights, and with `head` the head's initial ones, as
        non-persistent buffers; with zero_dropout, set every dropout of the model to 0."""
        if self.zero_dropout:
            for module in (parent_model or self.transformer).modules():
                if isinstance(module, torch.nn.Dropout):
                    module.p = 0.0
        for layer_id, layer in enumerate(self.transformer.layers):
            for name, linear in projections(layer):
                self.register_buffer(f"pretrained_{layer_id}_{name}", linear.weight.detach().clone(),
                                     persistent=False)
        if self.head:
            head = parent_model.get_mixin(HEAD_NAME)
            for name in ("dense", "out"):
                self.register_buffer(f"initial_head_{name}", getattr(head, name).weight.detach().clone(),
                                     persistent=False)
            head.mix_weight = self.mix_head_weight

    def mixed(self, weight, target):
        return mixout_weight(weight, target, self.p, self.draw) if self.training and self.p > 0 else weight

    def mix_head_weight(self, name, weight):
        return self.mixed(weight, getattr(self, f"initial_head_{name}"))

    def project(self, layer_id, name, linear, x):
        return F.linear(x, self.mixed(linear.weight, getattr(self, f"pretrained_{layer_id}_{name}")), linear.bias)

    def attention_forward(self, hidden_states, mask, **kw_args):
        return attention_forward(self.transformer, self.project, hidden_states, mask, **kw_args)

    def mlp_forward(self, hidden_states, **kw_args):
        return mlp_forward(self.transformer, self.project, hidden_states, **kw_args)
