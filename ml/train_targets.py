"""What a classifier is trained towards: true labels, smoothed, weighted, or a teacher's view.

Every phase of training fits one target matrix per image. Without a teacher it is the one-hot
label (``num_classes`` columns); with one (knowledge distillation, Hinton et al. 2015) the
teacher's probabilities follow it (``2 * num_classes`` columns), so the same tf.data pipeline,
shuffling and mixup carry both. ``TargetLoss`` reads either shape:

    loss = (1 - alpha) * CE(smooth(y), p)
           + alpha * T^2 * KL(softmax(log q / T) || softmax(log p / T))

where ``p`` is the student's softmax output, ``q`` the teacher's, ``T`` the temperature and
``alpha`` the weight of the teacher. The logits are recovered as ``log p`` (softmax is
invariant to the constant it drops), so the served model keeps its softmax output. ``T^2``
keeps the soft term's gradients on the scale of the hard one's as ``T`` grows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

IMBALANCE_RATIO = 1.5
"""Largest/smallest class count above which classes are weighted."""

_EPSILON = 1e-7


@dataclass(frozen=True)
class Distillation:
    """How much of the teacher to learn, and at what temperature."""

    alpha: float = 0.5
    temperature: float = 4.0


def class_weights(labels: NDArray[np.int32], num_classes: int) -> dict[int, float] | None:
    """Inverse-frequency weights when the largest class outnumbers the smallest by 1.5x."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if counts.min() == 0 or counts.max() / counts.min() <= IMBALANCE_RATIO:
        return None
    return {i: float(len(labels) / (num_classes * c)) for i, c in enumerate(counts)}


def sample_weights(labels: NDArray[np.int32], num_classes: int) -> NDArray[np.float32]:
    """Each image's weight: its class's inverse-frequency weight, or 1 when classes are even.

    Per-image weights rather than Keras' ``class_weight``, which reads a class from targets
    that, with a teacher or mixup, are no longer one-hot.
    """
    weights = class_weights(labels, num_classes)
    if weights is None:
        return np.ones(len(labels), dtype=np.float32)
    return np.array([weights[int(label)] for label in labels], dtype=np.float32)


def training_targets(
    labels: NDArray[np.int32], num_classes: int, teacher: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """One-hot labels, followed by the teacher's probabilities when there is a teacher."""
    one_hot = np.eye(num_classes, dtype=np.float32)[labels]
    if teacher is None:
        return one_hot
    if teacher.shape != one_hot.shape:
        raise ValueError(
            f"The teacher's probabilities must have shape {one_hot.shape}. "
            f"Received {teacher.shape}."
        )
    return np.concatenate([one_hot, teacher.astype(np.float32)], axis=1)


def mixup(
    features: NDArray[np.float32],
    targets: NDArray[np.float32],
    weights: NDArray[np.float32],
    strength: float,
    seed: int,
    *,
    copies: int = 2,
) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32]]:
    """The training set and ``copies`` times as many convex mixes of pairs of it (mixup).

    Mixing cached features rather than pixels (manifold mixup at the backbone's output) keeps
    phase 1 cheap; ``strength`` is the Beta distribution's alpha, 0 turns it off.
    """
    if strength <= 0:
        return features, targets, weights
    rng = np.random.default_rng(seed)
    count = len(features) * copies
    share = rng.beta(strength, strength, size=(count, 1)).astype(np.float32)
    first, second = rng.integers(0, len(features), count), rng.integers(0, len(features), count)
    mixed_features = share * features[first] + (1 - share) * features[second]
    mixed_targets = share * targets[first] + (1 - share) * targets[second]
    mixed_weights = share[:, 0] * weights[first] + (1 - share[:, 0]) * weights[second]
    return (
        np.concatenate([features, mixed_features]),
        np.concatenate([targets, mixed_targets]),
        np.concatenate([weights, mixed_weights]),
    )


@keras.saving.register_keras_serializable(package="imgq")
class TargetLoss(keras.losses.Loss):  # type: ignore[misc]
    """Cross-entropy on (smoothed) labels, plus the teacher's term when targets carry one."""

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.0,
        alpha: float = 0.0,
        temperature: float = 1.0,
        name: str = "target_loss",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.alpha = alpha
        self.temperature = temperature

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """The per-image loss."""
        ops = keras.ops
        labels = y_true[:, : self.num_classes]
        if self.label_smoothing:
            labels = labels * (1 - self.label_smoothing) + self.label_smoothing / self.num_classes
        probabilities = ops.clip(y_pred, _EPSILON, 1.0)
        hard = -ops.sum(labels * ops.log(probabilities), axis=-1)
        if not self.alpha:
            return hard
        teacher = ops.clip(y_true[:, self.num_classes :], _EPSILON, 1.0)
        soft_teacher = ops.softmax(ops.log(teacher) / self.temperature, axis=-1)
        log_student = ops.log_softmax(ops.log(probabilities) / self.temperature, axis=-1)
        log_teacher = ops.log(ops.clip(soft_teacher, _EPSILON, 1.0))
        kl = ops.sum(soft_teacher * (log_teacher - log_student), axis=-1)
        return (1 - self.alpha) * hard + self.alpha * self.temperature**2 * kl

    def get_config(self) -> dict[str, Any]:
        """What ``keras.saving`` needs to rebuild the loss."""
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "label_smoothing": self.label_smoothing,
            "alpha": self.alpha,
            "temperature": self.temperature,
        }


@keras.saving.register_keras_serializable(package="imgq")
class TargetAccuracy(keras.metrics.MeanMetricWrapper):  # type: ignore[misc]
    """Accuracy against the label part of the targets (the teacher's part is ignored)."""

    def __init__(self, num_classes: int, name: str = "accuracy", **kwargs: Any) -> None:
        def matches(y_true: Any, y_pred: Any) -> Any:
            truth = keras.ops.argmax(y_true[:, :num_classes], axis=-1)
            return keras.ops.cast(keras.ops.argmax(y_pred, axis=-1) == truth, "float32")

        super().__init__(matches, name=name, **kwargs)
        self.num_classes = num_classes

    def get_config(self) -> dict[str, Any]:
        """What ``keras.saving`` needs to rebuild the metric."""
        return {"name": self.name, "num_classes": self.num_classes}


def compile_for_targets(
    model: keras.Model,
    learning_rate: float,
    num_classes: int,
    label_smoothing: float,
    distillation: Distillation | None,
) -> None:
    """Compile with Adam, ``TargetLoss`` and ``TargetAccuracy`` (reported as ``accuracy``)."""
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=TargetLoss(
            num_classes,
            label_smoothing,
            0.0 if distillation is None else distillation.alpha,
            1.0 if distillation is None else distillation.temperature,
        ),
        metrics=[TargetAccuracy(num_classes)],
    )
