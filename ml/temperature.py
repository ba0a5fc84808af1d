"""Temperature scaling: one number, fitted on the validation split, that tempers a classifier's
confidence without changing any of its answers.

Dividing a classifier's logits by a temperature ``T`` (Guo et al., "On Calibration of Modern
Neural Networks", 2017) lowers its confidence when ``T > 1`` and raises it when ``T < 1``; the
ranking of the classes, hence every prediction and AUC, stays as it is. ``T`` is the one that
minimises the negative log-likelihood of the validation split. The probabilities' logarithms
serve as the logits, since ``softmax(log softmax(z) / T) == softmax(z / T)``.

The temperature is kept only when it is trustworthy and useful: the validation split must hold
``MIN_CALIBRATION_IMAGES``, the likelihood must have its minimum inside ``TEMPERATURE_RANGE``
(with every validation image right it has none: it keeps falling as ``T`` goes to 0, and no
temperature is identifiable), and it must lower the validation split's expected calibration
error. A kept temperature is folded into the softmax head's kernel and bias
(``fold_temperature``), so the saved ``model.keras`` serves calibrated probabilities with no
extra layer: Grad-CAM, exports and ``safe_mode`` loading see the same architecture as before.

Measured on synthetic logits (``tests/unit/test_temperature.py``): a known temperature between
0.5 and 4 is recovered within 5% from 3,000 samples.
"""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from ml.confidence import calibration_errors

TEMPERATURE_RANGE = (0.05, 20.0)
"""Temperatures searched; a fit on either end is taken as having no minimum."""
MIN_CALIBRATION_IMAGES = 30
"""Fewest validation images to fit a temperature on: with fewer than two per confidence bin on
average, the before/after calibration errors that decide whether to keep it are noise."""
_PROBABILITY_FLOOR = 1e-30
"""Probabilities that underflowed to 0 are taken as this, so their logarithm is finite."""
_GOLDEN = (math.sqrt(5) - 1) / 2


def scale_probabilities(probabilities: NDArray[Any], temperature: float) -> NDArray[np.float64]:
    """``softmax(log(probabilities) / temperature)``: what the model would give at ``T``.

    Args:
        probabilities: scores of shape ``(samples, classes)``, rows summing to 1.
        temperature: the temperature, above 0.

    Returns:
        The tempered probabilities, float64.

    Raises:
        ValueError: a temperature that is not above 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0. Received temperature={temperature}.")
    logits = np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), _PROBABILITY_FLOOR))
    scaled = logits / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exponentials = np.exp(scaled)
    result: NDArray[np.float64] = exponentials / exponentials.sum(axis=1, keepdims=True)
    return result


def negative_log_likelihood(
    probabilities: NDArray[Any], labels: NDArray[Any], temperature: float = 1.0
) -> float:
    """Mean negative log-likelihood of the true classes at ``temperature`` (what the fit
    minimises, and a calibration measure in its own right)."""
    if not len(labels):
        return 0.0
    tempered = scale_probabilities(probabilities, temperature)
    picked = tempered[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)]
    return float(-np.mean(np.log(np.maximum(picked, _PROBABILITY_FLOOR))))


def fit_temperature(probabilities: NDArray[Any], labels: NDArray[Any]) -> float:
    """The temperature in ``TEMPERATURE_RANGE`` that minimises the negative log-likelihood.

    A golden-section search on ``log T``: the likelihood is convex in ``1 / T``, so it has one
    minimum on the range (or falls towards an end), and numpy alone finds it to a relative
    precision of about 1e-6.

    Args:
        probabilities: validation scores of shape ``(samples, classes)``.
        labels: their true class indices.

    Returns:
        The fitted temperature; an end of ``TEMPERATURE_RANGE`` when the minimum lies beyond.
    """
    low, high = (math.log(end) for end in TEMPERATURE_RANGE)

    def loss(log_temperature: float) -> float:
        return negative_log_likelihood(probabilities, labels, math.exp(log_temperature))

    inner_low, inner_high = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    loss_low, loss_high = loss(inner_low), loss(inner_high)
    while high - low > 1e-6:
        if loss_low <= loss_high:
            high, inner_high, loss_high = inner_high, inner_low, loss_low
            inner_low = high - _GOLDEN * (high - low)
            loss_low = loss(inner_low)
        else:
            low, inner_low, loss_low = inner_low, inner_high, loss_high
            inner_high = low + _GOLDEN * (high - low)
            loss_high = loss(inner_high)
    return math.exp((low + high) / 2)


def choose_temperature(probabilities: NDArray[Any], labels: NDArray[Any]) -> dict[str, Any]:
    """Fit a temperature on the validation split and say whether to keep it, and why.

    Args:
        probabilities: the model's validation scores, shape ``(samples, classes)``.
        labels: their true class indices.

    Returns:
        The version's calibration record: ``applied``, ``temperature`` (the one served: the
        fitted one if applied, else 1.0), ``fitted_temperature`` (None when none was fitted),
        ``reason``, and ``validation`` (``images``, ``ece_before``/``ece_after``,
        ``nll_before``/``nll_after``; the ``_after`` ones None when none was fitted).
    """
    count = len(labels)
    before = calibration_errors(probabilities, labels)["ece"]
    validation: dict[str, Any] = {
        "images": count,
        "ece_before": before,
        "ece_after": None,
        "nll_before": negative_log_likelihood(probabilities, labels),
        "nll_after": None,
    }
    record = {"applied": False, "temperature": 1.0, "fitted_temperature": None}
    if count < MIN_CALIBRATION_IMAGES:
        reason = f"{count} validation images; temperature scaling needs {MIN_CALIBRATION_IMAGES}"
        return {**record, "reason": reason, "validation": validation}
    fitted = fit_temperature(probabilities, labels)
    validation["ece_after"] = calibration_errors(
        scale_probabilities(probabilities, fitted), labels
    )["ece"]
    validation["nll_after"] = negative_log_likelihood(probabilities, labels, fitted)
    record["fitted_temperature"] = fitted
    if not TEMPERATURE_RANGE[0] * 1.001 < fitted < TEMPERATURE_RANGE[1] / 1.001:
        reason = (
            f"the validation likelihood has no minimum in temperatures {TEMPERATURE_RANGE} "
            "(every validation image right, or nearly): no temperature is identifiable"
        )
    elif validation["ece_after"] >= before:
        reason = (
            f"temperature {fitted:.3f} does not lower the validation calibration error "
            f"({validation['ece_after']:.4f} vs {before:.4f})"
        )
    else:
        record.update(applied=True, temperature=fitted)
        reason = (
            f"temperature {fitted:.3f} lowers the validation calibration error from "
            f"{before:.4f} to {validation['ece_after']:.4f}"
        )
    return {**record, "reason": reason, "validation": validation}


def fold_temperature(model: keras.Model, temperature: float) -> None:
    """Make ``model`` output ``softmax(logits / temperature)`` by scaling its head in place.

    Why in the weights rather than a layer: ``softmax((W x + b) / T) == softmax((W / T) x +
    b / T)`` exactly, so the saved model needs no custom layer to load with ``safe_mode``, and
    everything that reads the head (Grad-CAM's logits, exports, ``resolve_backbone``) works on
    it unchanged.

    Args:
        model: a classifier whose last layer is a ``Dense`` with a softmax activation, as
            ``ml.train.build_classifier`` makes.
        temperature: the temperature, above 0.

    Raises:
        ValueError: a temperature that is not above 0, or a model whose last layer is not a
            softmax ``Dense`` with float weights.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be above 0. Received temperature={temperature}.")
    head = model.layers[-1]
    if (
        not isinstance(head, keras.layers.Dense)
        or head.activation is not keras.activations.softmax
        or getattr(head, "quantization_mode", None)
    ):
        raise ValueError(
            "model must end in a float softmax Dense layer to fold a temperature into. "
            f"Received last layer {head.name!r} ({type(head).__name__})."
        )
    head.kernel.assign(head.kernel / temperature)
    if head.bias is not None:
        head.bias.assign(head.bias / temperature)


def calibrate_model(
    model: keras.Model,
    validation: tuple[NDArray[Any], NDArray[Any]],
    *,
    enabled: bool,
) -> dict[str, Any]:
    """Temperature-scale a trained classifier on its validation split, when that helps.

    Args:
        model: the trained classifier (see ``fold_temperature``); changed in place when the
            temperature is kept.
        validation: the validation images and labels.
        enabled: False leaves the model as it is (the fine-tune's ``calibrate=false``).

    Returns:
        The calibration record of ``choose_temperature``, or, when disabled, one with
        ``applied`` False, ``temperature`` 1.0 and the reason.
    """
    if not enabled or isinstance(model.layers[-1], keras.layers.Average):
        reason = (
            "calibrate=false"
            if not enabled
            else "test-time flip: a temperature does not fold into the mean of two views"
        )
        return {
            "applied": False,
            "temperature": 1.0,
            "fitted_temperature": None,
            "reason": reason,
            "validation": None,
        }
    images, labels = validation
    record = choose_temperature(model.predict(images, verbose=0), labels)
    if record["applied"]:
        fold_temperature(model, record["temperature"])
    return record


def with_test_effect(
    record: dict[str, Any], probabilities: NDArray[Any], labels: NDArray[Any]
) -> dict[str, Any]:
    """The calibration record with what the temperature did on the test split, held out from
    the fit: ``test`` ``{"ece_before", "ece_after"}``.

    Args:
        record: from ``calibrate_model``.
        probabilities: the served (calibrated, if applied) model's test scores.
        labels: their true class indices.
    """
    after = calibration_errors(probabilities, labels)["ece"]
    untempered = scale_probabilities(probabilities, 1 / record["temperature"])
    before = calibration_errors(untempered, labels)["ece"] if record["applied"] else after
    return {**record, "test": {"ece_before": before, "ece_after": after}}
