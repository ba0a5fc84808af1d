"""Evaluation: metrics match a hand-computed example, plots are real PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.evaluate import (
    evaluate_predictions,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
)

CLASSES = ("cat", "dog", "fish")
LABELS = np.array([0, 0, 0, 1, 1, 2])
PROBABILITIES = np.array(
    [
        [0.7, 0.2, 0.1],  # cat  -> cat
        [0.5, 0.4, 0.1],  # cat  -> cat
        [0.2, 0.3, 0.5],  # cat  -> fish, cat not in the top 2
        [0.3, 0.6, 0.1],  # dog  -> dog
        [0.6, 0.3, 0.1],  # dog  -> cat, dog second
        [0.5, 0.2, 0.3],  # fish -> cat, fish second
    ]
)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_metrics_match_the_hand_computed_example() -> None:
    result = evaluate_predictions(PROBABILITIES, LABELS, CLASSES, top_k=2)
    assert result["count"] == 6
    assert result["classes"] == ["cat", "dog", "fish"]
    assert result["confusion_matrix"] == [[2, 0, 1], [1, 1, 0], [1, 0, 0]]
    assert result["accuracy"] == pytest.approx(3 / 6)
    assert result["top_k"] == 2
    assert result["top_k_accuracy"] == pytest.approx(5 / 6)
    # AUC by hand, one positive-negative pair at a time: cat's scores 0.7, 0.5, 0.2 against the
    # others' 0.3, 0.6, 0.5 win 3 + (1 + 1/2) + 0 of 9 pairs (0.5 vs 0.5 is a tie, half).
    assert result["per_class"]["cat"] == pytest.approx(
        {"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3, "auc": 4.5 / 9}
    )
    # dog: 0.6, 0.3 against 0.2, 0.4, 0.3, 0.2 win 4 + (2 + 1/2) of 8 pairs.
    assert result["per_class"]["dog"] == pytest.approx(
        {"precision": 1.0, "recall": 1 / 2, "f1": 2 / 3, "support": 2, "auc": 6.5 / 8}
    )
    # fish: 0.3 against 0.1, 0.1, 0.5, 0.1, 0.1 wins 4 of 5 pairs.
    assert result["per_class"]["fish"] == pytest.approx(
        {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1, "auc": 4 / 5}
    )
    assert result["macro_auc"] == pytest.approx((4.5 / 9 + 6.5 / 8 + 4 / 5) / 3)
    assert result["auc_undefined"] == []
    assert result["macro_avg"] == pytest.approx(
        {"precision": 1.5 / 3, "recall": 7 / 18, "f1": 26 / 63}
    )
    assert result["weighted_avg"] == pytest.approx(
        {"precision": 7 / 12, "recall": 3 / 6, "f1": 32 / 63}
    )


def test_top_k_is_capped_at_the_number_of_classes() -> None:
    result = evaluate_predictions(PROBABILITIES, LABELS, CLASSES)
    assert result["top_k"] == 3
    assert result["top_k_accuracy"] == 1.0


def test_top_1_accuracy_equals_accuracy_even_on_ties() -> None:
    tied = np.full((4, 3), 1 / 3)
    result = evaluate_predictions(tied, np.array([0, 1, 2, 0]), CLASSES, top_k=1)
    assert result["top_k_accuracy"] == result["accuracy"] == 0.5


def test_a_class_never_seen_nor_predicted_scores_zero_and_counts_in_the_macro_average() -> None:
    probabilities = np.hstack([PROBABILITIES, np.zeros((6, 1))])
    result = evaluate_predictions(probabilities, LABELS, [*CLASSES, "bird"], top_k=2)
    assert result["per_class"]["bird"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 0,
        "auc": None,
    }
    assert result["macro_avg"]["precision"] == pytest.approx(1.5 / 4)
    assert result["weighted_avg"]["precision"] == pytest.approx(7 / 12)


def test_the_result_is_plain_json() -> None:
    result = evaluate_predictions(PROBABILITIES.astype(np.float32), LABELS, CLASSES)
    assert json.loads(json.dumps(result)) == result


def test_no_samples_gives_zero_rates_rather_than_nan() -> None:
    result = evaluate_predictions(np.zeros((0, 3)), np.zeros(0, dtype=int), CLASSES)
    assert result["accuracy"] == result["top_k_accuracy"] == 0.0
    assert result["macro_avg"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert result["confusion_matrix"] == [[0, 0, 0]] * 3
    assert result["ece"] == result["mce"] == 0.0
    assert result["macro_auc"] is None and result["auc_undefined"] == list(CLASSES)


def test_a_class_absent_from_the_labels_has_no_auc_and_is_left_out_of_the_macro_auc() -> None:
    probabilities = np.hstack([PROBABILITIES, np.full((6, 1), 0.05)])
    result = evaluate_predictions(probabilities, LABELS, [*CLASSES, "bird"], top_k=2)
    assert result["per_class"]["bird"]["auc"] is None
    assert result["auc_undefined"] == ["bird"]
    assert result["macro_auc"] == pytest.approx((4.5 / 9 + 6.5 / 8 + 4 / 5) / 3)


def test_the_report_holds_the_calibration_errors_and_their_bins() -> None:
    result = evaluate_predictions(PROBABILITIES, LABELS, CLASSES)
    # Top-1 confidences 0.7, 0.5, 0.5, 0.6, 0.6, 0.5 (right, right, wrong, right, wrong,
    # wrong): bins (7/15, 8/15] with 1/3 right at 0.5, (8/15, 9/15] with 1/2 at 0.6 and
    # (10/15, 11/15] with 1 at 0.7.
    expected = (3 * abs(1 / 3 - 0.5) + 2 * abs(0.5 - 0.6) + abs(1 - 0.7)) / 6
    assert result["ece"] == pytest.approx(expected)
    assert result["mce"] == pytest.approx(0.3)
    assert [entry["count"] for entry in result["reliability"]] == [0] * 7 + [3, 2, 0, 1] + [0] * 4


@pytest.mark.parametrize(
    ("probabilities", "labels", "top_k", "argument"),
    [
        (PROBABILITIES[:, :2], LABELS, 5, "probabilities"),
        (PROBABILITIES, LABELS[:5], 5, "labels"),
        (PROBABILITIES, np.array([0, 0, 0, 1, 1, 3]), 5, "labels"),
        (PROBABILITIES, LABELS, 0, "top_k"),
    ],
)
def test_inputs_that_do_not_fit_are_a_value_error_naming_the_argument(
    probabilities: np.ndarray, labels: np.ndarray, top_k: int, argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        evaluate_predictions(probabilities, labels, CLASSES, top_k=top_k)


def _assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG"
        assert min(image.size) > 100


def test_training_curves_are_written_as_a_png(tmp_path: Path) -> None:
    history = {
        "loss": [1.2, 0.9, 0.7, 0.5, 0.4],
        "val_loss": [1.3, 1.0, 0.9, 0.8, 0.8],
        "accuracy": [0.4, 0.6, 0.7, 0.8, 0.85],
        "val_accuracy": [0.35, 0.5, 0.6, 0.65, 0.66],
    }
    path = tmp_path / "curves.png"
    plot_training_curves(history, path, phase_boundary=3)
    _assert_png(path)


def test_training_curves_without_validation_or_boundary_are_written(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    plot_training_curves({"loss": [0.5]}, path)
    _assert_png(path)


@pytest.mark.parametrize("history", [{}, {"loss": []}])
def test_empty_history_is_a_value_error(history: dict[str, list[float]], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="history"):
        plot_training_curves(history, tmp_path / "curves.png")


def test_a_phase_boundary_past_the_last_epoch_is_a_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="phase_boundary"):
        plot_training_curves({"loss": [1.0, 0.5]}, tmp_path / "curves.png", phase_boundary=3)


def test_the_confusion_matrix_is_written_as_a_png(tmp_path: Path) -> None:
    path = tmp_path / "confusion.png"
    plot_confusion_matrix([[2, 0, 1], [1, 1, 0], [1, 0, 0]], CLASSES, path)
    _assert_png(path)


def test_roc_curves_are_written_as_a_png_even_with_a_class_without_a_curve(
    tmp_path: Path,
) -> None:
    probabilities = np.hstack([PROBABILITIES, np.full((6, 1), 0.05)])
    path = tmp_path / "roc.png"
    plot_roc_curves(probabilities, LABELS, [*CLASSES, "bird"], path)
    _assert_png(path)


def test_the_reliability_diagram_is_written_as_a_png(tmp_path: Path) -> None:
    result = evaluate_predictions(PROBABILITIES, LABELS, CLASSES)
    path = tmp_path / "reliability.png"
    plot_reliability_diagram(result["reliability"], result["ece"], path)
    _assert_png(path)


def test_a_confusion_matrix_that_does_not_match_the_classes_is_a_value_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="matrix"):
        plot_confusion_matrix([[1, 0], [0, 1]], CLASSES, tmp_path / "confusion.png")
