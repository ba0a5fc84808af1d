"""Distillation's loss: the hard and soft terms, and a student that learns a teacher's view."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from ml.train_targets import Distillation, TargetLoss, compile_for_targets, training_targets


def _softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    scaled = np.exp(logits / temperature - (logits / temperature).max(1, keepdims=True))
    return np.asarray(scaled / scaled.sum(1, keepdims=True))


def test_without_the_teacher_it_is_cross_entropy_and_with_it_the_scaled_kl() -> None:
    rng = np.random.default_rng(0)
    student = _softmax(rng.normal(size=(6, 3)))
    teacher = _softmax(rng.normal(size=(6, 3)))
    labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.int32)
    targets = training_targets(labels, 3, teacher.astype(np.float32))
    cross_entropy = -np.mean(np.log(student[np.arange(6), labels]))
    hard = TargetLoss(3, alpha=0.0)(targets, student)
    assert float(hard) == pytest.approx(cross_entropy, rel=1e-5)
    temperature = 2.0
    soft_teacher = _softmax(np.log(teacher), temperature)
    soft_student = _softmax(np.log(student), temperature)
    kl = np.mean(np.sum(soft_teacher * np.log(soft_teacher / soft_student), 1))
    soft = TargetLoss(3, alpha=1.0, temperature=temperature)(targets, student)
    assert float(soft) == pytest.approx(temperature**2 * kl, rel=1e-4)
    half = TargetLoss(3, alpha=0.5, temperature=temperature)(targets, student)
    assert float(half) == pytest.approx(0.5 * cross_entropy + 0.5 * temperature**2 * kl, rel=1e-4)


def test_label_smoothing_spreads_the_label() -> None:
    student = np.array([[0.7, 0.2, 0.1]], dtype=np.float32)
    targets = training_targets(np.array([0], dtype=np.int32), 3)
    expected = -(0.9 + 0.1 / 3) * np.log(0.7) - 0.1 / 3 * (np.log(0.2) + np.log(0.1))
    assert float(TargetLoss(3, label_smoothing=0.1)(targets, student)) == pytest.approx(
        expected, rel=1e-5
    )


def test_a_student_taught_only_by_the_teacher_follows_it_over_the_labels() -> None:
    """Two clusters whose true labels are noisy; the teacher knows the clusters."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    points = np.concatenate([rng.normal(-2, 0.5, (64, 2)), rng.normal(2, 0.5, (64, 2))])
    cluster = np.repeat([0, 1], 64).astype(np.int32)
    noisy = np.where(rng.random(128) < 0.4, 1 - cluster, cluster).astype(np.int32)
    teacher = np.eye(2, dtype=np.float32)[cluster] * 0.9 + 0.05
    student = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, activation="softmax")])
    compile_for_targets(student, 0.05, 2, 0.0, Distillation(alpha=1.0, temperature=2.0))
    student.fit(
        points.astype(np.float32),
        training_targets(noisy, 2, teacher),
        epochs=60,
        batch_size=32,
        verbose=0,
    )
    predicted = np.argmax(student.predict(points, verbose=0), 1)
    assert np.mean(predicted == cluster) > 0.95
