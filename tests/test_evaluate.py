"""Evaluation: metrics match a hand-computed example, plots are real PNG files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ml.evaluate import evaluate_predictions, plot_confusion_matrix, plot_training_curves

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
    assert result["per_class"]["cat"] == pytest.approx(
        {"precision": 2 / 4, "recall": 2 / 3, "f1": 4 / 7, "support": 3}
    )
    assert result["per_class"]["dog"] == pytest.approx(
        {"precision": 1.0, "recall": 1 / 2, "f1": 2 / 3, "support": 2}
    )
    assert result["per_class"]["fish"] == {
        "precision": 0.0,
        "recall": 0.0,
        "f1": 0.0,
        "support": 1,
    }
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
    assert result["per_class"]["bird"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
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


def test_a_confusion_matrix_that_does_not_match_the_classes_is_a_value_error(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="matrix"):
        plot_confusion_matrix([[1, 0], [0, 1]], CLASSES, tmp_path / "confusion.png")
