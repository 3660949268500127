"""The run configuration: one typed, frozen dataclass, a docstring line per field.

Values come from the defaults here, then the `recipe` profile (sat_ehft.recipes) the file or `--set` names,
then configs/<task>.yaml (or --config FILE), then `--set key=value`. Unknown keys and ill-typed values fail
with the file (or option) and key named.
"""

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from sat_ehft.precision import PRECISIONS
from sat_ehft.recipes import RECIPES, recipe_values
from sat_ehft.tracking import TRACKERS

STAGE1_MODES = ("share-of-total", "stage2-fixed")
PAIR_INPUTS = ("standard", "original")  # sat_ehft.tasks.base.Task.input_fields reads them
LR_SCHEDULES = ("linear", "sat-annealing")  # sat_ehft.trainer.LR_SCHEDULES implements them
DATA_ORDERS = ("reshuffle", "original")  # sat_ehft.data_order implements them


@dataclass(frozen=True)
class Config:
    recipe: str = "none"
    """A profile of values the file and --set build on: 'original' (the authors' code), 'paper' (its text), 'none'."""
    epochs: int = 10
    """Epochs of plain finetuning; two-stage methods split this same total between their stages."""
    batch_size: int = 32
    """Global batch size (micro-batch x gradient accumulation x data-parallel ranks)."""
    micro_batch_size: int = 32
    """Examples per forward pass on one rank; gradient accumulation makes up the global batch."""
    lr: float = 1e-5
    """Peak learning rate of full finetuning (and of Stage 2)."""
    stage1_lr: dict = field(default_factory=lambda: {"bitfit": 5e-4, "lora": 5e-4, "prefix": 5e-3, "lp": 1e-3})
    """Peak learning rate of a parameter-efficient stage, by what it trains (original code: LP 1e-3)."""
    stage1_share: float = 0.1
    """Stage 1's share of the epochs (paper: 10%)."""
    stage1_mode: str = "share-of-total"
    """'share-of-total': Stage 1 + Stage 2 = epochs; 'stage2-fixed': Stage 2 keeps 90% of epochs whatever Stage 1 gets."""
    warmup: float = 0.1
    """Share of each stage's steps spent warming the learning rate up linearly, then decaying it (see lr_schedule)."""
    lr_schedule: str = "linear"
    """'linear': warm-up, then decay to 0; 'sat-annealing': SAT's AnnealingLR as the original code ran it (a flat 5% of peak for 100 steps, decay to `warmup` x peak)."""
    weight_decay: float = 0.1
    """AdamW weight decay (paper 0.1; the original code used 0.01)."""
    adam_betas: tuple = (0.9, 0.98)
    """AdamW betas."""
    adam_eps: float = 1e-6
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Gradient-norm clipping threshold, 0 for none (the original code used 0.1)."""
    max_length: int = 512
    """Tokens per sequence after truncation; batches are padded to their own longest sequence."""
    pair_input: str = "standard"
    """'standard': BoolQ and QNLI question first; 'original': passage (sentence) first, and every pair truncates only its first segment."""
    precision: str = "fp32"
    """'fp32', 'bf16', 'fp16', 'auto' (bf16 on a GPU that has it, else fp16; fp32 on CPU) or 'fp16-on-gpu' (fp16 on a GPU, fp32 on CPU: the original)."""
    loss_scale_power: int = 16
    """fp16: the dynamic loss scale starts at 2^this (DeepSpeed's default in 2022, which the original ran: 32)."""
    loss_scale_window: int = 1000
    """fp16: steps without an overflow before the loss scale doubles (the original: 400)."""
    loss_scale_hysteresis: int = 2
    """fp16: overflows in a row that the loss scale tolerates before it halves."""
    min_loss_scale: int = 1
    """fp16: the loss scale never falls below this."""
    zero_stage: int = 0
    """DeepSpeed ZeRO stage, 0 to 2."""
    lora_r: int = 8
    """LoRA rank (paper text: 32; the original code and Table 4's headline row: 8)."""
    lora_alpha: float = 16.0
    """LoRA alpha; the update is scaled by alpha / r."""
    lora_targets: tuple = ("query", "key", "value", "dense")
    """Attention projections LoRA adapts (the original code: Q, K, V and O)."""
    prefix_len: int = 17
    """Prefix-tuning prefixes per layer (paper text: 16; the original code: 17)."""
    prefix_in_length: bool = False
    """Runs of a prefix method encode max_length - prefix_len tokens, so input and prefixes fill max_length (the original: 495 + 17)."""
    top_k: int = 3
    """Top-K layer tuning: how many of the last layers train."""
    top_k_layers: str = "hf"
    """'hf': layers as HF counts them (the final LayerNorm trains); 'sat': SAT's layers whole, final LayerNorm frozen (the original code)."""
    bitfit_final_layernorm: bool = True
    """BitFit also trains the final LayerNorm's bias (the original code did not)."""
    bitfit_head_bias: str = "carry"
    """EH-FT(BitFit)'s Stage 2: 'carry' the Stage-1 head's biases with its weights; 'reinit' them (the original code carried the weights only)."""
    mixout_p: float = 0.7
    """Mixout: probability of swapping a weight entry for its pretrained value (searched in {0.7, 0.8, 0.9})."""
    mixout_draw: str = "element"
    """Mixout: 'element' draws per weight entry (the method's paper); 'column' per input column (the original code)."""
    mixout_zero_dropout: bool = False
    """Mixout: set every dropout of the model to 0 while it trains (the original code did)."""
    mixout_head: bool = False
    """Mixout also mixes the head's two Linear layers, towards their initial (random) weights (the original code did)."""
    child_tuning_keep: float = 0.3
    """Child-Tuning_D: fraction of backbone entries, by Fisher information, that train (the original EH-FT code: 0.1)."""
    child_tuning_mask: bool = True
    """Child-Tuning_D masks the gradients outside its child network; false: its Fisher is measured and reported but every entry trains (the original code's mask never reached the optimizer)."""
    child_tuning_fisher: str = "backbone"
    """Child-Tuning_D's Fisher: 'backbone' (every backbone tensor, eval mode); 'original' (layers only, train mode, gradients clipped to 1)."""
    child_tuning_optimizer: str = "config"
    """Child-Tuning_D's AdamW: 'config' (adam_betas, weight_decay as set); 'original' (betas 0.9/0.999, no weight decay)."""
    unpad: bool = True
    """Run the backbone on the real tokens only (padding removed, attention per sequence); False: SAT's padded layout."""
    group_by_length: bool = False
    """Batch training sequences of similar length together (less padding; batches still shuffled)."""
    eval_batch_size: int = 64
    """Examples per forward pass when evaluating."""
    data_order: str = "reshuffle"
    """'reshuffle': a fresh order every epoch, evaluated per epoch; 'original': one permutation per seed for every epoch and stage, batches across epochs, evaluated every N // batch_size steps (sat_ehft.data_order)."""
    eval_every: int = 1
    """Epochs (data_order original: evaluation intervals) between dev evaluations, a stage's last always evaluated (1: every one, as the paper did)."""
    best_metric: str = ""
    """The dev metric that picks the best epoch and is reported; '' the task's first; 'original' the one the paper's numbers most probably are (MRPC accuracy)."""
    log_every: int = 20
    """Optimizer steps between reads of the training loss on the host (each read waits for the device); all are logged."""
    checkpoint_minutes: float = 30.0
    """Minutes of training between resumable checkpoints (one more when a stage ends; at most one per epoch; 0: every epoch)."""
    save_best: bool = True
    """Keep the final stage's best dev epoch's trained tensors (STAGE/best.pt) for predict and export."""
    save_model: bool = False
    """Also write the final classifier as a SAT checkpoint folder RUN/model (large for RoBERTa-large)."""
    track_weight_distance: bool = False
    """Log the backbone's L2 distance from its pretrained weights after every epoch (Figure 5; keeps a copy)."""
    weight_distance_every: int = 0
    """With track_weight_distance, also every N optimizer steps up to step 1,000 (Figure 5's span); 0 for none."""
    report_to: tuple = ("tensorboard",)
    """Trackers that get the training loss and dev metrics besides the JSONL logs: 'tensorboard', 'wandb' (or none)."""

    def __post_init__(self):
        positive = ("epochs", "lr", "max_length", "lora_r", "prefix_len", "batch_size", "micro_batch_size",
                    "eval_batch_size", "eval_every", "log_every", "loss_scale_window", "loss_scale_hysteresis",
                    "min_loss_scale")
        zero_or_less = [name for name in positive if not getattr(self, name) > 0]
        if zero_or_less:  # checked first: the checks below divide by some of them
            raise ValueError(f"invalid config: {', '.join(zero_or_less)} must be positive")
        checks = [
            *[(is_rate(rate), f"{name} must be a finite number above 0, got {rate}") for name, rate in
              [("lr", self.lr), *((f"stage1_lr's {key}", value) for key, value in self.stage1_lr.items())]],
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}"),
            (self.recipe in RECIPES, f"recipe must be one of {tuple(RECIPES)}"),
            (self.stage1_mode in STAGE1_MODES, f"stage1_mode must be one of {STAGE1_MODES}"),
            (self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}"),
            (self.data_order in DATA_ORDERS, f"data_order must be one of {DATA_ORDERS}"),
            (not (self.group_by_length and self.data_order == "original"),
             "group_by_length needs data_order: reshuffle (the original order keeps one permutation)"),
            (self.pair_input in PAIR_INPUTS, f"pair_input must be one of {PAIR_INPUTS}"),
            (self.top_k_layers in ("hf", "sat"), "top_k_layers must be 'hf' or 'sat'"),
            (self.bitfit_head_bias in ("carry", "reinit"), "bitfit_head_bias must be 'carry' or 'reinit'"),
            (self.mixout_draw in ("element", "column"), "mixout_draw must be 'element' or 'column'"),
            (self.child_tuning_fisher in ("backbone", "original"), "child_tuning_fisher must be 'backbone' or 'original'"),
            (self.child_tuning_optimizer in ("config", "original"), "child_tuning_optimizer must be 'config' or 'original'"),
            (0 < self.stage1_share < 1, "stage1_share must lie strictly between 0 and 1"),
            (self.zero_stage in (0, 1, 2), "zero_stage must be 0, 1 or 2"),
            (set(self.report_to) <= set(TRACKERS), f"report_to must name trackers among {tuple(TRACKERS)}"),
            (self.batch_size % self.micro_batch_size == 0, "batch_size must be a multiple of micro_batch_size"),
            (0 <= self.warmup < 1, "warmup must lie in [0, 1)"),
            (self.checkpoint_minutes >= 0, "checkpoint_minutes must be 0 or more"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"invalid config: {message}")


def is_rate(value):
    """A learning rate: a finite number above 0 (NaN, infinities and negatives fail only once training starts)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def evaluated_epochs(epochs, every):
    """The epochs (1-based) of an `epochs`-epoch stage that end with a dev evaluation: every `every`-th, and the
    last, so that a stage always ends with its final scores."""
    return sorted({*range(every, epochs + 1, every), epochs})


def configs_dir():
    """The shipped configs/: inside the installed package (a wheel, see setup.py), else this source checkout's."""
    installed = Path(__file__).resolve().parent / "configs"
    return installed if installed.is_dir() else Path(__file__).resolve().parents[1] / "configs"


def _coerce_number(value):
    """A string YAML 1.1 left unread ("1e-3") as the number it spells; anything else as it is."""
    try:
        return float(value) if isinstance(value, str) else value
    except ValueError:
        return value


def _coerce(key, value, where):
    """Check (and gently convert) `value` against the declared type of `key`."""
    if key not in FIELDS:
        raise ValueError(f"{where}: unknown config key '{key}'; known keys: {', '.join(sorted(FIELDS))}")
    kind = FIELDS[key].type
    kind = typing.get_origin(kind) or kind
    if kind is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)  # YAML 1.1 reads "3e-5" (no dot) as a string
        except ValueError:
            pass
    if kind is dict and isinstance(value, dict):  # stage1_lr: its rates as the float check above reads them
        return {name: _coerce_number(rate) for name, rate in value.items()}
    if kind is tuple and isinstance(value, (list, str)):
        return tuple(value) if isinstance(value, list) else (value,)  # `--set report_to=wandb`: one item
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{where}: config key '{key}' expects {kind.__name__}, got {value!r}")
    return value


def parse_overrides(pairs):
    """['lr=3e-5', 'lora_targets=[query,value]'] -> {'lr': 3e-05, 'lora_targets': ['query', 'value']}."""
    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--set {pair!r}: expected key=value")
        overrides[key.strip()] = yaml.safe_load(text)
    return overrides


def load_config(path=None, overrides=None):
    """Defaults, then the recipe named in the file or `overrides`, then the YAML file at `path`, then `overrides`
    ({key: value}); validated once."""
    explicit = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ValueError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or err})") from None
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping of config keys")
        explicit.update({k: _coerce(k, v, str(path)) for k, v in loaded.items()})
    explicit.update({k: _coerce(k, v, f"--set {k}") for k, v in (overrides or {}).items()})
    recipe = explicit.get("recipe", FIELDS["recipe"].default)
    where = "--set recipe" if "recipe" in (overrides or {}) else str(path)
    profile = {k: _coerce(k, v, f"recipe {recipe}") for k, v in copy.deepcopy(recipe_values(recipe, where)).items()}
    return Config(**{**profile, **explicit})
