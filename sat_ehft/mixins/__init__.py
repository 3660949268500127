"""SAT mixins for EH-FT: the classification head and the parameter-efficient modules."""

from sat_ehft.mixins.bitfit import bias_names, restore, snapshot
from sat_ehft.mixins.head import HEAD_NAME, ClassificationHead, add_head, add_mixin
from sat_ehft.mixins.lora import LORA_TARGETS, LoRAMixin
from sat_ehft.mixins.prefix import PrefixTuningMixin

__all__ = ["HEAD_NAME", "LORA_TARGETS", "ClassificationHead", "LoRAMixin", "PrefixTuningMixin", "add_head", "add_mixin",
           "bias_names", "restore", "snapshot"]
