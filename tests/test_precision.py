"""Precision: what each setting resolves to, and fp16's loss scale driven through DeepSpeed's own scaler."""

import pytest
import torch

from sat_ehft.config import load_config
from sat_ehft.precision import deepspeed_precision, resolve_precision, skipped_steps
from sat_ehft.trainer import deepspeed_config, ensure_distributed


@pytest.mark.parametrize("precision, on_cpu, on_gpu", [("auto", "fp32", "bf16"), ("fp16-on-gpu", "fp32", "fp16"),
                                                       ("fp16", "fp16", "fp16"), ("fp32", "fp32", "fp32")])
def test_each_precision_resolves_per_machine(monkeypatch, precision, on_cpu, on_gpu):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision(precision) == on_cpu
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision(precision) == on_gpu


def test_the_original_recipe_trains_in_fp16_on_a_gpu_and_fp32_on_cpu(monkeypatch):
    original, paper = load_config(overrides={"recipe": "original"}), load_config(overrides={"recipe": "paper"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert deepspeed_precision(original) == deepspeed_precision(paper) == {}  # CPU: fp32 for both
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert deepspeed_precision(original)["fp16"] == {"enabled": True, "loss_scale": 0, "initial_scale_power": 32,
                                                     "loss_scale_window": 400, "hysteresis": 2, "min_loss_scale": 1}
    assert deepspeed_precision(paper) == {"bf16": {"enabled": True}}


def loss_scaler(config):
    """DeepSpeed's dynamic loss scaler as its engine builds one from the DeepSpeed config we write (parsed by
    DeepSpeed's own fp16 section reader, as DeepSpeedConfig does)."""
    from deepspeed.runtime.fp16.loss_scaler import CreateLossScaler
    from deepspeed.runtime.precision_config import get_float16_config

    fp16 = get_float16_config(deepspeed_config(config, world_size=1))
    return CreateLossScaler(torch.float16, 0, True, fp16.dynamic_loss_scale_args())


def skipped_at(scaler, steps, gradient=1.0):
    """The steps (0-based) whose fp16 gradients overflow: a gradient of `gradient`, scaled by the current scale
    and cast to fp16 as DeepSpeed's fp16 backward produces it, is not finite."""
    skipped = []
    for step in range(steps):
        overflow = not torch.isfinite(torch.tensor(gradient * scaler.cur_scale).half()).item()
        scaler.update_scale(overflow)
        skipped += [step] if overflow else []
    return skipped


@pytest.mark.parametrize("recipe, power, window", [("original", 32, 400), ("paper", 16, 1000)])
def test_fp16_skips_the_steps_the_2022_loss_scale_skipped(recipe, power, window):
    """From 2^power with hysteresis 2: one overflow tolerated, then the scale halves at every overflow until a
    gradient of 1 stays finite in fp16 (2^15: 2^16 = 65536 rounds to inf), so 1 + (power - 15) steps are
    skipped at the start of a stage (18 under the original's 2^32). After `window` + 1 steps without an overflow
    the scale doubles (the DeepSpeed of 2022 doubled it one step sooner), which overflows again: two more skips."""
    ensure_distributed()  # the scaler logs each overflow on rank 0
    config = load_config(overrides={"recipe": recipe, "precision": "fp16"})  # fp16 whatever the machine
    first = 1 + power - 15
    last_overflow = first - 1
    grown = last_overflow + window + 2  # the first step at the doubled scale
    expected = list(range(first)) + [grown, grown + 1] + [grown + 1 + window + 2, grown + 1 + window + 3]
    assert skipped_at(loss_scaler(config), grown + 2 * window) == expected


def test_a_stages_skipped_steps_sum_its_epochs():
    records = [{"epoch": 1, "skipped_steps": 18}, {"epoch": 2, "skipped_steps": 0}, {"epoch": 3, "skipped_steps": 2}]
    assert skipped_steps(records) == 20 and skipped_steps([{"epoch": 1}]) == 0  # fp32 and bf16 skip none
