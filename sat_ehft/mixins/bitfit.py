"""BitFit (Ben Zaken et al., 2022): only the bias terms train. No forward change, so no mixin:
the method selects the bias parameters, and EH-FT snapshots them to restore them exactly."""

import torch


def bias_names(model, exclude_prefixes=("mixins.",)):
    """Names of the backbone's bias parameters (LayerNorm biases included), mixins excluded."""
    return [n for n, _ in model.named_parameters() if n.endswith(".bias") and not n.startswith(exclude_prefixes)]


def snapshot(model, names):
    """Exact copies of the named parameters."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().clone() for name in names}


@torch.no_grad()
def restore(model, saved):
    """Copy a snapshot back in place, bit for bit."""
    params = dict(model.named_parameters())
    for name, value in saved.items():
        params[name].copy_(value)
