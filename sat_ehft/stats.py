"""How sure a score is: a method against a baseline over seeds, and a run's own dev score over dev examples.

`difference` compares two methods' scores on one task. With the same seeds on both sides the test is paired
by seed: the mean of the per-seed differences, its 95% t-interval (as scipy.stats.ttest_rel gives it) and
an exact sign-flip permutation p-value (every one of the 2^n sign patterns of the differences, as
scipy.stats.permutation_test with permutation_type='samples' computes it). With different seeds it is
unpaired: the difference of the means, Welch's 95% interval (ttest_ind(equal_var=False)) and an exact
permutation p-value over every split of the pooled scores (permutation_type='independent'). Past
EXACT_LIMIT arrangements, that many are drawn from a fixed seed instead.

`bootstrap_interval` resamples a run's dev examples with replacement and recomputes the task's metric
(accuracy, F1, Matthews, Pearson, Spearman) on each resample: a 95% percentile interval, from a fixed seed.
A COPA run's predictions are one per question (the chosen alternative), so COPA resamples questions.
"""

import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
EXACT_LIMIT = 100_000  # arrangements a permutation test enumerates; beyond it, this many random ones
RESAMPLES = 2000  # bootstrap resamples of a run's dev set
SEED = 0  # the bootstrap's and the random permutations' seed: a report is reproducible to the digit


@dataclass(frozen=True)
class Difference:
    """A method's score minus the baseline's: the mean, its 95% interval, a two-sided p-value, which test."""

    mean: float
    low: float
    high: float
    p: float
    test: str  # 'paired' (same seeds on both sides) or 'unpaired'


def difference(scores, baseline):
    """`scores` and `baseline`: {seed: score}. Paired by seed when both have the same seeds, else unpaired."""
    if not scores or not baseline:
        raise ValueError("difference: both sides need at least one score")
    if sorted(scores) == sorted(baseline):
        differences = np.array([scores[seed] - baseline[seed] for seed in sorted(scores)], float)
        return _paired(differences)
    return _unpaired(np.array(list(scores.values()), float), np.array(list(baseline.values()), float))


def _paired(differences):
    n, mean = len(differences), float(differences.mean())
    low, high = _t_interval(mean, _sd(differences) / math.sqrt(n), n - 1)
    null = (_sign_patterns(n) * differences).mean(axis=1)
    return Difference(mean, low, high, _two_sided_p(null, mean, exact=2 ** n <= EXACT_LIMIT), "paired")


def _unpaired(x, y):
    mean = float(x.mean() - y.mean())
    spread_x, spread_y = _sd(x) ** 2 / len(x), _sd(y) ** 2 / len(y)
    error = math.sqrt(spread_x + spread_y)
    welch_df = (spread_x + spread_y) ** 2 / (spread_x ** 2 / (len(x) - 1) + spread_y ** 2 / (len(y) - 1)) \
        if len(x) > 1 and len(y) > 1 and error > 0 else math.nan
    low, high = _t_interval(mean, error, welch_df)
    pooled, splits = np.concatenate([x, y]), _splits(len(x), len(y))
    chosen = np.zeros((len(splits), len(pooled)), bool)
    np.put_along_axis(chosen, splits, True, axis=1)
    null = (np.where(chosen, pooled, 0).sum(axis=1) / len(x)
            - np.where(chosen, 0, pooled).sum(axis=1) / len(y))
    return Difference(mean, low, high, _two_sided_p(null, mean, exact=math.comb(len(pooled), len(x)) <= EXACT_LIMIT),
                      "unpaired")


def _sd(values):
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def _t_interval(mean, error, df):
    """mean ± t(0.975, df) x error; NaN where undefined (one seed)."""
    if not df > 0 or math.isnan(error):
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * error
    return mean - half, mean + half


def _sign_patterns(n):
    """Every pattern of +1/-1 over n differences, or EXACT_LIMIT random ones."""
    if 2 ** n <= EXACT_LIMIT:
        return np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    return np.random.default_rng(SEED).choice((1.0, -1.0), size=(EXACT_LIMIT, n))


def _splits(n_x, n_y):
    """Every choice of n_x of the pooled n_x + n_y positions as the first group, or EXACT_LIMIT random ones."""
    if math.comb(n_x + n_y, n_x) <= EXACT_LIMIT:
        return np.array(list(itertools.combinations(range(n_x + n_y), n_x)))
    rng = np.random.default_rng(SEED)
    return np.argsort(rng.random((EXACT_LIMIT, n_x + n_y)), axis=1)[:, :n_x]


def _two_sided_p(null, observed, exact):
    """Twice the smaller tail of the null distribution at `observed` (ties within 100 ulps count as reached);
    a random null adds one to both counts, so that p is never 0."""
    slack, adjustment = abs(np.finfo(float).eps * 100 * observed), 0 if exact else 1
    below = (np.count_nonzero(null <= observed + slack) + adjustment) / (len(null) + adjustment)
    above = (np.count_nonzero(null >= observed - slack) + adjustment) / (len(null) + adjustment)
    return float(min(1.0, 2 * min(below, above)))


def bootstrap_interval(metric, predictions, gold, resamples=RESAMPLES, seed=SEED):
    """The 95% percentile bootstrap interval of `metric` (a sat_ehft.metrics name) over the dev examples."""
    predictions, gold = np.asarray(predictions), np.asarray(gold)
    if len(predictions) != len(gold) or not len(gold):
        raise ValueError(f"bootstrap: {len(predictions)} predictions for {len(gold)} labels")
    rows = np.random.default_rng(seed).integers(0, len(gold), size=(resamples, len(gold)))
    values = RESAMPLED[metric](predictions[rows], gold[rows])
    tail = 100 * (1 - CONFIDENCE) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


# Each metric of sat_ehft.metrics on every row of [resamples, examples] at once, with the same conventions
# (F1 and Matthews 0 where undefined, a correlation 0 where either side is constant).
def _accuracy(predictions, gold):
    return (predictions == gold).mean(axis=1)


def _f1(predictions, gold):
    true_positive = ((predictions == 1) & (gold == 1)).sum(axis=1)
    wrong = ((predictions == 1) != (gold == 1)).sum(axis=1)
    return _divide(2 * true_positive, 2 * true_positive + wrong)


def _matthews(predictions, gold):
    classes = np.union1d(np.unique(predictions), np.unique(gold))
    n, correct = predictions.shape[1], (predictions == gold).sum(axis=1)
    predicted = np.stack([(predictions == c).sum(axis=1) for c in classes], axis=1).astype(float)
    true = np.stack([(gold == c).sum(axis=1) for c in classes], axis=1).astype(float)
    numerator = correct * n - (predicted * true).sum(axis=1)
    denominator = np.sqrt((n ** 2 - (predicted ** 2).sum(axis=1)) * (n ** 2 - (true ** 2).sum(axis=1)))
    return _divide(numerator, denominator)


def _pearson(predictions, gold):
    x = predictions - predictions.mean(axis=1, keepdims=True)
    y = gold - gold.mean(axis=1, keepdims=True)
    constant = (np.ptp(predictions, axis=1) == 0) | (np.ptp(gold, axis=1) == 0)
    return np.where(constant, 0.0, _divide((x * y).sum(axis=1), np.sqrt((x ** 2).sum(axis=1) * (y ** 2).sum(axis=1))))


def _spearman(predictions, gold):
    constant = (np.ptp(predictions, axis=1) == 0) | (np.ptp(gold, axis=1) == 0)
    ranked = _pearson(stats.rankdata(predictions, axis=1), stats.rankdata(gold, axis=1))
    return np.where(constant, 0.0, ranked)


def _divide(numerator, denominator):
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator != 0)


RESAMPLED = {"accuracy": _accuracy, "f1": _f1, "matthews": _matthews, "pearson": _pearson, "spearman": _spearman}
