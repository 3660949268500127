"""BitFit (Ben Zaken et al., 2022): only the bias terms train. No forward change, so no mixin: the
method selects the bias parameters. EH-FT gets the pretrained biases back exactly by starting Stage 2
from the pretrained backbone loaded afresh (see pipeline.prepare_stage)."""


def bias_names(model, exclude_prefixes=("mixins.",)):
    """Names of the backbone's bias parameters (LayerNorm biases included), mixins excluded."""
    return [n for n, _ in model.named_parameters() if n.endswith(".bias") and not n.startswith(exclude_prefixes)]
