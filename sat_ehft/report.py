"""Reports over run folders: mean and std over seeds, best-epoch and last-epoch scores, the paper beside.

Scores are shown as percentages (correlations x 100), as the paper prints them. The std is the sample
standard deviation over seeds (0 for a single seed). "best" is the final stage's best epoch by the
task's first metric; "last" its last epoch; the original code's number (a running maximum over every
evaluation, Stage 1 included) is shown as "max all stages" and never used for the comparison.
"""

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from sat_ehft.atomic import write_text
from sat_ehft.paper_numbers import TABLES
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
                     **{score: 100 * result[score] for score in SCORES}})
    return rows


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
        summary[key] = entry
    return summary


def paper_value(table, task, label):
    return TABLES[table].get(label, {}).get(task) if table else None


def report_rows(summary, table):
    rows = []
    for (task, label), entry in summary.items():
        paper = paper_value(table, task, label)
        ft = summary.get((task, "ft"))
        rows.append({"task": task, "method": label, "metric": entry["metric"], "seeds": len(entry["seeds"]),
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
    lines = ["| task | method | metric | seeds | best (mean ± std) | last (mean ± std) | max all stages | "
             f"{paper} | best − paper | seconds | time / ft |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        diff = "" if row["best_minus_paper"] is None else f"{row['best_minus_paper']:+.2f}"
        versus_ft = "" if row["time_vs_ft"] is None else f"{row['time_vs_ft']:.2f}"
        lines.append(f"| {row['task']} | {row['method']} | {row['metric']} | {row['seeds']} | "
                     f"{row['best_mean']:.2f} ± {row['best_std']:.2f} | {row['last_mean']:.2f} ± {row['last_std']:.2f} | "
                     f"{row['max_over_all_stages_mean']:.2f} | {'' if row['paper'] is None else row['paper']} | {diff} | "
                     f"{row['seconds']:.0f} | {versus_ft} |")
    lines += ["", "best: the final stage's best epoch by the task's first metric; last: its last epoch; "
              "max all stages: the running maximum over every evaluation, Stage 1 included (what the original "
              "code reported). Scores x 100; std over seeds (sample). seconds: mean wall time of a run, every "
              "stage included (model loading and evaluation too); time / ft: against plain finetuning of the "
              "same task, which gets the same total epochs.", "", "## Seeds", ""]
    lines += [f"- {task} {label}: {', '.join(map(str, entry['seeds']))}" for (task, label), entry in summary.items()]
    lines += ["", "## Missing runs", ""]
    lines += [f"- {run.task} {run.label} seed {run.seed}" for run in missing] or ["none"]
    return "\n".join(lines) + "\n"


def write_report(out, table="1"):
    """Write report.md and report.csv into `out`; return the report rows."""
    summary = aggregate(collect(out))
    grid = read_grid(out) or []
    missing = [run for run in grid if not is_finished(run, out)]
    rows = report_rows(summary, table)
    write_text(Path(out) / "report.csv", to_csv(rows))
    write_text(Path(out) / "report.md", f"# Results in {Path(out).name}\n\n" + to_markdown(rows, summary, missing, table))
    return rows
