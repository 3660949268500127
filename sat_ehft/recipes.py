"""Recipe profiles: named sets of config values, applied under a config file's own keys and `--set`.

`original` is what the authors' code (THUDM/Efficient-Head-Finetuning on the SAT fork, 0.1.9, it ships) ran,
which produced the published numbers (../shared/ORIGINAL-SETUP.md); `paper` is the paper's text where it
differs from that code; `none` leaves the dataclass defaults of sat_ehft.config.Config. Tasks, mixins and the
trainer read the resolved keys, never a recipe's name. README.md's recipe table lists the same values (a
test keeps them equal).
"""

ORIGINAL = {
    "lr_schedule": "sat-annealing",  # the fork's AnnealingLR per stage: a flat 5% for 100 steps, decay to 10% of peak
    "clip_grad": 0.1,
    "weight_decay": 0.01,
    "adam_betas": (0.9, 0.98),
    "adam_eps": 1e-6,
    "precision": "fp16-on-gpu",  # --fp16 (finetune.sh:86); fp32 on CPU, where DeepSpeed refuses fp16
    "loss_scale_power": 32,  # DeepSpeed's FP16_INITIAL_SCALE_POWER_DEFAULT in 2022 (16 today)
    "loss_scale_window": 400,  # run_multiseed.py:13-19
    "loss_scale_hysteresis": 2,
    "min_loss_scale": 1,
    "data_order": "original",  # one permutation per seed, batches across epochs, evaluated every N // 32 steps
    "pair_input": "original",  # BoolQ (passage, question), QNLI (sentence, question); the first segment truncated
    "lora_r": 8,
    "lora_alpha": 16.0,
    "lora_targets": ("query", "key", "value", "dense"),
    "prefix_len": 17,
    "prefix_in_length": True,  # prefix runs encoded at 512 - 17 = 495 tokens
    "stage1_lr": {"bitfit": 5e-4, "lora": 5e-4, "prefix": 5e-3, "lp": 1e-3},
    "bitfit_final_layernorm": False,  # its BitFit set: every per-layer bias, not final_layernorm.bias
    "bitfit_head_bias": "reinit",  # EH-FT(BitFit)'s Stage 2 took the head's weights only (finetune_roberta.py:315-341)
    "top_k_layers": "sat",  # `all[21-23]`: SAT layers 21-23 whole, the final LayerNorm frozen
    "mixout_draw": "column",  # one Bernoulli draw per input column, repeated over the rows
    "mixout_zero_dropout": True,  # and every nn.Dropout set to p = 0
    "mixout_head": True,  # every nn.Linear became a MixLinear, the head's included (its target: the random init)
    "mixout_p": 0.7,  # hard-coded
    "child_tuning_fisher": "original",  # over transformer.layers.* only, train mode, each gradient clipped to 1
    "child_tuning_optimizer": "original",  # ChildTuningAdamW: betas (0.9, 0.999), no weight decay
    "child_tuning_keep": 0.1,  # reserve_p
    "child_tuning_mask": False,  # keyed by the fp16 parameters, looked up against DeepSpeed's fp32 copies: never met
    "best_metric": "original",  # MRPC selected and compared on accuracy, which its published column most probably is
}

PAPER = {
    **ORIGINAL,
    "lr_schedule": "linear",  # "10% warmup, linear decay" (to 0)
    "precision": "auto",  # bf16 where the GPU has it: the text's fp16 overflows more easily and is no faster there
    "loss_scale_power": 16,  # today's DeepSpeed defaults, for fp16 on older GPUs
    "loss_scale_window": 1000,
    "best_metric": "",  # MRPC on F1, as the text says
    "bitfit_head_bias": "carry",  # "only keep the trained head"
    "mixout_head": False,  # Mixout mixes a pretrained model's weights with their pretrained values
    "child_tuning_mask": True,  # Child-Tuning_D as its paper (Xu et al.) defines it
    "weight_decay": 0.1,
    "lora_r": 32,
    "prefix_len": 16,
    "stage1_lr": {"bitfit": 5e-4, "lora": 5e-4, "prefix": 5e-3, "lp": 5e-4},
}

RECIPES = {"none": {}, "original": ORIGINAL, "paper": PAPER}


def recipe_values(name, where):
    """The config values recipe `name` sets; an unknown name is an error naming `where` it came from."""
    if name not in RECIPES:
        raise ValueError(f"{where}: unknown recipe '{name}'; known recipes: {', '.join(RECIPES)}")
    return RECIPES[name]
