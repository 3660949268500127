"""Where a run's wall time went (each stage's done.json `cost`), and that cost projected to other epoch counts.

Training and steps grow with the epochs, evaluation with the epochs evaluated (eval_every); a stage
checkpoints every `checkpoint_minutes` of its wall time and once more at its end, each checkpoint as large and
as slow as the measured ones; set-up (loading the model, encoding or reading the data) does not grow.
"""

import math
from pathlib import Path

from sat_ehft.atomic import read_json
from sat_ehft.config import evaluated_epochs, load_config
from sat_ehft.methods import get_method


def stage_costs(run_folder):
    """(run.json, [done.json of each stage, in order]) of a finished run, each done.json written by this run's
    stage (where it records its origin) and holding a cost record."""
    from sat_ehft.pipeline import origin_differences, read_spec, stage_origin

    run_folder = Path(run_folder)
    recorded = read_json(run_folder / "run.json")
    spec, dones = read_spec(recorded), []
    for stage in get_method(recorded["method"]).stages:
        path = run_folder / stage.name / "done.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing; the run has not finished {stage.name} (rerun its training "
                                    "command to finish it)")
        done = read_json(path)
        differing = origin_differences(done.get("origin") or {}, stage_origin(spec, stage))
        if differing:
            raise ValueError(f"{path}: written by another run ({'; '.join(differing)}); cost reads a run's own stages")
        if "cost" not in done:
            raise ValueError(f"{path}: has no cost record (the stage finished under a sat-ehft older than cost "
                             "measurement); only runs trained since can be costed")
        dones.append(done)
    return recorded, dones


def stage_figures(done, epochs, checkpoint_minutes, measured_every=1, eval_every=None):
    """One stage's cost at `epochs`, from its done.json measured evaluating every `measured_every` epochs;
    evaluation grows with the epochs evaluated, every `eval_every` (by default as measured) and the last."""
    cost, scale = done["cost"], epochs / done["epochs"]
    evaluations = (len(evaluated_epochs(epochs, eval_every or measured_every))
                   / len(evaluated_epochs(done["epochs"], measured_every)))
    train, evaluation = cost["train_seconds"] * scale, cost["eval_seconds"] * evaluations
    checkpoints = 1 + (math.floor((train + evaluation) / (checkpoint_minutes * 60)) if checkpoint_minutes else epochs - 1)
    checkpoints = min(checkpoints, epochs)  # at most one per epoch
    each = cost["checkpoints"] or 1
    return {"epochs": epochs, "steps": round(done["last"]["step"] * scale), "train_seconds": train,
            "eval_seconds": evaluation, "checkpoints": checkpoints,
            "checkpoint_seconds": cost["checkpoint_seconds"] / each * checkpoints,
            "checkpoint_bytes": cost["checkpoint_bytes"] / each * checkpoints, "setup_seconds": cost["setup_seconds"]}


def run_figures(run_folder, total_epochs=None, eval_every=None):
    """A run's summed cost over its stages, at its own epochs or projected to `total_epochs` (split between
    the stages as the method splits them), evaluating as it did or every `eval_every` epochs."""
    recorded, dones = stage_costs(run_folder)
    config = load_config(overrides={**recorded["config"], **({"epochs": total_epochs} if total_epochs else {})})
    split = get_method(recorded["method"]).stage_epochs(config)
    stages = [stage_figures(done, epochs, config.checkpoint_minutes, config.eval_every, eval_every)
              for done, epochs in zip(dones, split)]
    total = {key: sum(s[key] for s in stages) for key in stages[0]}
    overhead = total["eval_seconds"] + total["checkpoint_seconds"] + total["setup_seconds"]
    total["overhead_share"] = overhead / (overhead + total["train_seconds"])
    return {"task": recorded["task"], "method": recorded["method"], "measured_epochs": sum(d["epochs"] for d in dones),
            **total}


def table(run_folders, paper_epochs, eval_every=None):
    """Markdown: each run's measured cost, projected to `paper_epochs` ({task: epochs}) of its task (and to
    an evaluation every `eval_every` epochs, if given)."""
    rows = ["| task | method | epochs measured -> projected | steps | training s | evaluation s | checkpoints "
            "(s, MB) | set-up s | eval + checkpoint + set-up |", "|---|---|---|---|---|---|---|---|---|"]
    for folder in run_folders:
        measured = run_figures(folder)
        figures = run_figures(folder, paper_epochs[measured["task"]], eval_every)
        rows.append(f"| {figures['task']} | {figures['method']} | {measured['measured_epochs']} -> {figures['epochs']} | "
                    f"{figures['steps']} | {figures['train_seconds']:.0f} | {figures['eval_seconds']:.0f} | "
                    f"{figures['checkpoints']} ({figures['checkpoint_seconds']:.1f}, "
                    f"{figures['checkpoint_bytes'] / 2 ** 20:.0f}) | {figures['setup_seconds']:.1f} | "
                    f"{100 * figures['overhead_share']:.1f}% |")
    return "\n".join(rows)
