"""``ml.roc`` and ``ml.confidence``: ROC/AUC and calibration errors against values by hand."""

from __future__ import annotations

import numpy as np
import pytest

from ml.confidence import calibration_bins, calibration_errors
from ml.roc import one_vs_rest_aucs, roc_auc, roc_curve


def test_roc_curve_steps_through_each_distinct_score() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    curve = roc_curve(scores, np.array([True, False, True, False]))
    assert curve is not None
    fpr, tpr = curve
    assert fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert roc_auc(fpr, tpr) == pytest.approx(0.75)  # 3 of 4 positive-negative pairs in order


def test_tied_scores_take_one_diagonal_step_and_count_half() -> None:
    tied = np.array([0.5, 0.5, 0.5, 0.5])
    curve = roc_curve(tied, np.array([True, False, True, False]))
    assert curve is not None
    assert curve[0].tolist() == [0.0, 1.0] and curve[1].tolist() == [0.0, 1.0]
    assert roc_auc(*curve) == pytest.approx(0.5)
    # The order the tied images are listed in does not matter.
    reordered = roc_curve(tied, np.array([False, False, True, True]))
    assert reordered is not None and roc_auc(*reordered) == pytest.approx(0.5)
    # A positive tied with one negative and above another: 1 + 1/2 of 2 pairs.
    mixed = roc_curve(np.array([0.4, 0.4, 0.1]), np.array([True, False, False]))
    assert mixed is not None and roc_auc(*mixed) == pytest.approx(0.75)


def test_perfect_and_reversed_rankings_score_one_and_zero() -> None:
    positive = np.array([True, True, False, False])
    best = roc_curve(np.array([0.9, 0.8, 0.2, 0.1]), positive)
    worst = roc_curve(np.array([0.1, 0.2, 0.8, 0.9]), positive)
    assert best is not None and roc_auc(*best) == 1.0
    assert worst is not None and roc_auc(*worst) == 0.0


def test_a_class_with_no_positives_or_no_negatives_has_no_curve() -> None:
    assert roc_curve(np.array([0.2, 0.3]), np.array([False, False])) is None
    assert roc_curve(np.array([0.2, 0.3]), np.array([True, True])) is None


def test_a_missing_class_is_undefined_and_out_of_the_macro_auc() -> None:
    probabilities = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    aucs, summary = one_vs_rest_aucs(probabilities, np.array([0, 1, 1]), ["a", "b", "c"])
    assert aucs == [1.0, 1.0, None]
    assert summary == {"macro_auc": 1.0, "auc_undefined": ["c"]}


def test_perfectly_calibrated_bins_have_no_calibration_error() -> None:
    # Ten images at confidence 0.8, eight right; ten at 0.6, six right.
    probabilities = np.array([[0.8, 0.2]] * 10 + [[0.6, 0.4]] * 10)
    labels = np.array([0] * 8 + [1] * 2 + [0] * 6 + [1] * 4)
    errors = calibration_errors(probabilities, labels)
    assert errors["ece"] == pytest.approx(0.0, abs=1e-12)
    assert errors["mce"] == pytest.approx(0.0, abs=1e-12)


def test_an_overconfident_model_has_the_expected_calibration_error() -> None:
    # 0.95 sure every time, right half the time: a gap of 0.45 in the one bin with images.
    probabilities = np.array([[0.95, 0.05]] * 10)
    labels = np.array([0, 1] * 5)
    errors = calibration_errors(probabilities, labels)
    assert errors["ece"] == pytest.approx(0.45)
    assert errors["mce"] == pytest.approx(0.45)
    # Two bins: weighted by their images for the ECE, the worst for the MCE.
    probabilities = np.array([[0.95, 0.05]] * 10 + [[0.55, 0.45]] * 30)
    labels = np.array([0, 1] * 5 + [0] * 30)
    errors = calibration_errors(probabilities, labels)
    assert errors["ece"] == pytest.approx((10 * 0.45 + 30 * 0.45) / 40)
    assert errors["mce"] == pytest.approx(0.45)


def test_bins_are_fifteen_equal_widths_closed_on_the_right() -> None:
    probabilities = np.array([[1.0, 0.0], [0.5, 0.5], [2 / 3, 1 / 3]])
    bins = calibration_bins(probabilities, np.array([0, 0, 1]))
    assert len(bins) == 15
    assert bins[0]["lower"] == 0.0 and bins[-1]["upper"] == 1.0
    assert bins[-1]["count"] == 1  # confidence 1.0 is in the last bin
    assert bins[7]["count"] == 1  # 0.5 in (7/15, 8/15]
    assert bins[9]["count"] == 1 and bins[9]["accuracy"] == 0.0  # 2/3 in (9/15, 10/15]
    assert bins[1]["confidence"] is None and bins[1]["accuracy"] is None
