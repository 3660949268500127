"""A method is a plan of stages; a stage says which PET mixins exist, what trains and at which LR.

Methods know nothing about tasks; the pipeline runs their stages in order and carries what a stage
names in `carries` from the previous one (EH-FT: the head; EH-FT-reserve: the head and the PET part).
"""

from dataclasses import dataclass

PAPER_STAGE1_SHARE = 0.1  # Stage 2 keeps 90% of the epochs in 'stage2-fixed' mode
POLICIES = ("all", "head", "bias", "lora", "prefix", "topk")


def lora_spec(config, model_config):
    return {"num_layers": model_config["num_layers"], "hidden_size": model_config["hidden_size"],
            "r": config.lora_r, "alpha": config.lora_alpha, "targets": list(config.lora_targets)}


def prefix_spec(config, model_config):
    heads = model_config["num_attention_heads"]
    return {"num_layers": model_config["num_layers"], "num_heads": heads,
            "head_size": model_config["hidden_size"] // heads, "prefix_len": config.prefix_len}


def mixout_spec(config, model_config):
    return {"p": config.mixout_p, "draw": config.mixout_draw, "zero_dropout": config.mixout_zero_dropout,
            "head": config.mixout_head}


# Method mixin name -> its constructor kwargs (a spec, see sat_ehft.mixins.attach) for a config and backbone.
PET_MIXINS = {"lora": lora_spec, "prefix": prefix_spec, "mixout": mixout_spec}


@dataclass(frozen=True)
class Stage:
    name: str  # "train" for one-stage methods; "stage1" / "stage2"
    trains: str  # parameter policy, one of POLICIES (the head always trains)
    lr: str = "ft"  # "ft": config.lr; otherwise a key of config.stage1_lr
    mixins: tuple = ()  # PET mixins present in this stage, keys of PET_MIXINS
    # what this stage takes over from the previous one: "head", "bias", "lora", "prefix"; "bitfit-head": the head,
    # its biases as config bitfit_head_bias says (the original's BitFit branch carried the weights only)
    carries: tuple = ()
    fisher_mask: bool = False  # Child-Tuning_D: only the backbone entries of highest Fisher information train

    def __post_init__(self):
        if self.trains not in POLICIES:
            raise ValueError(f"stage {self.name}: unknown parameter policy '{self.trains}'; known: {POLICIES}")
        unknown = set(self.mixins) - set(PET_MIXINS)
        if unknown:
            raise ValueError(f"stage {self.name}: unknown PET mixin(s) {sorted(unknown)}; known: {sorted(PET_MIXINS)}")

    def peak_lr(self, config):
        return config.lr if self.lr == "ft" else config.stage1_lr[self.lr]

    def mixin_specs(self, model_config, config):
        """{mixin name: constructor kwargs} of this stage's PET mixins."""
        return {name: PET_MIXINS[name](config, model_config) for name in self.mixins}

    def trainable_names(self, model, config):
        """Exactly the parameters this stage trains."""
        names = [n for n, _ in model.named_parameters()]
        head = {n for n in names if n.startswith("mixins.head.")}
        if self.trains == "all":
            return set(names)
        if self.trains == "bias":
            # Imported here: sat_ehft.mixins imports SAT (seconds), and the CLI checks method names before that.
            from sat_ehft.mixins import bias_names

            return head | set(bias_names(model, config.bitfit_final_layernorm))
        if self.trains in ("lora", "prefix"):
            return head | {n for n in names if n.startswith(f"mixins.{self.trains}.")}
        if self.trains == "topk":
            return head | top_layer_names(names, len(model.transformer.layers), config.top_k, config.top_k_layers)
        return head

    def freeze_others(self, model, config):
        trainable = self.trainable_names(model, config)
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trainable)
        return trainable


def top_layer_names(names, num_layers, k, counting="hf"):
    """The parameters of the top k layers. 'hf': as HF counts layers (SAT's post-LN layer i holds HF layer
    i-1's output LayerNorm as its input LayerNorm, and HF's last one is SAT's final LayerNorm); 'sat': SAT's
    layers whole and the final LayerNorm frozen, as the original code's `all[21-23]` trained them."""
    if not 0 < k <= num_layers:
        raise ValueError(f"top_k={k} must lie in 1..{num_layers} (the model's layers)")
    first = num_layers - k
    layers = tuple(f"transformer.layers.{i}." for i in range(first, num_layers))
    if counting == "sat":
        return {n for n in names if n.startswith(layers)}
    top = layers + ("transformer.final_layernorm.",)
    return {n for n in names if n.startswith(top) and not n.startswith(f"transformer.layers.{first}.input_layernorm.")}


@dataclass(frozen=True)
class Method:
    name: str
    stages: tuple

    def check(self, config):
        """Fail now, not after a stage has trained, when `config` leaves a stage without epochs or a learning rate."""
        for stage, epochs in zip(self.stages, self.stage_epochs(config)):
            if epochs < 1:
                raise ValueError(f"invalid config for {self.name}: epochs={config.epochs} with stage1_mode="
                                 f"{config.stage1_mode} leaves {stage.name} {epochs} epochs")
            if stage.lr != "ft" and stage.lr not in config.stage1_lr:
                raise ValueError(f"invalid config for {self.name}: stage1_lr has no '{stage.lr}' entry ({stage.name}'s "
                                 f"peak LR); it has {', '.join(sorted(config.stage1_lr)) or 'none'}")

    def stage_epochs(self, config):
        """Epochs of each stage: one stage takes them all; two split them by config.stage1_share."""
        if len(self.stages) == 1:
            return [config.epochs]
        stage1 = max(1, round(config.epochs * config.stage1_share))
        if config.stage1_mode == "stage2-fixed":
            return [stage1, config.epochs - max(1, round(config.epochs * PAPER_STAGE1_SHARE))]
        if stage1 >= config.epochs:
            raise ValueError(f"epochs={config.epochs} leaves nothing for Stage 2 at stage1_share={config.stage1_share}")
        return [stage1, config.epochs - stage1]
