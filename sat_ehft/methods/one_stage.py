"""Single-stage baselines of Table 1: finetuning, linear probing, the PET methods alone, Top-K tuning,
Mixout and Child-Tuning_D."""

from sat_ehft.methods.base import Method, Stage
from sat_ehft.methods.registry import register

register(Method("ft", (Stage("train", trains="all"),)))
register(Method("lp", (Stage("train", trains="head", lr="lp"),)))
register(Method("bitfit", (Stage("train", trains="bias", lr="bitfit"),)))
register(Method("lora", (Stage("train", trains="lora", lr="lora", mixins=("lora",)),)))
register(Method("prefix", (Stage("train", trains="prefix", lr="prefix", mixins=("prefix",)),)))
register(Method("topk", (Stage("train", trains="topk"),)))
register(Method("mixout", (Stage("train", trains="all", mixins=("mixout",)),)))
register(Method("child-tuning-d", (Stage("train", trains="all", fisher_mask=True),)))
