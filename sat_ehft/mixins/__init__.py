"""SAT mixins for EH-FT: the classification head and the parameter-efficient modules.

A model's mixins are described by specs, {name: constructor kwargs}, stored in model_config.json under
`ehft_mixins`, so that a saved classifier (head and PET modules included) is rebuilt by SAT's
`AutoModel.from_pretrained` as well as by our own loader.
"""

from sat_ehft.mixins.bitfit import bias_names, is_backbone_parameter
from sat_ehft.mixins.head import HEAD_NAME, ClassificationHead, add_head, add_mixin
from sat_ehft.mixins.lora import LORA_TARGETS, LoRAMixin
from sat_ehft.mixins.mixout import MixoutMixin
from sat_ehft.mixins.prefix import PrefixTuningMixin

MIXIN_CLASSES = {HEAD_NAME: ClassificationHead, "lora": LoRAMixin, "prefix": PrefixTuningMixin, "mixout": MixoutMixin}


def attach(model, specs):
    """Add the mixins described by `specs` ({name: kwargs}, in order) to `model`."""
    unknown = set(specs) - set(MIXIN_CLASSES)
    if unknown:
        raise ValueError(f"unknown mixin(s) {sorted(unknown)}; known: {sorted(MIXIN_CLASSES)}")
    for name, kwargs in specs.items():
        add_mixin(model, name, MIXIN_CLASSES[name](**kwargs))
        model.get_mixin(name).reinit(model)  # lets Mixout snapshot the weights it mixes back in
    return model


__all__ = ["HEAD_NAME", "LORA_TARGETS", "MIXIN_CLASSES", "ClassificationHead", "LoRAMixin", "MixoutMixin", "PrefixTuningMixin",
           "add_head", "add_mixin", "attach", "bias_names", "is_backbone_parameter"]
