"""BitFit (Ben Zaken et al., 2022): only the bias terms train. No forward change, so no mixin: the
method selects the bias parameters. EH-FT gets the pretrained biases back exactly by starting Stage 2
from the pretrained backbone loaded afresh (see pipeline.prepare_stage)."""

# SAT keeps BERT's token-type embedding in a mixin, but it belongs to the pretrained backbone.
BACKBONE_MIXINS = ("mixins.bert-type.",)


def is_backbone_parameter(name):
    """True for the pretrained backbone's parameters; False for the head's and the PET modules'."""
    return not name.startswith("mixins.") or name.startswith(BACKBONE_MIXINS)


FINAL_LAYERNORM_BIAS = "transformer.final_layernorm.bias"


def bias_names(model, final_layernorm=True):
    """Names of the backbone's bias parameters (LayerNorm biases included; the final LayerNorm's only when
    `final_layernorm`: the original code's BitFit left it out)."""
    return [n for n, _ in model.named_parameters() if n.endswith(".bias") and is_backbone_parameter(n)
            and (final_layernorm or n != FINAL_LAYERNORM_BIAS)]
