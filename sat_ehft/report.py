"""Reports over run folders: mean and std over seeds, best-epoch and last-epoch scores, the paper beside.

Scores are shown as percentages (correlations x 100), as the paper prints them. The std is the sample
standard deviation over seeds (0 for a single seed). "best" is the final stage's best epoch by the
run's selection metric; "last" its last epoch; the original code's number (a running maximum over every
evaluation, Stage 1 included) is shown as "max all stages" and never used for the comparison.
"collapsed" counts the seeds whose best epoch predicted a single class (or value) for the whole dev set;
"train acc" is the final stage's training accuracy in its last epoch (classification tasks), which tells a
run that could not fit its training set from one that overfit it.

The paper's view (one row per method, its tasks and their Avg) takes, for a method the paper searched
(Top-K over k, Mixout over p and LR, Child-Tuning_D over its fraction), the setting with the best mean per
task, and names it.
"""

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sat_ehft.atomic import write_text
from sat_ehft.paper_numbers import INCONSISTENCIES, SEARCHED, TABLES, TASK_COLUMNS
from sat_ehft.sweep import is_finished, read_grid

SCORES = ("best", "last", "max_over_all_stages")


def collect(out):
    """One row per finished run under `out`: task, label, seed and its scores (x 100)."""
    rows = []
    for path in sorted(Path(out).rglob("result.json")):
        result = json.loads(path.read_text(encoding="utf-8"))
        label = path.parent.parent.name.replace("__", " ")
        rows.append({"task": result["task"], "label": label, "seed": result["seed"], "metric": result["metric"],
                     "seconds": sum(stage["seconds"] for stage in result["stages"].values()),
                     "collapsed": bool(result.get("collapsed")),
                     "train_accuracy": final_train_accuracy(result),
                     **{score: 100 * result[score] for score in SCORES}})
    return rows


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
        entry["collapsed"] = sum(m["collapsed"] for m in members)
        accuracies = [m["train_accuracy"] for m in members if m["train_accuracy"] is not None]
        entry["train_accuracy"] = float(np.mean(accuracies)) if accuracies else None
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
        if key not in chosen or entry["best_mean"] > summary[task, chosen[key]]["best_mean"]:
            chosen[key] = label
    return chosen


def report_rows(summary, table):
    rows = []
    chosen = set(chosen_settings(summary).values())
    for (task, label), entry in summary.items():
        paper = paper_value(table, task, label) if label in chosen else None
        ft = summary.get((task, "ft"))
        rows.append({"task": task, "method": label, "metric": entry["metric"], "seeds": len(entry["seeds"]),
                     "collapsed": entry["collapsed"],
                     "train_accuracy": None if entry["train_accuracy"] is None else round(entry["train_accuracy"], 2),
                     **{k: round(v, 2) for k, v in entry.items() if k.endswith(("_mean", "_std"))},
                     "paper": paper, "best_minus_paper": None if paper is None else round(entry["best_mean"] - paper, 2),
                     "seconds": round(entry["seconds"], 1),
                     # wall time against plain finetuning of the same task (the same total epochs)
                     "time_vs_ft": round(entry["seconds"] / ft["seconds"], 3) if ft else None})
    return rows


def to_csv(rows):
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["task"])
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def to_markdown(rows, summary, missing, table):
    paper = f"paper (Table {table})" if table else "paper"
    lines = ["| task | method | metric | seeds | collapsed | train acc | best (mean ± std) | last (mean ± std) | "
             f"max all stages | {paper} | best − paper | seconds | time / ft |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        diff = "" if row["best_minus_paper"] is None else f"{row['best_minus_paper']:+.2f}"
        versus_ft = "" if row["time_vs_ft"] is None else f"{row['time_vs_ft']:.2f}"
        train = "" if row["train_accuracy"] is None else f"{row['train_accuracy']:.2f}"
        lines.append(f"| {row['task']} | {row['method']} | {row['metric']} | {row['seeds']} | {row['collapsed']} | "
                     f"{train} | {row['best_mean']:.2f} ± {row['best_std']:.2f} | "
                     f"{row['last_mean']:.2f} ± {row['last_std']:.2f} | "
                     f"{row['max_over_all_stages_mean']:.2f} | {'' if row['paper'] is None else row['paper']} | {diff} | "
                     f"{row['seconds']:.0f} | {versus_ft} |")
    lines += ["", "best: the final stage's best epoch by the run's selection metric (config best_metric, by default the "
              "task's first); last: its last epoch; "
              "max all stages: the running maximum over every evaluation, Stage 1 included (what the original "
              "code reported). Scores x 100; std over seeds (sample). seconds: mean wall time of a run, every "
              "stage included (model loading and evaluation too); time / ft: against plain finetuning of the "
              "same task, which gets the same total epochs. collapsed: seeds whose best epoch predicted one class "
              "(or value) for every dev example; train acc: the final stage's training accuracy in its last epoch, "
              "mean over seeds. A searched method's paper score stands beside its best setting "
              "only.", "", *paper_view(summary, table), "## Seeds", ""]
    lines += [f"- {task} {label}: {', '.join(map(str, entry['seeds']))}" for (task, label), entry in summary.items()]
    lines += ["", "## Missing runs", ""]
    lines += [f"- {run.task} {run.label} seed {run.seed}" for run in missing] or ["none"]
    return "\n".join(lines) + "\n"


def paper_view(summary, table):
    """The table as the paper prints it: one row per method, best mean per task (searched methods at their
    best setting, named), and Avg over the tasks when every one is there; the paper's row below ours."""
    chosen = chosen_settings(summary)
    tasks = [t for t in TASK_COLUMNS if any(task == t for task, _ in chosen)]
    methods = sorted({method for _, method in chosen})
    lines = ["## The paper's view", "", "| method | " + " | ".join(tasks) + " | Avg |",
             "|---|" + "---|" * (len(tasks) + 1)]
    for method in methods:
        scores = [summary[t, chosen[t, method]]["best_mean"] if (t, method) in chosen else None for t in tasks]
        settings = sorted({chosen[t, method].split(" ", 1)[1] for t in tasks
                           if (t, method) in chosen and chosen[t, method] != method})
        lines.append(row_line(method + (f" ({'; '.join(settings)})" if settings else ""), scores, len(TASK_COLUMNS)))
        paper = [paper_value(table, t, method) for t in tasks]
        if any(v is not None for v in paper):
            lines.append(row_line(f"{method}, paper", paper, len(TASK_COLUMNS)))
    notes = INCONSISTENCIES.get(table, [])
    return lines + [""] + [f"Paper note: {note}" for note in notes] + ([""] if notes else [])


def row_line(name, scores, all_tasks):
    """A markdown row; Avg as the paper computes it, the plain mean over the tasks, when every task has a score."""
    present = [v for v in scores if v is not None]
    average = f"{sum(present) / len(present):.2f}" if len(present) == all_tasks else ""
    return f"| {name} | " + " | ".join("" if v is None else f"{v:.2f}" for v in scores) + f" | {average} |"


def write_report(out, table="1"):
    """Write report.md and report.csv into `out`; return the report rows."""
    summary = aggregate(collect(out))
    grid = read_grid(out) or []
    missing = [run for run in grid if not is_finished(run, out)]
    rows = report_rows(summary, table)
    write_text(Path(out) / "report.csv", to_csv(rows))
    write_text(Path(out) / "report.md", f"# Results in {Path(out).name}\n\n" + to_markdown(rows, summary, missing, table))
    return rows
