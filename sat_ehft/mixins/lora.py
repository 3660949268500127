"""LoRA (Hu et al., 2021) on SAT attention: W x + (alpha / r) * B A x on chosen projections.

Implemented as an `attention_forward` hook (see projections.py) rather than by swapping Linear layers
(SAT's lora2 swaps them in place and `del_mixin` cannot undo it), so removing the mixin restores the
plain model. The attention kernel itself stays pluggable through the `attention_fn` hook.
"""

import math

import torch
from sat.model.base_model import BaseMixin
from sat.mpu.utils import split_tensor_along_last_dim

from sat_ehft.mixins.projections import attention_forward

LORA_TARGETS = ("query", "key", "value", "dense")  # dense = the attention output projection


class LoRAMixin(BaseMixin):
    def __init__(self, num_layers, hidden_size, r, alpha, targets=("query", "value"), dropout=0.0):
        super().__init__()
        unknown = set(targets) - set(LORA_TARGETS)
        if unknown or not targets:
            raise ValueError(f"LoRA targets {sorted(unknown) or '[]'} are not among {LORA_TARGETS}")
        self.targets, self.scaling = tuple(targets), alpha / r
        self.dropout = torch.nn.Dropout(dropout)
        self.layers = torch.nn.ModuleList()
        for _ in range(num_layers):
            params = torch.nn.ParameterDict()
            for target in self.targets:
                params[f"{target}_A"] = torch.nn.Parameter(torch.empty(r, hidden_size))
                params[f"{target}_B"] = torch.nn.Parameter(torch.zeros(hidden_size, r))
                torch.nn.init.kaiming_uniform_(params[f"{target}_A"], a=math.sqrt(5))  # as PEFT: B = 0, so
            self.layers.append(params)  # the model starts exactly at the pretrained function

    def delta(self, layer_id, target, x):
        if target not in self.targets:
            return 0
        params = self.layers[layer_id]
        return self.dropout(x) @ params[f"{target}_A"].t() @ params[f"{target}_B"].t() * self.scaling

    def project(self, layer_id, name, linear, x):
        output = linear(x)
        if name == "query_key_value":
            parts = split_tensor_along_last_dim(output, 3)
            return torch.cat([part + self.delta(layer_id, target, x)
                              for part, target in zip(parts, ("query", "key", "value"))], dim=-1)
        return output + self.delta(layer_id, name, x)

    def attention_forward(self, hidden_states, mask, **kw_args):
        return attention_forward(self.transformer, self.project, hidden_states, mask, **kw_args)


def merged_state(state, spec):
    """`state` (a classifier's) with each LoRA update merged into the weight it adapts, W + (alpha / r) B A,
    and the LoRA tensors gone: the same function as a plain model (sat-ehft export uses it)."""
    scaling, hidden = spec["alpha"] / spec["r"], spec["hidden_size"]
    merged = {k: v for k, v in state.items() if not k.startswith("mixins.lora.")}
    for layer in range(spec["num_layers"]):
        attention = f"transformer.layers.{layer}.attention."
        for target in spec["targets"]:
            params = f"mixins.lora.layers.{layer}.{target}_"
            delta = scaling * (state[params + "B"] @ state[params + "A"])
            if target == "dense":
                merged[attention + "dense.weight"] = merged[attention + "dense.weight"] + delta
            else:  # Q, K and V are row blocks of SAT's fused query_key_value
                fused = merged[attention + "query_key_value.weight"].clone()
                start = ("query", "key", "value").index(target) * hidden
                fused[start:start + hidden] += delta
                merged[attention + "query_key_value.weight"] = fused
    return merged
