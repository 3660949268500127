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
    "precision": "auto",  # the original trained in fp16; bf16 where the GPU has it, fp32 on CPU
    "pair_input": "original",  # BoolQ (passage, question), QNLI (sentence, question); the first segment truncated
    "lora_r": 8,
    "lora_alpha": 16.0,
    "lora_targets": ("query", "key", "value", "dense"),
    "prefix_len": 17,
    "prefix_in_length": True,  # prefix runs encoded at 512 - 17 = 495 tokens
    "stage1_lr": {"bitfit": 5e-4, "lora": 5e-4, "prefix": 5e-3, "lp": 1e-3},
    "bitfit_final_layernorm": False,  # its BitFit set: every per-layer bias, not final_layernorm.bias
    "top_k_layers": "sat",  # `all[21-23]`: SAT layers 21-23 whole, the final LayerNorm frozen
    "mixout_draw": "column",  # one Bernoulli draw per input column, repeated over the rows
    "mixout_zero_dropout": True,  # and every nn.Dropout set to p = 0
    "child_tuning_fisher": "original",  # over transformer.layers.* only, train mode, each gradient clipped to 1
    "child_tuning_optimizer": "original",  # ChildTuningAdamW: betas (0.9, 0.999), no weight decay
}

PAPER = {
    **ORIGINAL,
    "lr_schedule": "linear",  # "10% warmup, linear decay" (to 0)
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
