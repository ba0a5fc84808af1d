"""Phase 1 on cached features: one head, trained and scored on the validation split.

A head is a dropout and a softmax ``Dense`` over the pooled features. Trained here on the
arrays of ``ml.feature_cache``, it is scored as it will serve: with test-time flip, on the
mean of its predictions for an image and its mirror. The same function trains a budget's
trials and the final head, so what a trial scored is exactly what ships.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from ml.feature_cache import FeatureCache
from ml.train_targets import (
    Distillation,
    compile_for_targets,
    mixup,
    sample_weights,
    training_targets,
)


def make_head(num_classes: int, dropout: float) -> list[keras.layers.Layer]:
    """The layers of a classifier head (shared by the feature model and the full model)."""
    return [
        keras.layers.Dropout(dropout, name="head_dropout"),
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier"),
    ]


@dataclass
class HeadResult:
    """A trained head, its history, and its validation scores as it will serve."""

    head: list[keras.layers.Layer]
    history: dict[str, list[float]]
    val_accuracy: float
    val_loss: float
    seconds: float
    epochs: int = 0
    val_images: int = 0
    """How many validation images the scores are over (how much a difference in them means)."""


@dataclass(frozen=True)
class HeadData:
    """Labels (and a teacher's probabilities) of the training and validation images."""

    train_labels: NDArray[np.int32]
    val_labels: NDArray[np.int32]
    num_classes: int
    teacher_train: NDArray[np.float32] | None = None
    teacher_val: NDArray[np.float32] | None = None


def _training_set(
    cache: FeatureCache, data: HeadData, params: Any
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """Features, targets and weights to fit, with mirrors (for ``tta``) and mixes added."""
    features = cache.get("train", params.pooling)
    targets = training_targets(data.train_labels, data.num_classes, data.teacher_train)
    weights = sample_weights(data.train_labels, data.num_classes)
    if params.tta:
        features = np.concatenate([features, cache.get("train", params.pooling, True)])
        targets, weights = np.concatenate([targets, targets]), np.concatenate([weights, weights])
    return mixup(features, targets, weights, params.mixup, params.seed)


def predict_validation(
    model: keras.Model, cache: FeatureCache, pooling: str, tta: bool
) -> NDArray[np.float32]:
    """The head's validation probabilities as served (mean over both views with ``tta``)."""
    probabilities = model.predict(cache.get("validation", pooling), verbose=0)
    if tta:
        mirrored = model.predict(cache.get("validation", pooling, True), verbose=0)
        probabilities = (probabilities + mirrored) / 2
    return np.asarray(probabilities, dtype=np.float32)


def validation_scores(
    probabilities: NDArray[np.floating[Any]], truth: NDArray[np.int32]
) -> tuple[float, float]:
    """Accuracy and negative log-likelihood of the true labels: how every trial is scored, a
    head on cached features or a fine-tuned model alike."""
    picked = np.clip(probabilities[np.arange(len(truth)), truth], 1e-7, 1.0)
    return float(np.mean(np.argmax(probabilities, 1) == truth)), float(-np.mean(np.log(picked)))


def train_head_on_features(
    cache: FeatureCache,
    data: HeadData,
    params: Any,
    *,
    distillation: Distillation | None,
    callbacks: list[keras.callbacks.Callback],
) -> HeadResult:
    """Train one head on cached features and score it on the validation split.

    Args:
        cache: train and validation features (never test).
        data: their labels, and a teacher's probabilities to distil.
        params: a ``TrainConfig`` (pooling, tta, mixup, dropout, learning_rate, epochs,
            label_smoothing, batch_size, seed).
        distillation: the teacher's weight and temperature, None without a teacher.
        callbacks: early stopping, plateau, progress and logging callbacks for ``fit``.
    """
    started = time.monotonic()
    keras.utils.set_random_seed(params.seed)
    features, targets, weights = _training_set(cache, data, params)
    head = make_head(data.num_classes, params.dropout)
    inputs = keras.Input(shape=features.shape[1:], name="features")
    x = inputs
    for layer in head:
        x = layer(x)
    model = keras.Model(inputs, x, name="head")
    compile_for_targets(
        model, params.learning_rate, data.num_classes, params.label_smoothing, distillation
    )
    val_targets = training_targets(data.val_labels, data.num_classes, data.teacher_val)
    history = model.fit(
        features,
        targets,
        sample_weight=weights,
        validation_data=(cache.get("validation", params.pooling), val_targets),
        epochs=params.epochs,
        batch_size=params.batch_size,
        shuffle=True,
        callbacks=callbacks,
        verbose=0,
    )
    probabilities = predict_validation(model, cache, params.pooling, params.tta)
    val_accuracy, val_loss = validation_scores(probabilities, data.val_labels)
    return HeadResult(
        head=head,
        history={k: [float(v) for v in values] for k, values in history.history.items()},
        val_accuracy=val_accuracy,
        val_loss=val_loss,
        seconds=time.monotonic() - started,
        epochs=len(history.history.get("loss", [])),
        val_images=len(data.val_labels),
    )
