"""SAT's attention and MLP forward passes with every Linear projection routed through `project`.

A mixin that changes how projections compute (LoRA adds a low-rank update, Mixout mixes in the
pretrained weights) supplies `project(layer_id, name, linear, x)` and otherwise keeps SAT's pass as is,
including the pluggable `attention_fn` kernel.
"""

from sat.mpu.utils import split_tensor_along_last_dim
from sat.transformer_defaults import attention_fn_default


def projections(layer):
    """(name, Linear) of one SAT layer's projections, named as `project` receives them."""
    return (("query_key_value", layer.attention.query_key_value), ("dense", layer.attention.dense),
            ("dense_h_to_4h", layer.mlp.dense_h_to_4h), ("dense_4h_to_h", layer.mlp.dense_4h_to_h))


def attention_forward(transformer, project, hidden_states, mask, **kw_args):
    layer_id = int(kw_args["layer_id"])
    attention = transformer.layers[layer_id].attention
    mixed = project(layer_id, "query_key_value", attention.query_key_value, hidden_states)
    query, key, value = (attention._transpose_for_scores(t) for t in split_tensor_along_last_dim(mixed, 3))
    attention_fn = transformer.hooks.get("attention_fn", attention_fn_default)
    dropout = attention.attention_dropout if attention.training else None
    context = attention_fn(query, key, value, mask, dropout, **kw_args).permute(0, 2, 1, 3).flatten(2)
    output = project(layer_id, "dense", attention.dense, context)
    return attention.output_dropout(output) if attention.training else output


def mlp_forward(transformer, project, hidden_states, **kw_args):
    layer_id = int(kw_args["layer_id"])
    mlp = transformer.layers[layer_id].mlp
    inner = mlp.activation_func(project(layer_id, "dense_h_to_4h", mlp.dense_h_to_4h, hidden_states))
    return project(layer_id, "dense_4h_to_h", mlp.dense_4h_to_h, inner)  # SAT's MLP applies dropout after
