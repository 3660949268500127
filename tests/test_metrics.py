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
