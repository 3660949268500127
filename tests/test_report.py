"""The report on a hand-made grid: searched methods at their best setting, collapsed runs, the paper's Avg."""

import json

import pytest

from sat_ehft.paper_numbers import TABLE1, TASK_COLUMNS
from sat_ehft.report import write_report


def write_result(out, task, label, seed, best, collapsed=False, metric="accuracy", train_accuracy=0.9):
    folder = out / task / label.replace(" ", "__") / f"seed{seed}"
    folder.mkdir(parents=True)
    result = {"task": task, "method": label.split(" ")[0], "seed": seed, "metric": metric, "best": best / 100,
              "best_epoch": 1, "last": best / 100, "max_over_all_stages": best / 100, "collapsed": collapsed,
              "stages": {"stage1": {"seconds": 5.0, "last": {"train_accuracy": 0.5}},
                         "stage2": {"seconds": 10.0, "last": {} if train_accuracy is None else
                                    {"train_accuracy": train_accuracy}}}}
    (folder / "result.json").write_text(json.dumps(result))


@pytest.fixture
def grid(tmp_path):
    out = tmp_path / "grid"
    for seed, (small, large) in enumerate([(80.0, 90.0), (82.0, 88.0)], start=1):
        write_result(out, "rte", "topk top_k=3", seed, small)
        write_result(out, "rte", "topk top_k=6", seed, large)
    write_result(out, "rte", "ft", 1, 52.0, collapsed=True)  # the majority class
    write_result(out, "rte", "ft", 2, 86.0)
    for task in TASK_COLUMNS:  # EH-FT on every task: the Avg can be computed
        for seed in (1, 2):
            write_result(out, task, "ehft-bitfit", seed, 70.0 + seed + TASK_COLUMNS.index(task))
    return out


def test_a_searched_method_is_compared_at_its_best_setting(grid):
    rows = {(r["task"], r["method"]): r for r in write_report(grid, table="1")}
    best, other = rows["rte", "topk top_k=6"], rows["rte", "topk top_k=3"]
    assert best["best_mean"] == 89.0 and best["paper"] == TABLE1["topk"]["rte"]
    assert best["best_minus_paper"] == round(89.0 - TABLE1["topk"]["rte"], 2)
    assert other["paper"] is None and other["best_minus_paper"] is None
    view = (grid / "report.md").read_text().split("## The paper's view")[1]
    assert "| topk (top_k=6) | 89.00 |" in view
    assert f"| topk, paper | {TABLE1['topk']['rte']:.2f} |" in view


def test_collapsed_runs_are_counted_per_cell(grid):
    rows = {(r["task"], r["method"]): r for r in write_report(grid, table="1")}
    assert rows["rte", "ft"]["collapsed"] == 1 and rows["rte", "topk top_k=6"]["collapsed"] == 0
    assert "| rte | ft | accuracy | 2 | 1 |" in (grid / "report.md").read_text()


def test_avg_is_the_mean_over_the_nine_tasks_as_the_paper_computes_it(grid):
    write_report(grid, table="1")
    view = (grid / "report.md").read_text().split("## The paper's view")[1]
    ours = [70.0 + 1.5 + i for i in range(len(TASK_COLUMNS))]
    assert f"| {sum(ours) / len(ours):.2f} |" in next(line for line in view.splitlines()
                                                      if line.startswith("| ehft-bitfit |"))
    paper = list(TABLE1["ehft-bitfit"].values())
    assert next(line for line in view.splitlines() if line.startswith("| ehft-bitfit, paper |")).endswith(
        f"| {sum(paper) / len(paper):.2f} |")
    rte_only = next(line for line in view.splitlines() if line.startswith("| ft |"))
    assert rte_only.endswith("|  |")  # one task of nine: no Avg
    assert "Paper note: BitFit's CoLA 57.89 repeats the prefix-tuning row" in view


def test_train_accuracy_is_the_final_stages_last_epoch_mean_over_seeds(tmp_path):
    out = tmp_path / "grid"
    write_result(out, "rte", "ft", 1, 60.0, train_accuracy=0.75)
    write_result(out, "rte", "ft", 2, 62.0, train_accuracy=0.95)
    write_result(out, "sts-b", "ft", 1, 80.0, metric="pearson", train_accuracy=None)  # regression: none
    rows = {(r["task"], r["method"]): r for r in write_report(out, table="1")}
    assert rows["rte", "ft"]["train_accuracy"] == 85.0  # not Stage 1's 50, not one seed's
    assert rows["sts-b", "ft"]["train_accuracy"] is None
    report = (out / "report.md").read_text()
    assert "| rte | ft | accuracy | 2 | 0 | 85.00 | 61.00 ± 1.41 |" in report
    assert "| sts-b | ft | pearson | 1 | 0 |  | 80.00 ± 0.00 |" in report
