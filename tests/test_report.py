"""The report on a hand-made grid: searched methods at their best setting, collapsed runs, the paper's Avg,
differences from a baseline (against scipy) and each run's bootstrap interval."""

import csv
import hashlib
import io
import json

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sat_ehft.paper_numbers import TABLE1, TASK_COLUMNS
from sat_ehft.report import write_report
from sat_ehft.stats import bootstrap_interval


def write_result(out, task, label, seed, best, collapsed=False, metric="accuracy", train_accuracy=0.9, last=None,
                 also=None, costs=({}, {})):
    """A finished run's result.json; `also`: the best epoch's other metrics ({name: score x 100}); `costs`: each
    stage's done.json cost."""
    folder = out / task / label.replace(" ", "__") / f"seed{seed}"
    folder.mkdir(parents=True)
    last = best if last is None else last
    best_record = {"epoch": 1, metric: best / 100, "train_loss": 0.1, "collapsed": collapsed,
                   **{name: value / 100 for name, value in (also or {}).items()}}
    result = {"task": task, "method": label.split(" ")[0], "seed": seed, "metric": metric, "best": best / 100,
              "best_epoch": 1, "last": last / 100, "max_over_all_stages": best / 100, "collapsed": collapsed,
              "stages": {"stage1": {"seconds": 5.0, "best": {"epoch": 1, metric: 0.5}, "last": {"train_accuracy": 0.5},
                                    "cost": costs[0]},
                         "stage2": {"seconds": 10.0, "best": best_record, "last": {} if train_accuracy is None else
                                    {"train_accuracy": train_accuracy}, "cost": costs[1]}}}
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
    assert best["reported_minus_paper"] == round(89.0 - TABLE1["topk"]["rte"], 2)
    assert other["paper"] is None and other["reported_minus_paper"] is None
    view = (grid / "report.md").read_text().split("## The paper's view")[1]
    assert "| topk (top_k=6) | 89.00 |" in view
    assert f"| topk, paper | {TABLE1['topk']['rte']:.2f} |" in view


def test_a_searched_setting_is_chosen_by_its_best_epoch_mean_not_its_last(tmp_path):
    out = tmp_path / "grid"
    for seed in (1, 2):
        write_result(out, "rte", "topk top_k=3", seed, 90.0, last=60.0)  # peaked, then fell
        write_result(out, "rte", "topk top_k=6", seed, 85.0, last=88.0)  # a better last epoch, a worse best
    rows = {r["method"]: r for r in write_report(out, table="1")}
    assert rows["topk top_k=3"]["paper"] == TABLE1["topk"]["rte"] and rows["topk top_k=6"]["paper"] is None
    assert "| topk (top_k=3) | 90.00 |" in (out / "report.md").read_text().split("## The paper's view")[1]


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


def test_runs_trained_in_the_original_order_meet_the_paper_with_their_running_maximum(tmp_path):
    """The original code reported each metric's running maximum over both stages: runs with data_order
    original ('reported': max_over_all_stages) are compared with the paper, and shown in its view, by it."""
    out = tmp_path / "grid"
    for seed, (best, peak) in enumerate([(80.0, 90.0), (82.0, 86.0)], start=1):
        write_result(out, "rte", "ehft-bitfit", seed, best)
        path = out / "rte" / "ehft-bitfit" / f"seed{seed}" / "result.json"
        result = json.loads(path.read_text())
        path.write_text(json.dumps({**result, "max_over_all_stages": peak / 100, "reported": "max_over_all_stages"}))
        write_result(out, "rte", "ft", seed, best)  # reported as its best (data_order reshuffle)
    rows = {r["method"]: r for r in write_report(out, table="1")}
    assert rows["ehft-bitfit"]["reported"] == "max_over_all_stages" and rows["ft"]["reported"] == "best"
    assert rows["ehft-bitfit"]["reported_minus_paper"] == round(88.0 - TABLE1["ehft-bitfit"]["rte"], 2)
    assert rows["ft"]["reported_minus_paper"] == round(81.0 - TABLE1["ft"]["rte"], 2)
    view = (out / "report.md").read_text().split("## The paper's view")[1]
    assert "| ehft-bitfit | 88.00 |" in view and "| ft | 81.00 |" in view


@pytest.mark.parametrize("applied, shown", [(True, "masked"), (False, "mask not applied, as the original ran")])
def test_the_report_says_whether_a_child_tuning_cell_was_masked(tmp_path, applied, shown):
    out = tmp_path / "grid"
    for seed in (1, 2):
        write_result(out, "rte", "child-tuning-d", seed, 70.0 + seed)
        path = out / "rte" / "child-tuning-d" / f"seed{seed}" / "result.json"
        result = json.loads(path.read_text())
        result["stages"]["stage2"]["child_tuning"] = {"mask_applied": applied, "keep": 0.1}
        path.write_text(json.dumps(result))
    write_result(out, "rte", "ft", 1, 70.0)
    rows = {r["method"]: r for r in write_report(out, table="1")}
    assert (rows["child-tuning-d"]["variant"], rows["ft"]["variant"]) == (shown, "")
    assert f"| rte | child-tuning-d [{shown}] | accuracy | 2 |" in (out / "report.md").read_text()


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


def test_cpu_share_is_cpu_time_over_threads_times_wall_time_over_both_stages_lowest_to_highest(tmp_path):
    out = tmp_path / "grid"

    def cost(threads, train, evaluation, cpu):
        return {"cpu_threads": threads, "train_seconds": train, "eval_seconds": evaluation, "cpu_seconds": cpu,
                "checkpoint_seconds": 50.0, "setup_seconds": 30.0}  # neither is in the share

    alone = cost(2, 90.0, 10.0, 196.0), cost(2, 900.0, 100.0, 1960.0)  # 2156 of 2 x 1100 core-seconds
    crowded = cost(1, 90.0, 10.0, 60.0), cost(1, 900.0, 100.0, 600.0)  # 660 of 1 x 1100
    write_result(out, "rte", "ft", 1, 60.0, costs=alone)
    write_result(out, "rte", "ft", 2, 62.0, costs=crowded)
    write_result(out, "rte", "ehft-bitfit", 1, 60.0, costs=alone)
    write_result(out, "rte", "ehft-bitfit", 2, 60.0, costs=(alone[0], {}))  # a GPU run's final stage: no share
    write_result(out, "rte", "lp-ft", 1, 60.0)  # runs older than the record
    rows = {r["method"]: r for r in write_report(out)}
    assert (rows["ft"]["cpu_share_min"], rows["ft"]["cpu_share_max"]) == (0.6, 0.98)
    assert (rows["ehft-bitfit"]["cpu_share_min"], rows["ehft-bitfit"]["cpu_share_max"]) == (0.98, 0.98)
    assert rows["lp-ft"]["cpu_share_min"] is None
    table = (out / "report.md").read_text()
    assert "| 15 | 1.00 | 0.60-0.98 |" in table and "| 15 | 1.00 | 0.98 |" in table and "| 15 | 1.00 |  |" in table
    assert "cpu_share_min" in (out / "report.csv").read_text().splitlines()[0]
    runs = csv.DictReader(io.StringIO((out / "runs.csv").read_text()))
    per_run = {(r["label"], r["seed"]): r["cpu_share"] for r in runs}
    assert float(per_run["ft", "2"]) == pytest.approx(0.6) and per_run["lp-ft", "1"] == ""


@pytest.mark.parametrize("metric, other", [("accuracy", "f1"), ("f1", "accuracy")])
def test_mrpc_shows_its_other_metric_beside_and_says_which_one_meets_the_paper(tmp_path, metric, other):
    """MRPC: the paper's text says F1 but its column is very probably accuracy. Whichever metric selected the
    runs (best_metric), the report shows the other beside it, compares the paper with the selecting one, and
    the paper's view says which."""
    out = tmp_path / "grid"
    for seed, (score, other_score) in enumerate([(80.0, 85.0), (82.0, 88.0)], start=1):
        write_result(out, "mrpc", "ft", seed, score, metric=metric, also={other: other_score})
    row = write_report(out, table="1")[0]
    assert row["also"] == f"{other} 86.50 ± 2.12" and row["best_mean"] == 81.0
    assert row["reported_minus_paper"] == round(81.0 - TABLE1["ft"]["mrpc"], 2)
    report = (out / "report.md").read_text()
    assert f"| {other} 86.50 ± 2.12 |" in report
    note = next(line for line in report.splitlines() if line.startswith("Paper note: MRPC"))
    assert f"compared on {metric}" in note
    assert ("very probably accuracy" in note) and ("expect ours about 2-3 points above" in note) == (metric == "f1")
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert sorted(r["also"] for r in runs) == [f"{other} 85.00", f"{other} 88.00"]


def write_run_with_predictions(out, task, label, seed, best, last, rng, gold):
    """A finished two-stage run whose final stage kept its dev predictions: epoch 2 its best, epoch 3 its last;
    Stage 1 kept predictions too (they must not be read)."""
    folder = out / task / label / f"seed{seed}"
    epochs = {str(epoch): np.where(rng.random(len(gold)) < accuracy, gold, 1 - gold).tolist()
              for epoch, accuracy in ((1, 0.5), (2, best), (3, last))}
    scores = {epoch: float(np.mean(np.array(predicted) == gold)) for epoch, predicted in epochs.items()}
    for stage, kept in (("stage1", {"1": (1 - gold).tolist()}), ("stage2", epochs)):
        (folder / stage).mkdir(parents=True)
        (folder / stage / "dev_predictions.json").write_text(json.dumps({"gold": gold.tolist(), "epochs": kept}))
    final = {"seconds": 1.0, "best": {"epoch": 2, "accuracy": scores["2"]}, "last": {"epoch": 3, "accuracy": scores["3"]}}
    result = {"task": task, "method": label, "seed": seed, "metric": "accuracy", "best": scores["2"], "best_epoch": 2,
              "last": scores["3"], "max_over_all_stages": scores["2"], "collapsed": False,
              "stages": {"stage1": {"seconds": 1.0, "last": {}}, "stage2": final}}
    (folder / "result.json").write_text(json.dumps(result))
    return {"best": 100 * scores["2"], "last": 100 * scores["3"], "predictions": epochs}


def test_against_a_baseline_each_method_gets_scipys_paired_interval_and_exact_p_for_best_and_last(tmp_path):
    out, rng = tmp_path / "grid", np.random.default_rng(0)
    gold = rng.integers(0, 2, 277)
    runs = {(label, seed): write_run_with_predictions(out, "rte", label, seed, best, last, rng, gold)
            for label, shift in (("ft", 0.0), ("ehft-bitfit", 0.05)) for seed in range(1, 6)
            for best, last in [(0.7 + shift + 0.01 * seed, 0.6 + 0.02 * seed)]}
    for seed in (2, 3, 4, 5, 7):  # another method on other seeds: unpaired
        runs["lp-ft", seed] = write_run_with_predictions(out, "rte", "lp-ft", seed, 0.72, 0.7, rng, gold)
    rows = {r["method"]: r for r in write_report(out, table="1", baseline="ft")}
    for score in ("best", "last"):
        ours = np.array([runs["ehft-bitfit", s][score] for s in range(1, 6)])
        base = np.array([runs["ft", s][score] for s in range(1, 6)])
        ci = scipy_stats.ttest_rel(ours, base).confidence_interval()
        p = scipy_stats.permutation_test((ours, base), lambda x, y, axis: np.mean(x - y, axis=axis),
                                         permutation_type="samples", vectorized=True, n_resamples=np.inf).pvalue
        row = rows["ehft-bitfit"]
        assert row["diff_test"] == "paired"
        assert row[f"{score}_diff"] == round(float(np.mean(ours - base)), 2)
        assert (row[f"{score}_diff_low"], row[f"{score}_diff_high"]) == (round(ci.low, 2), round(ci.high, 2))
        assert row[f"{score}_diff_p"] == round(p, 4)
        lp = np.array([runs["lp-ft", s][score] for s in (2, 3, 4, 5, 7)])
        welch = scipy_stats.ttest_ind(lp, base, equal_var=False).confidence_interval()
        assert rows["lp-ft"]["diff_test"] == "unpaired"
        assert rows["lp-ft"][f"{score}_diff_low"] == round(welch.low, 2)
    assert rows["ft"]["diff_test"] is None and rows["ft"]["best_diff"] is None
    header = (out / "report.csv").read_text().splitlines()[0].split(",")
    assert {"best_diff", "best_diff_low", "best_diff_high", "best_diff_p", "last_diff_p", "diff_test",
            "dev_halfwidth"} <= set(header)
    report = (out / "report.md").read_text()
    row = rows["ehft-bitfit"]
    assert (f"| rte | ehft-bitfit | paired | {row['best_diff']:+.2f} | [{row['best_diff_low']:+.2f}, "
            f"{row['best_diff_high']:+.2f}] | {row['best_diff_p']:.3f} |") in report.split("## Against ft")[1]
    view = report.split("## The paper's view")[1]
    assert f"| ehft-bitfit − ft | {row['best_diff']:+.2f} (p {row['best_diff_p']:.3f}) |" in view


def write_feature_change(out, task, label, seed, distance, stale=False):
    """RUN/feature_change.json as `sat-ehft analyze 1` keeps it: tied to the digest of the run's result.json."""
    run = out / task / label.replace(" ", "__") / f"seed{seed}"
    digest = hashlib.sha256((run / "result.json").read_bytes()).hexdigest()
    (run / "feature_change.json").write_text(json.dumps({"distance": distance, "method": label, "task": task,
                                                         "result_sha256": "0" * 64 if stale else digest}))


def test_the_feature_distance_of_each_cell_and_its_difference_from_the_baseline_against_scipy(tmp_path):
    out, rng = tmp_path / "grid", np.random.default_rng(2)
    distances = {("ft", seed): 13.5 + rng.normal(0, 0.2) for seed in range(1, 6)}
    distances.update({("ehft-bitfit", seed): 11.0 + rng.normal(0, 0.4) for seed in range(1, 6)})
    for (label, seed), distance in distances.items():
        write_result(out, "cb", label, seed, 70.0 + seed)
        write_feature_change(out, "cb", label, seed, distance)
    for seed in range(1, 6):  # one seed's numbers were measured on an earlier result.json: the cell has none
        write_result(out, "cb", "lp-ft", seed, 70.0)
        write_feature_change(out, "cb", "lp-ft", seed, 9.0, stale=seed == 3)
    rows = {r["method"]: r for r in write_report(out, table="1", baseline="ft")}
    ours = np.array([distances["ehft-bitfit", s] for s in range(1, 6)])
    base = np.array([distances["ft", s] for s in range(1, 6)])
    ci = scipy_stats.ttest_rel(ours, base).confidence_interval()
    p = scipy_stats.permutation_test((ours, base), lambda x, y, axis: np.mean(x - y, axis=axis),
                                     permutation_type="samples", vectorized=True, n_resamples=np.inf).pvalue
    row = rows["ehft-bitfit"]
    assert (row["feature_distance_mean"], row["feature_distance_std"]) == (round(ours.mean(), 2),
                                                                           round(ours.std(ddof=1), 2))
    assert row["feature_distance_diff"] == round(float(np.mean(ours - base)), 2)
    assert (row["feature_distance_diff_low"], row["feature_distance_diff_high"]) == (round(ci.low, 2),
                                                                                     round(ci.high, 2))
    assert row["feature_distance_diff_p"] == round(p, 4)
    assert rows["lp-ft"]["feature_distance_mean"] is None and rows["lp-ft"]["feature_distance_diff"] is None
    report = (out / "report.md").read_text()
    assert f"| {base.mean():.2f} ± {base.std(ddof=1):.2f} |" in report.split("## Against")[0]
    against = report.split("## Against ft")[1].split("## The paper's view")[0]
    assert "| Δ feature distance | 95% interval | p |" in against
    assert (f"| {row['feature_distance_diff']:+.2f} | [{row['feature_distance_diff_low']:+.2f}, "
            f"{row['feature_distance_diff_high']:+.2f}] | {row['feature_distance_diff_p']:.3f} |") in against
    assert [line for line in against.splitlines() if "| lp-ft |" in line][0].endswith("|  |  |  |")


def test_each_run_gets_a_bootstrap_interval_of_its_best_and_last_epochs_own_predictions(tmp_path):
    out, rng = tmp_path / "grid", np.random.default_rng(1)
    gold = rng.integers(0, 2, 100)
    run = write_run_with_predictions(out, "copa", "ehft-lora", 1, 0.8, 0.6, rng, gold)
    write_report(out, table="1")
    listed = next(csv.DictReader(io.StringIO((out / "runs.csv").read_text())))
    for score, epoch in (("best", "2"), ("last", "3")):  # the final stage's epochs, not Stage 1's
        low, high = bootstrap_interval("accuracy", run["predictions"][epoch], gold)
        assert (float(listed[f"{score}_low"]), float(listed[f"{score}_high"])) == pytest.approx((100 * low, 100 * high))
    report = (out / "report.md").read_text()
    low, high = bootstrap_interval("accuracy", run["predictions"]["2"], gold)
    assert f"| copa | ehft-lora | 1 | {run['best']:.2f} | [{100 * low:.2f}, {100 * high:.2f}] |" in report
    row = next(r for r in write_report(out, table="1") if r["method"] == "ehft-lora")
    assert row["dev_halfwidth"] == round(50 * (high - low), 2)


def test_a_baseline_without_runs_is_refused_naming_the_methods_there(tmp_path):
    write_result(tmp_path / "grid", "rte", "ft", 1, 60.0)
    with pytest.raises(ValueError, match="--baseline fr: no finished run of it in .*; methods there: ft"):
        write_report(tmp_path / "grid", baseline="fr")


def test_a_damaged_result_is_named_and_left_out_and_a_mistyped_folder_is_refused(tmp_path, capsys):
    """A truncated result.json (or dev_predictions.json) stopped the whole grid's report with a bare JSON
    message; now the report names it, leaves that run out and reports the rest. A grid folder that does not
    exist is refused, not created."""
    write_result(tmp_path / "grid", "rte", "ft", 1, 60.0)
    write_result(tmp_path / "grid", "rte", "ft", 2, 70.0)
    damaged = tmp_path / "grid" / "rte" / "ft" / "seed2" / "result.json"
    damaged.write_text(damaged.read_text()[:30])
    rows = write_report(tmp_path / "grid")
    assert [(row["task"], row["method"], row["seeds"], row["best_mean"]) for row in rows] == [("rte", "ft", 1, 60.0)]
    problem = f"{damaged}: damaged, not valid JSON ("
    assert f"warning: {problem}" in capsys.readouterr().err
    assert f"## Unreadable runs\n\n- {problem}" in (tmp_path / "grid" / "report.md").read_text()
    rng = np.random.default_rng(0)
    write_run_with_predictions(tmp_path / "grid", "rte", "ehft-bitfit", 1, 0.7, 0.6, rng, rng.integers(0, 2, 20))
    predictions = tmp_path / "grid" / "rte" / "ehft-bitfit" / "seed1" / "stage2" / "dev_predictions.json"
    predictions.write_text(predictions.read_text()[:25])
    assert [row["method"] for row in write_report(tmp_path / "grid")] == ["ft"]
    assert f"- {predictions}: damaged, not valid JSON (" in (tmp_path / "grid" / "report.md").read_text()
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}/gird: no such folder"):
        write_report(tmp_path / "gird")
    assert not (tmp_path / "gird").exists()
