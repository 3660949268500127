"""Reports over run folders: mean and std over seeds, best-epoch and last-epoch scores, the paper beside.

Scores are shown as percentages (correlations x 100), as the paper prints them. The std is the sample
standard deviation over seeds (0 for a single seed). "best" is the final stage's best epoch by the
run's selection metric; "last" its last epoch; the original code's number (a running maximum over every
evaluation, Stage 1 included) is shown as "max all stages". "reported" is the one set beside the paper's: "max
all stages" for runs trained in the original's data order and evaluation cadence (config data_order:
original, as the original recipe), "best" otherwise.
"collapsed" counts the seeds whose best epoch predicted a single class (or value) for the whole dev set;
"train acc" is the final stage's training accuracy in its last epoch (classification tasks), which tells a
run that could not fit its training set from one that overfit it.

The paper's view (one row per method, its tasks and their Avg; each cell the reported score) takes, for a
method the paper searched (Top-K over k, Mixout over p and LR, Child-Tuning_D over its fraction), the setting
with the best reported mean per task, and names it.

How sure a number is (sat_ehft.stats): each run's best and last dev scores get a 95% bootstrap interval over
the dev examples ("dev ±" is its mean half-width per cell), and with a baseline method every other method of
a task gets its difference from the baseline over seeds, with a 95% interval and a permutation p-value
(paired by seed when both have the same seeds), for best and for last, and for Figure 1's feature distance
where `sat-ehft analyze 1` measured it.
"""

import csv
import io
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from sat_ehft.analyze.figures import kept_feature_change
from sat_ehft.atomic import read_json, write_text
from sat_ehft.metrics import METRICS
from sat_ehft.paper_numbers import INCONSISTENCIES, SEARCHED, TABLES, TASK_COLUMNS, metric_note
from sat_ehft.stats import RESAMPLES, SEED, bootstrap_interval, difference
from sat_ehft.sweep import is_finished, read_grid

SCORES = ("best", "last", "max_over_all_stages")
COMPARED = ("best", "last")  # the scores compared with a baseline: chosen on dev, and not
DISTANCE = "feature_distance"  # Figure 1's pretrained-to-final feature distance, where `analyze 1` measured it


def collect(out, unreadable):
    """One row per finished run under `out`: task, label, seed and its scores (x 100). A damaged result.json or
    dev_predictions.json is added to `unreadable` (its path and why) instead: one bad file does not stop the
    grid's report."""
    rows = []
    for path in sorted(Path(out).rglob("result.json")):
        try:
            result = read_json(path)
            intervals = dev_intervals(path.parent, result)
        except ValueError as err:
            unreadable.append(str(err))
            continue
        label = path.parent.parent.name.replace("__", " ")
        rows.append({"task": result["task"], "label": label, "seed": result["seed"], "metric": result["metric"],
                     "also": other_metrics(result), "variant": variant(result),
                     "reported": result.get("reported", "best"),
                     "seconds": sum(stage["seconds"] for stage in result["stages"].values()),
                     "cpu_share": cpu_share(result),
                     "collapsed": bool(result.get("collapsed")),
                     "train_accuracy": final_train_accuracy(result),
                     DISTANCE: (kept_feature_change(path.parent) or {}).get("distance"),
                     **{score: 100 * result[score] for score in SCORES}, **intervals})
    return rows


def variant(result):
    """How a run ran where one method name covers two ways: Child-Tuning_D masked, or as the original ran it."""
    child_tuning = list(result["stages"].values())[-1].get("child_tuning")
    if child_tuning is None:
        return ""
    return "masked" if child_tuning["mask_applied"] else "mask not applied, as the original ran"


def other_metrics(result):
    """{metric: value x 100} of the final stage's best epoch, for the task's metrics besides the selecting one
    (MRPC: accuracy beside F1, or F1 beside accuracy; STS-B: Spearman beside Pearson)."""
    best = list(result["stages"].values())[-1]["best"]
    return {name: 100 * value for name, value in best.items() if name in METRICS and name != result["metric"]}


def dev_intervals(folder, result):
    """{'best_interval': (low, high), 'last_interval': ...} x 100: 95% bootstrap intervals of the final stage's
    best and last dev scores, from its dev_predictions.json (None for runs written before it existed)."""
    final = list(result["stages"])[-1]
    path = Path(folder) / final / "dev_predictions.json"
    if not path.is_file():
        return {f"{score}_interval": None for score in COMPARED}
    kept = read_json(path)
    intervals = {}
    for score in COMPARED:
        predictions = kept["epochs"][str(result["stages"][final][score]["epoch"])]
        low, high = bootstrap_interval(result["metric"], predictions, kept["gold"])
        intervals[f"{score}_interval"] = (100 * low, 100 * high)
    return intervals


def cpu_share(result):
    """The CPU time a CPU run used training and evaluating over what its threads could have used in that wall
    time, all stages together: about 1 alone on the machine, lower when other work shared its cores (its
    seconds are then not the machine's speed). None for GPU runs and runs older than the record."""
    costs = [stage.get("cost", {}) for stage in result["stages"].values()]
    if not all("cpu_seconds" in cost for cost in costs):
        return None
    available = sum(cost["cpu_threads"] * (cost["train_seconds"] + cost["eval_seconds"]) for cost in costs)
    return sum(cost["cpu_seconds"] for cost in costs) / available


def final_train_accuracy(result):
    """The final stage's last-epoch training accuracy x 100; None for regression (and runs older than it)."""
    final = list(result["stages"].values())[-1]
    accuracy = final["last"].get("train_accuracy")
    return None if accuracy is None else 100 * accuracy


def mean_std(values):
    values = np.asarray(values, float)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0


def aggregate(rows):
    """{(task, label): {'metric', 'seeds', '<score>_mean', '<score>_std'}}."""
    groups = defaultdict(list)
    for row in rows:
        groups[row["task"], row["label"]].append(row)
    summary = {}
    for key, members in sorted(groups.items()):
        entry = {"metric": members[0]["metric"], "seeds": sorted(m["seed"] for m in members)}
        for score in SCORES:
            entry[f"{score}_mean"], entry[f"{score}_std"] = mean_std([m[score] for m in members])
        entry["seconds"] = mean_std([m["seconds"] for m in members])[0]
        entry["variant"] = " / ".join(sorted({m["variant"] for m in members if m["variant"]}))
        reported = {m["reported"] for m in members}  # the score set beside the paper's (see sat_ehft.pipeline)
        entry["reported"] = reported.pop() if len(reported) == 1 else "best"
        entry["reported_mean"] = entry[f"{entry['reported']}_mean"]
        entry["also"] = {name: mean_std([m["also"][name] for m in members]) for name in members[0]["also"]
                         if all(name in m["also"] for m in members)}
        entry["collapsed"] = sum(m["collapsed"] for m in members)
        entry["by_seed"] = {score: {m["seed"]: m[score] for m in members} for score in COMPARED}
        # compared only where every seed of the cell was measured: a difference over a subset would mislead
        measured = all(m[DISTANCE] is not None for m in members)
        entry["by_seed"][DISTANCE] = {m["seed"]: m[DISTANCE] for m in members} if measured else None
        entry[DISTANCE] = mean_std([m[DISTANCE] for m in members]) if measured else None
        widths = [(m["best_interval"][1] - m["best_interval"][0]) / 2 for m in members if m["best_interval"]]
        entry["dev_halfwidth"] = float(np.mean(widths)) if widths else None
        accuracies = [m["train_accuracy"] for m in members if m["train_accuracy"] is not None]
        entry["train_accuracy"] = float(np.mean(accuracies)) if accuracies else None
        shares = [m["cpu_share"] for m in members if m["cpu_share"] is not None]
        entry["cpu_share"] = (min(shares), max(shares)) if shares else None
        summary[key] = entry
    return summary


def base_method(label):
    return label.split(" ")[0]


def paper_value(table, task, label):
    """The paper's score for `label`, or for its method when the paper searched that method's setting."""
    if not table:
        return None
    rows = TABLES[table]
    row = rows.get(label) or (rows.get(base_method(label)) if base_method(label) in SEARCHED else None)
    return (row or {}).get(task)


def chosen_settings(summary):
    """{(task, method): label}: for each task, the setting of a searched method with the best mean (the
    method's only label for the others)."""
    chosen = {}
    for (task, label), entry in summary.items():
        key = task, base_method(label) if base_method(label) in SEARCHED else label
        if key not in chosen or entry["reported_mean"] > summary[task, chosen[key]]["reported_mean"]:
            chosen[key] = label
    return chosen


def report_rows(summary, table, baseline=None):
    rows = []
    chosen = set(chosen_settings(summary).values())
    for (task, label), entry in summary.items():
        against = {} if baseline is None else against_baseline(summary, task, label, baseline)
        paper = paper_value(table, task, label) if label in chosen else None
        ft = summary.get((task, "ft"))
        rows.append({"task": task, "method": label, "variant": entry["variant"], "metric": entry["metric"],
                     "also": "; ".join(f"{name} {mean:.2f} ± {std:.2f}" for name, (mean, std) in entry["also"].items()),
                     "seeds": len(entry["seeds"]),
                     "collapsed": entry["collapsed"],
                     "train_accuracy": None if entry["train_accuracy"] is None else round(entry["train_accuracy"], 2),
                     **{k: round(v, 2) for k, v in entry.items() if k.endswith(("_mean", "_std"))},
                     "reported": entry["reported"], "paper": paper,
                     "reported_minus_paper": None if paper is None else round(entry["reported_mean"] - paper, 2),
                     "seconds": round(entry["seconds"], 1),
                     # wall time against plain finetuning of the same task (the same total epochs)
                     "time_vs_ft": round(entry["seconds"] / ft["seconds"], 3) if ft else None,
                     **{f"cpu_share_{end}": None if entry["cpu_share"] is None else round(entry["cpu_share"][i], 2)
                        for i, end in enumerate(("min", "max"))},
                     "dev_halfwidth": None if entry["dev_halfwidth"] is None else round(entry["dev_halfwidth"], 2),
                     **{f"{DISTANCE}_{name}": None if entry[DISTANCE] is None else round(entry[DISTANCE][i], 2)
                        for i, name in enumerate(("mean", "std"))},
                     **against})
    return rows


def against_baseline(summary, task, label, baseline):
    """The columns of `label` against `baseline` on `task`: for best, last and the feature distance, the
    difference over seeds, its 95% interval and p-value (None for the baseline itself, where the task has no
    baseline runs, or, for the distance, where a seed of either side was not measured)."""
    base = summary.get((task, baseline))
    columns, test = {}, None
    for score in (*COMPARED, DISTANCE):
        ours, theirs = summary[task, label]["by_seed"][score], base and base["by_seed"][score]
        result = None if not (ours and theirs) or label == baseline else difference(ours, theirs)
        for name in ("mean", "low", "high", "p"):
            value = None if result is None else getattr(result, name)
            columns[f"{score}_diff" if name == "mean" else f"{score}_diff_{name}"] = \
                None if value is None or np.isnan(value) else round(value, 4 if name == "p" else 2)
        if result is not None:
            test = result.test
    return {**columns, "diff_test": test}


def to_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["task"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows, summary, missing, table, baseline, runs, unreadable=()):
    paper = f"paper (Table {table})" if table else "paper"
    lines = ["| task | method | metric | seeds | collapsed | train acc | best (mean ± std) | last (mean ± std) | "
             f"max all stages | reported | {paper} | reported − paper | seconds | time / ft | cpu share | dev ± | "
             "feature distance | also at best |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        diff = "" if row["reported_minus_paper"] is None else f"{row['reported_minus_paper']:+.2f}"
        reported = "max all stages" if row["reported"] == "max_over_all_stages" else row["reported"]
        versus_ft = "" if row["time_vs_ft"] is None else f"{row['time_vs_ft']:.2f}"
        train = "" if row["train_accuracy"] is None else f"{row['train_accuracy']:.2f}"
        halfwidth = "" if row["dev_halfwidth"] is None else f"{row['dev_halfwidth']:.2f}"
        method = row["method"] + (f" [{row['variant']}]" if row["variant"] else "")
        lines.append(f"| {row['task']} | {method} | {row['metric']} | {row['seeds']} | {row['collapsed']} | "
                     f"{train} | {row['best_mean']:.2f} ± {row['best_std']:.2f} | "
                     f"{row['last_mean']:.2f} ± {row['last_std']:.2f} | "
                     f"{row['max_over_all_stages_mean']:.2f} | {reported} | {'' if row['paper'] is None else row['paper']} | "
                     f"{diff} | "
                     f"{row['seconds']:.0f} | {versus_ft} | {share_range(row)} | {halfwidth} | "
                     f"{mean_and_std(row, DISTANCE)} | {row['also']} |")
    lines += ["", "best: the final stage's best epoch by the run's selection metric (config best_metric, by default the "
              "task's first); last: its last epoch; "
              "max all stages: the running maximum over every evaluation, Stage 1 included (what the original "
              "code reported); reported: the score set beside the paper's, and in the paper's view (max all stages "
              "where the runs trained with data_order original, as the original code, else best). Scores x 100; std "
              "over seeds (sample). seconds: mean wall time of a run, every "
              "stage included (model loading and evaluation too); time / ft: against plain finetuning of the "
              "same task, which gets the same total epochs; cpu share: of CPU runs, the CPU time a run used training "
              "and evaluating over its threads x that wall time, lowest to highest over seeds (about 1 alone on "
              "the machine; lower, its seconds were slowed by other work on its cores). collapsed: seeds whose "
              "best epoch predicted one class (or value) for every dev example; train acc: the final stage's "
              "training accuracy in its last epoch, mean over seeds. A searched method's paper score stands beside its best setting "
              "only. dev ±: half the width of a run's 95% bootstrap interval of its best score over the dev "
              "examples, mean over seeds (the noise of the dev set alone; runs listed under Runs). also at best: the "
              "task's other metrics at the same best epochs, mean ± std (MRPC's accuracy beside its F1). feature "
              "distance: Figure 1's, the L2 distance between the pretrained and the final backbone's head-input "
              "features on the training set, mean over examples, then mean ± std over seeds (cells whose every "
              "run `sat-ehft analyze 1` measured). [mask not applied, "
              "as the original ran]: Child-Tuning_D run with child_tuning_mask false, i.e. plain finetuning with its "
              "Fisher measured (the published row, see README: Recipes); [masked]: the method as its paper defines "
              "it.", "",
              *(against_lines(rows, baseline) if baseline else []), *paper_view(summary, table, baseline, rows),
              "## Seeds", ""]
    lines += [f"- {task} {label}: {', '.join(map(str, entry['seeds']))}" for (task, label), entry in summary.items()]
    lines += ["", "## Missing runs", ""]
    lines += [f"- {run.task} {run.label} seed {run.seed}" for run in missing] or ["none"]
    lines += ["", "## Unreadable runs", "", *[f"- {problem}" for problem in unreadable]] if unreadable else []
    return "\n".join(lines + ["", *run_lines(runs)]) + "\n"


def mean_and_std(row, name):
    mean, std = row[f"{name}_mean"], row[f"{name}_std"]
    return "" if mean is None else f"{mean:.2f} ± {std:.2f}"


def share_range(row):
    low, high = row["cpu_share_min"], row["cpu_share_max"]
    return "" if low is None else f"{low:.2f}" if low == high else f"{low:.2f}-{high:.2f}"


def signed(value, digits=2):
    return "" if value is None else f"{value:+.{digits}f}"


def interval(low, high):
    return "" if low is None else f"[{low:+.2f}, {high:+.2f}]"


def against_lines(rows, baseline):
    """The table of every method against `baseline`, task by task."""
    compared = (*COMPARED, DISTANCE) if any(row[f"{DISTANCE}_diff"] is not None for row in rows) else COMPARED
    names = {"best": "Δ best", "last": "Δ last", DISTANCE: "Δ feature distance"}
    lines = [f"## Against {baseline}", "",
             "| task | method | test | " + " | ".join(f"{names[s]} | 95% interval | p" for s in compared) + " |",
             "|---|---|---|" + "---|---|---|" * len(compared)]
    for row in rows:
        if row["diff_test"] is None:
            continue
        cells = [" |  | " if row[f"{s}_diff"] is None else
                 f"{signed(row[f'{s}_diff'])} | {interval(row[f'{s}_diff_low'], row[f'{s}_diff_high'])} | "
                 f"{row[f'{s}_diff_p']:.3f}" for s in compared]
        lines.append(f"| {row['task']} | {row['method']} | {row['diff_test']} | {' | '.join(cells)} |")
    return lines + ["", f"Δ: the method's score minus {baseline}'s, x 100, mean over seeds (Δ feature distance: "
                    "of the feature distance, not scaled); best: the final stage's "
                    "best epoch (chosen on dev, as the paper did), last: its last epoch (not chosen on dev). "
                    "paired: the same seeds on both sides, a t-interval of the per-seed differences and an exact "
                    "sign-flip permutation test (all 2^n sign patterns); unpaired (the seeds differ): Welch's "
                    "interval and an exact permutation test over the splits of the pooled scores. p is two-sided.",
                    ""]


def run_lines(runs):
    """Every run's best and last dev scores with their 95% bootstrap intervals over the dev examples."""
    lines = ["## Runs", "", "| task | method | seed | best | 95% interval | last | 95% interval |",
             "|---|---|---|---|---|---|---|"]
    for run in sorted(runs, key=lambda r: (r["task"], r["label"], r["seed"])):
        cells = [f"{run[s]:.2f} | " + ("" if run[f"{s}_interval"] is None else
                                        "[{:.2f}, {:.2f}]".format(*run[f"{s}_interval"])) for s in COMPARED]
        lines.append(f"| {run['task']} | {run['label']} | {run['seed']} | {' | '.join(cells)} |")
    return lines + ["", f"Intervals: {RESAMPLE_NOTE}"]


RESAMPLE_NOTE = (f"percentile bootstrap, {RESAMPLES:,} resamples of the dev examples with replacement (COPA: of "
                 f"its questions), the task's metric recomputed on each, seed {SEED} (sat_ehft.stats).")


def paper_view(summary, table, baseline=None, rows=()):
    """The table as the paper prints it: one row per method, best mean per task (searched methods at their
    best setting, named), and Avg over the tasks when every one is there; the paper's row below ours; with a
    baseline, each method's best-epoch difference from it and the p-value below that."""
    chosen = chosen_settings(summary)
    tasks = [t for t in TASK_COLUMNS if any(task == t for task, _ in chosen)]
    methods = sorted({method for _, method in chosen})
    lines = ["## The paper's view", "", "| method | " + " | ".join(tasks) + " | Avg |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for method in methods:
        scores = [summary[t, chosen[t, method]]["reported_mean"] if (t, method) in chosen else None for t in tasks]
        settings = sorted({chosen[t, method].split(" ", 1)[1] for t in tasks
                           if (t, method) in chosen and chosen[t, method] != method})
        lines.append(row_line(method + (f" ({'; '.join(settings)})" if settings else ""), scores, len(TASK_COLUMNS)))
        paper = [paper_value(table, t, method) for t in tasks]
        if any(v is not None for v in paper):
            lines.append(row_line(f"{method}, paper", paper, len(TASK_COLUMNS)))
        if baseline and method != baseline:
            lines.append(difference_line({(r["task"], r["method"]): r for r in rows}, chosen, tasks, method, baseline))
    metrics = {(task, summary[task, label]["metric"]) for (task, _), label in chosen.items()} if table else set()
    notes = INCONSISTENCIES.get(table, []) + [note for task, metric in sorted(metrics)
                                              if (note := metric_note(task, metric))]
    return lines + [""] + [f"Paper note: {note}" for note in notes] + ([""] if notes else [])


def difference_line(rows, chosen, tasks, method, baseline):
    """A row of `method`'s best-score difference from `baseline` per task, 'Δ (p)', as report_rows computed it."""
    cells = []
    for task in tasks:
        row = rows.get((task, chosen.get((task, method))), {})
        cells.append("" if row.get("best_diff") is None else f"{row['best_diff']:+.2f} (p {row['best_diff_p']:.3f})")
    return f"| {method} − {baseline} | " + " | ".join(cells) + " |  |"


def row_line(name, scores, all_tasks):
    """A markdown row; Avg as the paper computes it, the plain mean over the tasks, when every task has a score."""
    present = [v for v in scores if v is not None]
    average = f"{sum(present) / len(present):.2f}" if len(present) == all_tasks else ""
    return f"| {name} | " + " | ".join("" if v is None else f"{v:.2f}" for v in scores) + f" | {average} |"


def write_report(out, table="1", baseline=None):
    """Write report.md, report.csv (a row per task and method) and runs.csv (a row per run) into `out`; with
    `baseline` (a method label), every other method is compared with it. Returns the report rows."""
    if not Path(out).is_dir():
        raise FileNotFoundError(f"{out}: no such folder (a grid folder written by sat-ehft sweep)")
    unreadable = []
    runs = collect(out, unreadable)
    for problem in unreadable:
        print(f"warning: {problem}; that run is left out of the report", file=sys.stderr)
    summary = aggregate(runs)
    if baseline and not any(label == baseline for _, label in summary):
        raise ValueError(f"--baseline {baseline}: no finished run of it in {out}; methods there: "
                         f"{', '.join(sorted({label for _, label in summary}))}")
    grid = read_grid(out) or []
    missing = [run for run in grid if not is_finished(run, out)]
    rows = report_rows(summary, table, baseline)
    write_text(Path(out) / "report.csv", to_csv(rows))
    write_text(Path(out) / "runs.csv", to_csv([run_row(run) for run in runs]))
    write_text(Path(out) / "report.md", f"# Results in {Path(out).name}\n\n"
               + to_markdown(rows, summary, missing, table, baseline, runs, unreadable))
    return rows


def run_row(run):
    """runs.csv's row of a run: its scores and the ends of their bootstrap intervals."""
    row = {k: v for k, v in run.items() if not k.endswith("_interval")}
    row["also"] = "; ".join(f"{name} {value:.2f}" for name, value in run["also"].items())
    for score in COMPARED:
        low, high = run[f"{score}_interval"] or (None, None)
        row[f"{score}_low"], row[f"{score}_high"] = low, high
    return row
