"""Metrics against independent formulas (numpy, written out by hand here)."""

import numpy as np
import pytest

from sat_ehft import metrics


@pytest.fixture
def binary():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    predictions = np.where(rng.random(200) < 0.7, labels, 1 - labels)
    return predictions, labels


def test_accuracy(binary):
    predictions, labels = binary
    assert metrics.accuracy(predictions, labels) == pytest.approx(np.mean(predictions == labels))


def test_f1_of_positive_class(binary):
    predictions, labels = binary
    tp = np.sum((predictions == 1) & (labels == 1))
    fp = np.sum((predictions == 1) & (labels == 0))
    fn = np.sum((predictions == 0) & (labels == 1))
    assert metrics.f1(predictions, labels) == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_matthews(binary):
    predictions, labels = binary
    tp = np.sum((predictions == 1) & (labels == 1))
    tn = np.sum((predictions == 0) & (labels == 0))
    fp = np.sum((predictions == 1) & (labels == 0))
    fn = np.sum((predictions == 0) & (labels == 1))
    expected = (tp * tn - fp * fn) / np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    assert metrics.matthews(predictions, labels) == pytest.approx(expected)
    assert metrics.matthews(np.ones(200), labels) == 0.0
    # Anti-correlated predictions keep their sign (a CoLA head that learned the labels backwards scores < 0).
    # By hand: tp 2, tn 2, fp 3, fn 3, so (2 * 2 - 3 * 3) / sqrt(5 * 5 * 5 * 5) = -0.2.
    gold = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 1])
    backwards = np.array([0, 0, 0, 1, 1, 1, 1, 0, 0, 1])
    assert metrics.matthews(backwards, gold) == pytest.approx(-0.2)
    assert metrics.matthews(1 - gold, gold) == -1.0


def test_correlations():
    rng = np.random.default_rng(1)
    labels = rng.uniform(0, 5, 300)
    predictions = labels + rng.normal(0, 1.5, 300)
    assert metrics.pearson(predictions, labels) == pytest.approx(np.corrcoef(predictions, labels)[0, 1])
    ranks = [np.argsort(np.argsort(x)) for x in (predictions, labels)]  # no ties in continuous data
    assert metrics.spearman(predictions, labels) == pytest.approx(np.corrcoef(*ranks)[0, 1])
    assert metrics.pearson(np.full(300, 2.5), labels) == 0.0  # a constant head is no correlation, not NaN


def test_compute_checks_names_and_lengths(binary):
    predictions, labels = binary
    assert metrics.compute(["accuracy", "f1"], predictions, labels) == {
        "accuracy": metrics.accuracy(predictions, labels), "f1": metrics.f1(predictions, labels)}
    with pytest.raises(ValueError, match="unknown metric.*bleu"):
        metrics.compute(["bleu"], predictions, labels)
    with pytest.raises(ValueError, match="199 predictions for 200 labels"):
        metrics.compute(["accuracy"], predictions[:-1], labels)


def average_ranks(values):
    """Ranks from 1, tied values sharing the mean of their ranks (written out here, not scipy's)."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def test_spearman_with_ties_and_negative_correlations():
    labels = [0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 5.0]  # STS-B scores repeat
    predictions = [4.0, 3.5, 3.5, 2.0, 1.0, 1.0, 0.5, 0.5]  # falling: a negative correlation, with ties
    expected = np.corrcoef(average_ranks(predictions), average_ranks(labels))[0, 1]
    assert expected < -0.9
    assert metrics.spearman(predictions, labels) == pytest.approx(expected)
    assert metrics.pearson(predictions, labels) == pytest.approx(np.corrcoef(predictions, labels)[0, 1])


@pytest.mark.parametrize("task_name, configured, metric", [
    ("cola", "", "matthews"), ("mrpc", "", "f1"), ("sts-b", "", "pearson"), ("sts-b", "spearman", "spearman"),
    ("rte", "", "accuracy")])
def test_the_best_epoch_is_picked_by_the_selection_metric_earliest_on_ties(task_name, configured, metric):
    from sat_ehft.config import Config
    from sat_ehft.pipeline import summarize
    from sat_ehft.tasks import get_task

    task = get_task(task_name)
    others = [m for m in task.metrics if m != metric]
    values = [-0.30, -0.10, 0.40, 0.40, 0.20]  # negative early (correlations can be); a tie at the top
    records = [{"epoch": e + 1, metric: v, **{o: 1 - v for o in others}} for e, v in enumerate(values)]
    summary = summarize(task, records, Config(best_metric=configured))
    assert summary["metric"] == metric and summary["best"]["epoch"] == 3 and summary["last"]["epoch"] == 5
