"""Drift tests and online accuracy (``ml.drift``) on hand-made windows, checked against scipy.

No services: each test builds a window of ``(predicted label, confidence, true label)`` and a
reference, and compares what ``ml.drift`` reports with ``scipy.stats`` called directly.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from ml.drift import (
    DriftRule,
    class_drift,
    confidence_drift,
    confidence_histogram,
    feedback_accuracy,
    monitoring_report,
    reference_from_predictions,
)

RULE = DriftRule(alpha=0.01, min_predictions=100)
UNIFORM = {"cat": 1 / 3, "coffee": 1 / 3, "rocket": 1 / 3}

Entry = tuple[str, float, str | None]


def _confidences(count: int, low: float, high: float, seed: int) -> list[float]:
    return [float(x) for x in np.random.default_rng(seed).uniform(low, high, count)]


# --- chi-square on predicted classes ---------------------------------------------------------


def test_class_counts_matching_the_reference_do_not_drift_and_equal_scipys_statistic() -> None:
    observed = {"cat": 40, "coffee": 35, "rocket": 45}
    found = class_drift(observed, UNIFORM, RULE)
    expected = stats.chisquare([40, 35, 45], [40, 40, 40])
    assert found["statistic"] == pytest.approx(float(expected.statistic))
    assert found["p_value"] == pytest.approx(float(expected.pvalue))
    assert found["drifted"] is False
    assert found["observed"] == observed and found["reference"] == UNIFORM


def test_a_skewed_class_mix_drifts() -> None:
    found = class_drift({"cat": 100, "coffee": 10, "rocket": 10}, UNIFORM, RULE)
    assert found["p_value"] < 1e-10
    assert found["drifted"] is True


def test_classes_expecting_fewer_than_five_are_pooled_smallest_first() -> None:
    reference = {"a": 0.01, "b": 0.02, "c": 0.03, "d": 0.44, "e": 0.5}
    observed = {"a": 10, "b": 0, "c": 5, "d": 40, "e": 45}  # 100 in all
    found = class_drift(observed, reference, RULE)
    # expected 1, 2, 3 (a, b, c) pool into one bin expecting 6; d and e stand alone
    pooled = stats.chisquare([15, 40, 45], [6, 44, 50])
    assert found["statistic"] == pytest.approx(float(pooled.statistic))
    assert found["p_value"] == pytest.approx(float(pooled.pvalue))
    unpooled = stats.chisquare([10, 0, 5, 40, 45], [1, 2, 3, 44, 50])
    assert found["statistic"] != pytest.approx(float(unpooled.statistic))


def test_a_remainder_under_five_joins_the_last_bin() -> None:
    reference = dict.fromkeys("abcde", 0.2)
    observed = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}  # 15: each class expects 3
    found = class_drift(observed, reference, DriftRule(0.01, 1))
    bins = stats.chisquare([3, 12], [6, 9])  # a + b, then c + d with e's remainder
    assert found["statistic"] == pytest.approx(float(bins.statistic))
    assert found["p_value"] == pytest.approx(float(bins.pvalue))


def test_a_class_the_reference_never_predicted_is_pooled_not_divided_by_zero() -> None:
    reference = {"cat": 0.5, "coffee": 0.5}
    found = class_drift({"cat": 50, "coffee": 50, "astronaut": 30}, reference, RULE)
    # astronaut expects 0 and pools with cat (the next smallest by name): 80 vs 65, 50 vs 65
    expected = stats.chisquare([80, 50], [65, 65])
    assert found["statistic"] == pytest.approx(float(expected.statistic))
    assert found["drifted"] is True


def test_fewer_than_two_bins_after_pooling_is_no_test() -> None:
    found = class_drift({"cat": 3, "coffee": 3, "rocket": 3}, UNIFORM, RULE)  # 3 expected each
    assert (found["statistic"], found["p_value"], found["drifted"]) == (None, None, None)
    one_class = class_drift({"cat": 200}, {"cat": 1.0}, RULE)
    assert (one_class["statistic"], one_class["p_value"], one_class["drifted"]) == (
        None,
        None,
        None,
    )


def test_drift_needs_a_small_p_value_and_enough_predictions() -> None:
    skewed = {"cat": 60, "coffee": 10, "rocket": 10}  # 80 predictions, p far under alpha
    found = class_drift(skewed, UNIFORM, RULE)
    assert found["p_value"] < RULE.alpha
    assert found["drifted"] is False  # under min_predictions
    assert class_drift(skewed, UNIFORM, DriftRule(0.01, 80))["drifted"] is True
    strict = DriftRule(alpha=found["p_value"] / 2, min_predictions=1)
    assert class_drift(skewed, UNIFORM, strict)["drifted"] is False  # p not under alpha


# --- Kolmogorov-Smirnov on confidences -------------------------------------------------------


def test_a_confidence_shift_drifts_and_equals_scipys_ks_test() -> None:
    reference = _confidences(60, 0.85, 1.0, seed=1)
    observed = _confidences(150, 0.4, 0.8, seed=2)
    found = confidence_drift(observed, reference, RULE)
    expected = stats.ks_2samp(observed, reference)
    assert found["statistic"] == pytest.approx(float(expected.statistic))
    assert found["p_value"] == pytest.approx(float(expected.pvalue))
    assert found["drifted"] is True
    assert found["observed_mean"] == pytest.approx(float(np.mean(observed)))
    assert found["reference_mean"] == pytest.approx(float(np.mean(reference)))


def test_confidences_from_the_reference_distribution_do_not_drift() -> None:
    reference = _confidences(60, 0.85, 1.0, seed=1)
    found = confidence_drift(_confidences(150, 0.85, 1.0, seed=3), reference, RULE)
    assert found["p_value"] > RULE.alpha
    assert found["drifted"] is False


def test_a_confidence_shift_in_too_few_predictions_is_not_drift() -> None:
    reference = _confidences(60, 0.85, 1.0, seed=1)
    found = confidence_drift(_confidences(50, 0.1, 0.3, seed=2), reference, RULE)
    assert found["p_value"] < RULE.alpha
    assert found["drifted"] is False


def test_the_confidence_histogram_counts_the_window_and_shares_the_reference_in_tenths() -> None:
    found = confidence_histogram([0.05, 0.15, 0.95, 1.0, 1.0], [0.55, 0.95, 0.97, 1.0])
    assert found["edges"] == [round(0.1 * i, 2) for i in range(11)]
    assert found["observed"] == [1, 1, 0, 0, 0, 0, 0, 0, 0, 3]  # 1.0 in the last bin
    assert found["reference"] == [0, 0, 0, 0, 0, 0.25, 0, 0, 0, 0.75]
    report = confidence_drift(_confidences(150, 0.4, 0.8, seed=2), None, RULE)
    assert sum(report["histogram"]["observed"]) == 150 and report["histogram"]["reference"] is None
    assert confidence_histogram([], None)["observed"] == [0] * 10


# --- no reference ----------------------------------------------------------------------------


def test_without_a_reference_every_statistic_is_none_and_nothing_drifts() -> None:
    entries: list[Entry] = [("cat", 0.2, None)] * 300  # would be drift against any reference
    report = monitoring_report(entries, None, RULE)
    assert report["drifted"] is None
    assert report["predictions"] == 300
    for test in ("classes", "confidence"):
        assert report[test]["statistic"] is None
        assert report[test]["p_value"] is None
        assert report[test]["drifted"] is None
    assert report["classes"]["reference"] is None
    assert report["confidence"]["reference_mean"] is None
    assert report["classes"]["observed"] == {"cat": 300}


def test_an_empty_window_reports_no_test() -> None:
    report = monitoring_report([], {"classes": UNIFORM, "confidences": [0.9, 0.95]}, RULE)
    assert report["predictions"] == 0
    assert report["drifted"] is None
    assert report["confidence"]["observed_mean"] is None
    assert report["feedback"]["count"] == 0 and report["feedback"]["accuracy"] is None


def test_the_report_drifts_when_either_test_does() -> None:
    reference = {"classes": UNIFORM, "confidences": _confidences(60, 0.85, 1.0, seed=1)}
    labels = ["cat", "coffee", "rocket"] * 50
    unsure: list[Entry] = [
        (label, score, None)
        for label, score in zip(labels, _confidences(150, 0.3, 0.6, seed=4), strict=True)
    ]
    report = monitoring_report(unsure, reference, RULE)
    assert report["classes"]["drifted"] is False
    assert report["confidence"]["drifted"] is True
    assert report["drifted"] is True
    sure: list[Entry] = [
        (label, score, None)
        for label, score in zip(labels, _confidences(150, 0.85, 1.0, seed=5), strict=True)
    ]
    assert monitoring_report(sure, reference, RULE)["drifted"] is False


# --- online accuracy from feedback -----------------------------------------------------------


def test_feedback_accuracy_counts_labelled_predictions_exactly() -> None:
    entries: list[Entry] = [  # newest first
        ("cat", 0.9, "cat"),
        ("cat", 0.8, "coffee"),
        ("coffee", 0.7, None),
        ("rocket", 0.9, "rocket"),
        ("coffee", 0.6, "coffee"),
        ("rocket", 0.5, "cat"),
    ]
    found = feedback_accuracy(entries, buckets=3)
    assert (found["count"], found["correct"]) == (5, 3)
    assert found["accuracy"] == 3 / 5
    assert found["per_class"] == {  # keyed by the true label
        "cat": {"count": 2, "correct": 1, "accuracy": 0.5},
        "coffee": {"count": 2, "correct": 1, "accuracy": 0.5},
        "rocket": {"count": 1, "correct": 1, "accuracy": 1.0},
    }
    # oldest first, in slices of two: (rocket/cat, coffee/coffee), (rocket/rocket, unlabelled),
    # (cat/coffee, cat/cat)
    assert found["accuracy_series"] == [0.5, 1.0, 0.5]


def test_a_slice_without_feedback_has_no_accuracy() -> None:
    entries: list[Entry] = [("cat", 0.9, "cat"), ("cat", 0.9, None), ("cat", 0.9, None)]
    found = feedback_accuracy(entries, buckets=3)
    assert found["accuracy_series"] == [None, None, 1.0]
    assert feedback_accuracy([], buckets=3) == {
        "count": 0,
        "correct": 0,
        "accuracy": None,
        "per_class": {},
        "accuracy_series": [],
    }


# --- reference from the test split ------------------------------------------------------------


def test_the_reference_is_the_predicted_class_frequencies_and_top1_confidences() -> None:
    probabilities = np.array(
        [
            [0.7, 0.2, 0.1],
            [0.1, 0.8, 0.1],
            [0.2, 0.5, 0.3],
            [0.05, 0.05, 0.9],
        ],
        dtype=np.float32,
    )
    reference = reference_from_predictions(probabilities, ["cat", "coffee", "rocket"])
    assert reference["classes"] == {"cat": 0.25, "coffee": 0.5, "rocket": 0.25}
    assert reference["confidences"] == pytest.approx([0.7, 0.8, 0.5, 0.9])
    never = reference_from_predictions(probabilities[:2], ["cat", "coffee", "rocket"])
    assert never["classes"]["rocket"] == 0.0  # a class it never predicted is still listed


def test_predictions_like_the_reference_sample_do_not_drift() -> None:
    rng = np.random.default_rng(7)
    logits = rng.normal(size=(300, 3)) + np.eye(3)[rng.integers(0, 3, 300)] * 4
    probabilities = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    classes = ["cat", "coffee", "rocket"]
    reference = reference_from_predictions(probabilities[:100], classes)
    entries: list[Entry] = [
        (classes[int(np.argmax(row))], float(row.max()), None) for row in probabilities[100:]
    ]
    report = monitoring_report(entries, reference, RULE)
    assert report["classes"]["observed"] == dict(
        sorted(Counter(label for label, _, _ in entries).items())
    )
    assert report["drifted"] is False
