"""``ml.temperature``: the fit recovers a known temperature, the rules for keeping it hold, and a
folded temperature is what the saved model serves."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from ml.confidence import calibration_errors
from ml.temperature import (
    MIN_CALIBRATION_IMAGES,
    TEMPERATURE_RANGE,
    calibrate_model,
    choose_temperature,
    fit_temperature,
    fold_temperature,
    scale_probabilities,
    with_test_effect,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    result: np.ndarray = shifted / shifted.sum(axis=1, keepdims=True)
    return result


def _overconfident(
    temperature: float, samples: int = 3000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from ``softmax(z)`` but scores ``softmax(z * temperature)``: the model is
    off by exactly ``temperature``, which scaling by it undoes."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 2.0, size=(samples, 5))
    truth = _softmax(logits)
    labels = np.array([rng.choice(5, p=row) for row in truth])
    return _softmax(logits * temperature), labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5, 4.0])
def test_the_fit_recovers_a_known_temperature(temperature: float) -> None:
    probabilities, labels = _overconfident(temperature)
    assert fit_temperature(probabilities, labels) == pytest.approx(temperature, rel=0.05)


def test_an_overconfident_model_gets_a_temperature_that_lowers_its_calibration_error() -> None:
    probabilities, labels = _overconfident(3.0)
    record = choose_temperature(probabilities, labels)
    assert record["applied"] and record["temperature"] == pytest.approx(3.0, rel=0.05)
    validation = record["validation"]
    assert validation["ece_after"] < validation["ece_before"]
    assert validation["nll_after"] < validation["nll_before"]
    tempered = scale_probabilities(probabilities, record["temperature"])
    assert (tempered.argmax(axis=1) == probabilities.argmax(axis=1)).all()  # same answers


def test_a_validation_split_with_every_image_right_gets_no_temperature() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.2, 0.6, 0.2]] * 20)
    record = choose_temperature(probabilities, np.array([0, 1] * 20))
    assert not record["applied"] and record["temperature"] == 1.0
    assert record["fitted_temperature"] == pytest.approx(TEMPERATURE_RANGE[0], rel=1e-3)
    assert "no minimum" in record["reason"]


def test_a_small_validation_split_gets_no_temperature() -> None:
    probabilities, labels = _overconfident(3.0, samples=MIN_CALIBRATION_IMAGES - 1)
    record = choose_temperature(probabilities, labels)
    assert not record["applied"] and record["fitted_temperature"] is None
    assert str(MIN_CALIBRATION_IMAGES) in record["reason"]


def _tiny_classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4,))
    x = keras.layers.Dense(8, activation="relu")(inputs)
    outputs = keras.layers.Dense(3, activation="softmax", name="classifier")(x)
    model = keras.Model(inputs, outputs)
    head = model.layers[-1]
    head.kernel.assign(head.kernel * 8.0)  # sharpen it into an overconfident model
    return model


def test_a_folded_temperature_is_served_by_the_saved_model(tmp_path: Path) -> None:
    model = _tiny_classifier()
    features = np.random.default_rng(1).normal(size=(64, 4)).astype(np.float32)
    before = model.predict(features, verbose=0)
    fold_temperature(model, 2.5)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", compile=False, safe_mode=True)
    served = loaded.predict(features, verbose=0)
    np.testing.assert_allclose(served, scale_probabilities(before, 2.5), atol=1e-5)


def test_a_model_without_a_softmax_head_is_a_value_error() -> None:
    inputs = keras.Input(shape=(4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    with pytest.raises(ValueError, match="softmax Dense"):
        fold_temperature(model, 2.0)
    with pytest.raises(ValueError, match="temperature"):
        fold_temperature(_tiny_classifier(), 0.0)


def test_calibrating_tempers_an_overconfident_model_and_reports_the_test_effect() -> None:
    model = _tiny_classifier()
    rng = np.random.default_rng(2)
    features = rng.normal(size=(400, 4)).astype(np.float32)
    sharp = model.predict(features, verbose=0)
    # Labels from a softer version of the model: it is overconfident by a factor of 3.
    labels = np.array([rng.choice(3, p=row / row.sum()) for row in scale_probabilities(sharp, 3)])
    record = calibrate_model(model, (features[:200], labels[:200]), enabled=True)
    assert record["applied"] and record["temperature"] > 1.5
    served = model.predict(features[200:], verbose=0)
    effect = with_test_effect(record, served, labels[200:])["test"]
    assert effect["ece_after"] == pytest.approx(calibration_errors(served, labels[200:])["ece"])
    assert effect["ece_after"] < effect["ece_before"]
    assert effect["ece_before"] == pytest.approx(
        calibration_errors(sharp[200:], labels[200:])["ece"], abs=1e-4
    )


def test_calibration_can_be_turned_off() -> None:
    model = _tiny_classifier()
    kernel = keras.ops.convert_to_numpy(model.layers[-1].kernel)
    features = np.zeros((40, 4), np.float32)
    record = calibrate_model(model, (features, np.zeros(40, np.int32)), enabled=False)
    assert record["applied"] is False and record["reason"] == "calibrate=false"
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.layers[-1].kernel), kernel)


def test_a_test_time_flip_model_is_left_uncalibrated_with_the_reason() -> None:
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(3, activation="softmax")
    model = keras.Model(inputs, keras.layers.Average()([dense(inputs), dense(inputs * -1)]))
    images = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    record = calibrate_model(model, (images, np.zeros(40, dtype="int64")), enabled=True)
    assert not record["applied"] and "test-time flip" in record["reason"]
