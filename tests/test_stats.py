"""sat_ehft.stats against scipy: paired and unpaired differences over seeds, bootstrap intervals over dev
examples."""

import numpy as np
import pytest
from scipy import stats as scipy_stats

from sat_ehft import metrics, stats


def mean_difference(x, y, axis):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def scipy_paired(x, y):
    ci = scipy_stats.ttest_rel(x, y).confidence_interval(0.95)
    p = scipy_stats.permutation_test((x, y), mean_difference, permutation_type="samples", vectorized=True,
                                     n_resamples=np.inf).pvalue
    return ci.low, ci.high, p


def scipy_unpaired(x, y):
    ci = scipy_stats.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    p = scipy_stats.permutation_test((x, y), mean_difference, permutation_type="independent", vectorized=True,
                                     n_resamples=np.inf).pvalue
    return ci.low, ci.high, p


# Scores as a grid holds them (x 100): continuous ones, and CB-like accuracies on 56 examples whose differences
# tie in the null distribution.
PAIRED = [
    (np.random.default_rng(1).normal(70, 2, 5), np.random.default_rng(2).normal(68, 2, 5)),
    (np.array([69.64, 71.43, 73.21, 69.64, 75.0, 71.43]), np.array([67.86, 71.43, 69.64, 71.43, 69.64, 67.86])),
    (np.random.default_rng(3).normal(60, 3, 12), np.random.default_rng(4).normal(60, 3, 12)),
]


@pytest.mark.parametrize("ours, baseline", PAIRED)
def test_a_paired_difference_is_scipys_t_interval_and_exact_sign_flip_test(ours, baseline):
    seeds = range(1, len(ours) + 1)
    result = stats.difference(dict(zip(seeds, ours)), dict(zip(seeds, baseline)))
    low, high, p = scipy_paired(ours, baseline)
    assert result.test == "paired"
    assert result.mean == pytest.approx(np.mean(ours - baseline), abs=1e-12)
    assert (result.low, result.high) == (pytest.approx(low, abs=1e-10), pytest.approx(high, abs=1e-10))
    assert result.p == pytest.approx(p, abs=1e-12)


def test_pairs_follow_the_seed_not_the_order():
    ours, baseline = {1: 70.0, 2: 60.0, 3: 65.0}, {3: 64.0, 1: 69.0, 2: 59.5}
    result = stats.difference(ours, baseline)
    assert result.test == "paired" and result.mean == pytest.approx(np.mean([1.0, 0.5, 1.0]))
    assert result.p == pytest.approx(scipy_paired(np.array([70.0, 60, 65]), np.array([69.0, 59.5, 64]))[2])


def test_different_seeds_give_welchs_interval_and_an_exact_permutation_test():
    ours, baseline = np.array([71.0, 69.5, 73.2, 70.1, 72.0]), np.array([68.0, 70.5, 67.2, 69.9])
    result = stats.difference(dict(zip([1, 2, 3, 4, 5], ours)), dict(zip([1, 2, 3, 6], baseline)))
    low, high, p = scipy_unpaired(ours, baseline)
    assert result.test == "unpaired"
    assert result.mean == pytest.approx(ours.mean() - baseline.mean())
    assert (result.low, result.high) == (pytest.approx(low, abs=1e-10), pytest.approx(high, abs=1e-10))
    assert result.p == pytest.approx(p, abs=1e-12)


def test_past_the_exact_limit_permutations_are_drawn_and_p_is_never_zero(monkeypatch):
    ours, baseline = np.random.default_rng(5).normal(62, 1, 13), np.random.default_rng(6).normal(60, 1, 13)
    exact = scipy_paired(ours, baseline)[2]
    monkeypatch.setattr(stats, "EXACT_LIMIT", 4000)  # 2^13 = 8192 patterns: now drawn
    drawn = stats.difference(dict(enumerate(ours)), dict(enumerate(baseline)))
    assert drawn.p > 0 and drawn.p == pytest.approx(exact, abs=2 / 4000 + 0.01)
    assert drawn.p >= 2 / 4001  # (count + 1) / (draws + 1), twice


def test_one_seed_has_no_interval():
    result = stats.difference({1: 70.0}, {1: 68.0})
    assert result.mean == 2.0 and np.isnan(result.low) and np.isnan(result.high) and result.p == 1.0


def labelled(metric, n=120, seed=0):
    """Predictions and gold of a plausible run for `metric` (anti-correlated for one Matthews case)."""
    rng = np.random.default_rng(seed)
    if metric in ("pearson", "spearman"):
        gold = rng.uniform(0, 5, n).round(1)  # STS-B-like, with ties
        return gold + rng.normal(0, 1.5, n), gold
    classes = 3 if metric == "accuracy" else 2
    gold = rng.integers(0, classes, n)
    predictions = np.where(rng.random(n) < 0.7, gold, rng.integers(0, classes, n))
    return (1 - predictions if metric == "anti-matthews" else predictions), gold


@pytest.mark.parametrize("metric", ["accuracy", "f1", "matthews", "anti-matthews", "pearson", "spearman"])
def test_each_resampled_metric_is_the_metric_on_that_resample(metric):
    predictions, gold = labelled(metric)
    name = metric.replace("anti-", "")
    rows = np.random.default_rng(7).integers(0, len(gold), size=(300, len(gold)))
    rows[0] = np.arange(len(gold))  # the dev set itself: the run's own score
    rows[1] = np.flatnonzero(gold == gold[0])[0]  # one example repeated: a constant resample
    resampled = stats.RESAMPLED[name](predictions[rows], gold[rows])
    expected = [metrics.METRICS[name](predictions[r], gold[r]) for r in rows]
    assert resampled == pytest.approx(expected, abs=1e-9)
    if metric == "anti-matthews":
        assert resampled[0] < -0.3  # the sign is kept


@pytest.mark.parametrize("metric", ["accuracy", "f1", "matthews", "spearman"])
def test_a_runs_bootstrap_interval_is_scipys_percentile_interval(metric):
    predictions, gold = labelled(metric, n=200, seed=1)
    ours = stats.bootstrap_interval(metric, predictions, gold)
    reference = scipy_stats.bootstrap((predictions, gold), metrics.METRICS[metric], paired=True, vectorized=False,
                                      n_resamples=stats.RESAMPLES, method="percentile",
                                      rng=np.random.default_rng(11)).confidence_interval
    width = reference.high - reference.low
    # Two Monte Carlo estimates of the same interval: their ends agree within a few percent of its width.
    assert ours[0] == pytest.approx(reference.low, abs=0.05 * width)
    assert ours[1] == pytest.approx(reference.high, abs=0.05 * width)
    assert ours == stats.bootstrap_interval(metric, predictions, gold)  # a fixed seed: the same digits again
    assert ours[0] < metrics.METRICS[metric](predictions, gold) < ours[1]
