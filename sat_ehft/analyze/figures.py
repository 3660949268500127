"""One function per figure: read run folders, compute, write FIGURE.png and FIGURE.json into `out`."""

import hashlib
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sat_ehft.atomic import atomic_path, write_json


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _label(run):
    from sat_ehft.pipeline import read_run

    return read_run(run).method


def _save(out, name, data, draw):
    """Write NAME.json (the numbers) and NAME.png (drawn by `draw(axes_or_figure)`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    write_json(out / f"{name}.json", data)
    figure = draw(plt)
    with atomic_path(out / f"{name}.png") as tmp:
        figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return data


def _lines(curves, x, y, xlabel, ylabel, marker=None):
    """A draw function: one line per {label: entry} of `curves`, entry[x] against entry[y]."""

    def draw(plt):
        figure, axes = plt.subplots(figsize=(6, 4))
        for label, entry in curves.items():
            axes.plot(entry[x], entry[y], label=label, marker=marker, linewidth=1)
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        axes.legend(fontsize=8)
        return figure

    return draw


def _by_method(data):
    """{'<method> (<run folder name>)': entry} for the legend."""
    return {f"{entry['method']} ({Path(run).name})": entry for run, entry in data.items()}


def _stage_names(run):
    from sat_ehft.methods import get_method
    from sat_ehft.pipeline import read_run

    return [stage.name for stage in get_method(read_run(run).method).stages]


def _final_stage(run):
    return _stage_names(run)[-1]


FEATURE_CHANGE = "feature_change.json"  # a run's own Figure 1 numbers, kept beside its results


def feature_change(runs, out, stage=None):
    """Figure 1: L2 distance between the head's input features on the training set, pretrained backbone vs
    the backbone each run left (its final stage, or `stage`), averaged over examples, then its mean and spread
    over seeds per task and method. For a two-stage method also the distance between Stage 1's features (its
    PET module in place) and the final stage's, the paper's section 2 measure (EH-FT(PT) 27.4, EH-FT(BitFit)
    27.9, LP-FT 36.7). A finished run's final-stage numbers are written to RUN/feature_change.json with a hash
    of its result.json, and read from there while that hash holds, so a figure over committed results (which
    keep no weights) needs none."""
    per_run = {}
    pretrained_features = {}  # one pass of the pretrained backbone per training set, whatever the runs on it
    for run in runs:
        kept = kept_feature_change(run) if stage is None else None
        if kept is not None:
            per_run[str(run)] = kept
            continue
        per_run[str(run)] = _run_feature_change(run, stage, pretrained_features)
        if stage is None and (Path(run) / "result.json").is_file():
            write_json(Path(run) / FEATURE_CHANGE, {**per_run[str(run)], "result_sha256": _result_digest(run)})
    data = {"runs": per_run, "by_task": _spread_by_task_and_method(per_run, ("distance", "stage1_distance"))}

    def draw(plt):
        tasks = sorted(data["by_task"])
        figure, axes = plt.subplots(len(tasks), 2, figsize=(10, 0.6 + 2.4 * len(tasks)), squeeze=False)
        for (pretrained, stage1), task in zip(axes, tasks):
            methods = data["by_task"][task]
            names = list(methods)
            for axis, key in ((pretrained, "distance"), (stage1, "stage1_distance")):
                spreads = [methods[n].get(key, {"mean": 0.0, "std": 0.0}) for n in names]
                axis.barh(names, [s["mean"] for s in spreads], xerr=[s["std"] for s in spreads], capsize=3)
            pretrained.set_ylabel(task)
        axes[-1][0].set_xlabel("pretrained vs final stage")
        axes[-1][1].set_xlabel("Stage 1 vs final stage (two-stage methods)")
        figure.suptitle("L2 distance of training-set head-input features (mean and std over seeds)")
        return figure

    return _save(out, "figure1_feature_change", data, draw)


def kept_feature_change(run):
    """A finished run's own Figure 1 numbers from RUN/feature_change.json, or None where there are none or
    they were measured on another result.json (the run was trained again since)."""
    saved = Path(run) / FEATURE_CHANGE
    if not saved.is_file() or not (Path(run) / "result.json").is_file():
        return None
    kept = json.loads(saved.read_text(encoding="utf-8"))
    if kept.get("result_sha256") != _result_digest(run):
        return None
    return {k: v for k, v in kept.items() if k != "result_sha256"}


def _result_digest(run):
    return hashlib.sha256((Path(run) / "result.json").read_bytes()).hexdigest()


def _run_feature_change(run, stage, pretrained_features):
    """{'method', 'task', 'distance'[, 'stage1_distance']} of one run (see feature_change). The pretrained
    backbone's features come from `pretrained_features` where a run before it had the same ones (its
    pretrained_features_key), else are computed and put there."""
    from sat_ehft.analyze.features import encoded, head_inputs_and_hidden
    from sat_ehft.analyze.features import feature_change as distance
    from sat_ehft.pipeline import rebuild_stage_model

    final = stage or _final_stage(run)
    backbone, model, spec = rebuild_stage_model(run, final)
    tokenizer = backbone.load_tokenizer()
    _, train = encoded(spec, tokenizer, "train")  # once per run, scored by up to three models
    after = head_inputs_and_hidden(model, train, tokenizer.pad_token_id)[0]
    entry = {"method": spec.method, "task": spec.task}
    first = _stage_names(run)[0]
    if first != final:
        stage1 = head_inputs_and_hidden(rebuild_stage_model(run, first)[1], train, tokenizer.pad_token_id)[0]
        entry["stage1_distance"] = distance(stage1, after)
    key = pretrained_features_key(backbone, model, spec)
    if key not in pretrained_features:
        _strip_to_pretrained(model, backbone)
        pretrained_features[key] = head_inputs_and_hidden(model, train, tokenizer.pad_token_id)[0]
    entry["distance"] = distance(pretrained_features[key], after)
    return entry


def pretrained_features_key(backbone, model, spec):
    """What the pretrained backbone's head-input features on a run's training set depend on: the pretrained
    weights, the encoded training set, and the model's mixins once the PET ones are stripped (their classes:
    the attention and the head's pooling). Runs of one task and backbone share it across methods and seeds."""
    from sat_ehft.methods import PET_MIXINS
    from sat_ehft.pipeline import run_encoding

    kept_mixins = tuple(sorted((name, type(mixin).__qualname__) for name, mixin in model.mixins.items()
                               if name not in PET_MIXINS))
    dtype = next(model.parameters()).dtype
    return (str(Path(backbone.folder).resolve()), spec.task, str(Path(spec.data_dir).resolve()), run_encoding(spec),
            kept_mixins, str(dtype))


def _spread_by_task_and_method(per_run, keys):
    """{task: {method: {key: {'mean', 'std' (sample, 0 for one run), 'runs'}}}} over the runs that have key."""
    grouped = defaultdict(lambda: defaultdict(list))
    for entry in per_run.values():
        for key in keys:
            if key in entry:
                grouped[entry["task"], entry["method"]][key].append(entry[key])
    spread = defaultdict(dict)
    for (task, method), values in sorted(grouped.items()):
        spread[task][method] = {key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                                      "runs": len(v)} for key, v in values.items()}
    return dict(spread)


def _strip_to_pretrained(model, backbone):
    """Turn a rebuilt model back into the pretrained backbone: pretrained weights, no PET mixins (the head
    stays, it only pools)."""
    from sat_ehft.backbone import load_sat_folder
    from sat_ehft.methods import PET_MIXINS

    pretrained = load_sat_folder(backbone.folder).model.state_dict()
    for name in [n for n in model.mixins if n in PET_MIXINS]:
        model.del_mixin(name)
    model.load_state_dict({**model.state_dict(), **pretrained})


def tsne(runs, out, stage="stage1", seed=0):
    """Figure 4: t-SNE of the head's 2048-d hidden layer where Stage 2 starts (pretrained backbone + the head
    `stage` trained), on train and dev, coloured by label. A run of a one-stage method shows its fresh head."""
    from sklearn.manifold import TSNE

    from sat_ehft.analyze.features import encoded, head_inputs_and_hidden
    from sat_ehft.pipeline import prepare_stage, read_run, rebuild_stage_model

    data = {}
    for run in runs:
        if (Path(run) / stage / "trained.pt").is_file():
            backbone, model, spec = rebuild_stage_model(run, stage)
            stage_name = stage
            _strip_to_pretrained(model, backbone)
        else:  # a one-stage method: the fresh head its run started from
            spec, stage_name = read_run(run), "random head"
            start = prepare_stage(spec, run, 0)
            backbone, model = start.backbone, start.model.eval()
        tokenizer = backbone.load_tokenizer()
        entry = {"method": spec.method, "stage": stage_name}
        for split in ("train", "dev"):
            _, features = encoded(spec, tokenizer, split)
            _, hidden, labels = head_inputs_and_hidden(model, features, tokenizer.pad_token_id)
            points = TSNE(n_components=2, random_state=seed, perplexity=min(30, len(features) - 1),
                          init="pca").fit_transform(hidden.numpy())
            entry[split] = {"x": points[:, 0].tolist(), "y": points[:, 1].tolist(), "label": labels.tolist()}
        data[str(run)] = entry

    def draw(plt):
        figure, axes = plt.subplots(2, len(data), figsize=(3.2 * len(data), 6), squeeze=False)
        for column, entry in enumerate(data.values()):
            for row, split in enumerate(("train", "dev")):
                points = entry[split]
                axes[row][column].scatter(points["x"], points["y"], c=points["label"], s=6, cmap="tab10")
                axes[row][column].set_title(f"{entry['method']} ({split})", fontsize=9)
        return figure

    return _save(out, "figure4_tsne", data, draw)


def weight_distance(runs, out):
    """Figure 5: the backbone's L2 distance from the pretrained weights along training (runs trained with
    track_weight_distance), FT against EH-FT's Stage 2, one curve per run."""
    data = {}
    for run in runs:
        stage = _final_stage(run)
        rows = _jsonl(Path(run) / stage / "weight_distance.jsonl")
        data[str(run)] = {"method": _label(run), "stage": stage, "step": [r["step"] for r in rows],
                          "distance": [r["distance"] for r in rows]}

    draw = _lines(_by_method(data), "step", "distance", "iteration", "||theta - theta_pretrained||")
    return _save(out, "figure5_weight_distance", data, draw)


def stage1_share(runs, out):
    """Figure 6: final score against Stage 1's share of the epochs, per task and stage1_mode."""
    from sat_ehft.pipeline import read_run

    points = defaultdict(lambda: defaultdict(list))
    for run in runs:
        spec = read_run(run)
        result = json.loads((Path(run) / "result.json").read_text())
        points[f"{spec.task} {spec.config.stage1_mode}"][spec.config.stage1_share].append(100 * result["best"])
    data = {key: {"share": sorted(shares), "best_mean": [float(np.mean(shares[s])) for s in sorted(shares)]}
            for key, shares in sorted(points.items())}

    draw = _lines(data, "share", "best_mean", "Stage 1 share of the epochs", "dev score (best epoch, mean over seeds)",
                  marker="o")
    return _save(out, "figure6_stage1_share", data, draw)


def loss_curves(runs, out):
    """Figure 7: the final stage's training loss per step and training accuracy per epoch, against its own
    iterations (Stage 2 from step 0, as the authors' own plot draws it; `stage1_steps` gives the offset)."""
    from sat_ehft.methods import get_method

    data = {}
    for run in runs:
        method = _label(run)
        stages = [s.name for s in get_method(method).stages]
        before = _jsonl(Path(run) / stages[0] / "train_loss.jsonl")[-1]["step"] if len(stages) > 1 else 0
        rows = _jsonl(Path(run) / stages[-1] / "train_loss.jsonl")
        epochs = [r for r in _jsonl(Path(run) / stages[-1] / "metrics.jsonl") if "train_accuracy" in r]
        data[str(run)] = {"method": method, "stage1_steps": before, "step": [r["step"] for r in rows],
                          "loss": [r["loss"] for r in rows], "epoch_step": [r["step"] for r in epochs],
                          "train_accuracy": [r["train_accuracy"] for r in epochs]}

    def draw(plt):
        figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(11, 4))
        for label, entry in _by_method(data).items():
            loss_axes.plot(entry["step"], entry["loss"], label=label, linewidth=1)
            accuracy_axes.plot(entry["epoch_step"], entry["train_accuracy"], label=label, marker="o", linewidth=1)
        loss_axes.set(xlabel="iteration of the final stage", ylabel="training loss")
        accuracy_axes.set(xlabel="iteration of the final stage", ylabel="training accuracy")
        loss_axes.legend(fontsize=8)
        return figure

    return _save(out, "figure7_loss", data, draw)


FIGURES = {"1": feature_change, "4": tsne, "5": weight_distance, "6": stage1_share, "7": loss_curves}
