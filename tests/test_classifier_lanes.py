"""Splitting a batch across inference lanes changes how it runs, never what it returns."""

from __future__ import annotations

import keras
import numpy as np

from ml.classifier import Classifier
from ml.registry import ModelVersion


def _tiny_classifier(**lanes: int) -> Classifier:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    version = ModelVersion("tiny", 1, "trained", "efficientnet_lite0", 16, ["a", "b", "c"], 0.0)
    return Classifier(version, model, max_batch=8, **lanes)


def test_lanes_return_the_same_probabilities_in_the_same_order() -> None:
    images = np.random.default_rng(0).integers(0, 255, (13, 16, 16, 3), dtype=np.uint8)
    single = _tiny_classifier()
    split = _tiny_classifier(lanes=2, lane_batch=3)
    split.model.set_weights(single.model.get_weights())
    expected = single.predict_proba(images)
    for count in (0, 1, 2, 5, 13):
        np.testing.assert_allclose(
            split.predict_proba(images[:count]), expected[:count], rtol=1e-5, atol=1e-6
        )
    assert split.predict_proba(images[:0]).shape == (0, 3)
