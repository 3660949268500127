"""The paper's metrics: accuracy; F1 (MRPC); Matthews correlation (CoLA); Pearson/Spearman (STS-B).

Each takes predictions and gold labels (class indices, or scores for regression) and returns a float
in the metric's own range (accuracy and F1 in [0, 1]; correlations in [-1, 1]).
"""

import warnings

import numpy as np
from scipy import stats
from sklearn import metrics as skm


def accuracy(predictions, labels):
    return float(skm.accuracy_score(labels, predictions))


def f1(predictions, labels):
    """Binary F1 of the positive class (index 1), as GLUE reports it for MRPC."""
    return float(skm.f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0.0))


def matthews(predictions, labels):
    return float(skm.matthews_corrcoef(labels, predictions))


def _correlation(fn, predictions, labels):
    predictions, labels = np.asarray(predictions, float), np.asarray(labels, float)
    # A constant prediction (a fresh head) has no defined correlation; count it as none rather than NaN,
    # which would poison best-score tracking.
    if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(predictions, labels)[0])


def pearson(predictions, labels):
    return _correlation(stats.pearsonr, predictions, labels)


def spearman(predictions, labels):
    return _correlation(stats.spearmanr, predictions, labels)


METRICS = {"accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman}


def compute(names, predictions, labels):
    """{name: value} for each metric in `names`."""
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; known: {sorted(METRICS)}")
    return {name: METRICS[name](predictions, labels) for name in names}
