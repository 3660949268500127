"""LoRA (Hu et al., 2021) on SAT attention: W x + (alpha / r) * B A x on chosen projections.

Implemented as an `attention_forward` hook rather than by swapping Linear layers (SAT's lora2 swaps
them in place and `del_mixin` cannot undo it), so removing the mixin restores the plain model.
The attention kernel itself stays pluggable through the `attention_fn` hook.
"""

import math

import torch
from sat.model.base_model import BaseMixin
from sat.mpu.utils import split_tensor_along_last_dim
from sat.transformer_defaults import attention_fn_default

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

    def attention_forward(self, hidden_states, mask, **kw_args):
        layer_id = int(kw_args["layer_id"])
        attention = self.transformer.layers[layer_id].attention
        query, key, value = split_tensor_along_last_dim(attention.query_key_value(hidden_states), 3)
        query = attention._transpose_for_scores(query + self.delta(layer_id, "query", hidden_states))
        key = attention._transpose_for_scores(key + self.delta(layer_id, "key", hidden_states))
        value = attention._transpose_for_scores(value + self.delta(layer_id, "value", hidden_states))
        attention_fn = self.transformer.hooks.get("attention_fn", attention_fn_default)
        dropout = attention.attention_dropout if attention.training else None
        context = attention_fn(query, key, value, mask, dropout, **kw_args)
        context = context.permute(0, 2, 1, 3).flatten(2)
        output = attention.dense(context) + self.delta(layer_id, "dense", context)
        return attention.output_dropout(output) if attention.training else output
