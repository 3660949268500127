"""Which floating-point format a run trains in, and fp16's dynamic loss scale.

Config `precision` names a format or a rule; `resolve_precision` turns it into the format this machine runs.
Under fp16, DeepSpeed scales the loss by a dynamic factor; a step whose scaled gradients overflow is skipped:
its batch is consumed, but neither the optimizer nor the LR scheduler steps (DeepSpeed's engine,
`_take_model_step`, then and now), and the scale comes down. How fast it comes down and grows back is set by
the config keys `loss_scale_power`, `loss_scale_window`, `loss_scale_hysteresis` and `min_loss_scale`. The
original code ran DeepSpeed's 2022 defaults (start at 2^32, window 400, hysteresis 2, minimum 1): a stage's
first ~18 steps overflowed while the scale came down from 2^32 (sat_ehft.recipes). Today's DeepSpeed doubles
the scale after window + 1 steps without an overflow, 2022's after window: one step in 400 apart. Each epoch's
record counts the steps skipped in it, and a stage's done.json their sum.
"""

import torch

PRECISIONS = ("fp32", "bf16", "fp16", "auto", "fp16-on-gpu")


def resolve_precision(precision):
    """The format `precision` stands for here. 'auto': bf16 on a GPU that has it (Ampere and later), fp16 on an
    older GPU, fp32 on CPU (DeepSpeed refuses fp16 there and bf16 is slow); 'fp16-on-gpu': fp16 on any GPU, fp32
    on CPU (the original code's fp16); any other value as it is."""
    if precision not in ("auto", "fp16-on-gpu"):
        return precision
    if not torch.cuda.is_available():
        return "fp32"
    return "bf16" if precision == "auto" and torch.cuda.is_bf16_supported() else "fp16"


def deepspeed_precision(config):
    """The DeepSpeed config entries of `config`'s precision: none for fp32; fp16 with its dynamic loss scale."""
    precision = resolve_precision(config.precision)
    if precision == "bf16":
        return {"bf16": {"enabled": True}}
    if precision == "fp16":
        return {"fp16": {"enabled": True, "loss_scale": 0, "initial_scale_power": config.loss_scale_power,
                         "loss_scale_window": config.loss_scale_window, "hysteresis": config.loss_scale_hysteresis,
                         "min_loss_scale": config.min_loss_scale}}  # DeepSpeed >= 0.17 rejects a non-integer minimum
    return {}


def skipped_steps(records):
    """The optimizer steps a stage's loss scaler skipped, from its epoch records (0 unless fp16)."""
    return sum(record.get("skipped_steps", 0) for record in records)
