"""Two-stage methods: LP-FT, EH-FT with BitFit/LoRA/prefix in Stage 1, and EH-FT-reserve.

Stage 2 starts from the pretrained backbone afresh; only what `carries` names comes across.
"""

from sat_ehft.methods.base import Method, Stage
from sat_ehft.methods.registry import register


def two_stage(name, stage1, stage2_mixins=(), carries=("head",)):
    return register(Method(name, (stage1, Stage("stage2", trains="all", mixins=stage2_mixins, carries=carries))))


two_stage("lp-ft", Stage("stage1", trains="head", lr="lp"))
two_stage("ehft-bitfit", Stage("stage1", trains="bias", lr="bitfit"), carries=("bitfit-head",))
two_stage("ehft-lora", Stage("stage1", trains="lora", lr="lora", mixins=("lora",)))
two_stage("ehft-prefix", Stage("stage1", trains="prefix", lr="prefix", mixins=("prefix",)))
two_stage("ehft-bitfit-reserve", Stage("stage1", trains="bias", lr="bitfit"), carries=("head", "bias"))
two_stage("ehft-lora-reserve", Stage("stage1", trains="lora", lr="lora", mixins=("lora",)),
          stage2_mixins=("lora",), carries=("head", "lora"))
