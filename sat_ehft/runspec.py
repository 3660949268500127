"""What identifies a run, and how a run folder's run.json is compared with it.

No torch here: `sat-ehft sweep` compares every run folder of a grid with the run it would start before
starting any, and the training process compares its own folder (sat_ehft.pipeline.check_run_folder).
"""

import dataclasses
import json
import os
from dataclasses import dataclass


# Which epoch's weights of a finished run predict and export use: the final stage's best dev epoch (best.pt,
# config save_best) or its last (trained.pt, or RUN/model).
WEIGHTS = ("best", "last")


@dataclass(frozen=True)
class RunSpec:
    task: str
    method: str
    model: str  # SAT folder, HF folder or model name
    data_dir: str  # official files; None reads the task from the Hugging Face hub
    seed: int
    config: object  # sat_ehft.config.Config

    def describe(self):
        return {**dataclasses.asdict(self), "config": dataclasses.asdict(self.config)}


def described(spec):
    return json.loads(json.dumps(spec.describe()))  # as it reads back from JSON (tuples become lists)


# Folders a run records absolute and normalised (train and sweep alike: launch files run wherever a scheduler
# starts them, and predict or report may run from anywhere); one recorded relative by an older version matches
# from the same working directory.
PATH_KEYS = ("model", "data_dir")


def absolute_path(path):
    """`path` absolute and normalised (no '..'), or a model name that is no folder here, as given."""
    return os.path.abspath(path) if os.path.exists(path) else path


def same_value(key, wanted, recorded):
    if key in PATH_KEYS and isinstance(wanted, str) and isinstance(recorded, str):
        return os.path.abspath(wanted) == os.path.abspath(recorded)
    return wanted == recorded


def differing_keys(spec, recorded):
    """The keys in which run.json's content `recorded` describes another run than `spec` ('config.lr', 'seed').
    A config key the run.json lacks was added to Config after the run started; it counts as its default,
    since a new key's default keeps the behaviour from before it existed (`unpad` computes the same function
    in another floating-point order), so a grid started on an older version still resumes."""
    from sat_ehft.config import Config

    wanted = described(spec)
    differing = [k for k in wanted if k != "config" and not same_value(k, wanted[k], recorded.get(k))]
    defaults = described(dataclasses.replace(spec, config=Config()))["config"]
    recorded_config = {**defaults, **recorded["config"]}
    return differing + [f"config.{k}" for k, v in wanted["config"].items() if v != recorded_config.get(k)]
