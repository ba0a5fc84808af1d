"""Knowledge distillation: a larger model's accuracy at a small backbone's serving cost.

``teacher=<model>:<version>`` on a fine-tune job names a trained version with the dataset's
classes (typically on a larger backbone such as EfficientNet-Lite2). Its probabilities for the
training and validation images, each decoded at the teacher's own input size, become soft
labels the student learns besides the true ones (``ml.train_targets.TargetLoss``). The result
compares both on the same test split: accuracy, and latency per image at batch size 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from ml.errors import InvalidTeacher
from ml.registry import ModelRegistry

LATENCY_IMAGES = 20
"""Test images each model classifies one at a time to measure its latency."""


@dataclass(frozen=True)
class Teacher:
    """A loaded teacher, its soft labels for training, and its own view of the test split."""

    reference: str
    model: keras.Model
    soft_labels: tuple[NDArray[np.float32], NDArray[np.float32]]
    test_images: NDArray[np.uint8]


def load_teacher(
    registry: ModelRegistry,
    reference: str,
    classes: list[str],
    decode: Callable[[int], dict[str, tuple[NDArray[np.uint8], NDArray[np.int32]]]],
) -> Teacher:
    """Load the teacher version and compute its probabilities for train and validation.

    Args:
        registry: where the teacher version is.
        reference: ``<model id>:<version>``.
        classes: the dataset's classes, in the order of its labels.
        decode: the dataset's splits decoded at a given image size (the teacher's own).

    Raises:
        InvalidTeacher: the teacher is built in or its classes are not the dataset's.
        ImgqError: no such model or version.
    """
    name, _, number = reference.rpartition(":")
    version = registry.get(name, int(number))
    if version.kind != "trained" or list(version.labels) != classes:
        raise InvalidTeacher(
            f"`teacher` must be a trained version with the dataset's classes {classes}; "
            f"version {number} has {version.labels if version.kind == 'trained' else 'none'}.",
            {"teacher": reference},
        )
    model = keras.saving.load_model(
        registry.local_version_dir(name, version.version) / "model.keras",
        compile=False,
        safe_mode=True,
    )
    arrays = decode(int(model.input_shape[1]))
    soft = tuple(
        np.asarray(model.predict(arrays[split][0], verbose=0), dtype=np.float32)
        for split in ("train", "validation")
    )
    return Teacher(reference, model, (soft[0], soft[1]), arrays["test"][0])


def per_image_latency_ms(model: keras.Model, images: NDArray[np.uint8]) -> float:
    """Median milliseconds to classify one image alone (after one warm-up call)."""
    sample = images[:LATENCY_IMAGES]
    model.predict_on_batch(sample[:1])
    timings = []
    for index in range(len(sample)):
        started = time.perf_counter()
        model.predict_on_batch(sample[index : index + 1])
        timings.append((time.perf_counter() - started) * 1000)
    return float(np.median(timings))


def compare_with_teacher(
    teacher: Teacher,
    student: keras.Model,
    test: tuple[NDArray[np.uint8], NDArray[np.int32]],
    student_probabilities: NDArray[np.float32],
) -> dict[str, Any]:
    """Student and teacher on the same test split: accuracy and latency per image."""
    images, labels = test
    teacher_probabilities = teacher.model.predict(teacher.test_images, verbose=0)
    return {
        "teacher": teacher.reference,
        "student_accuracy": float(np.mean(np.argmax(student_probabilities, 1) == labels)),
        "teacher_accuracy": float(np.mean(np.argmax(teacher_probabilities, 1) == labels)),
        "student_latency_ms": round(per_image_latency_ms(student, images), 2),
        "teacher_latency_ms": round(per_image_latency_ms(teacher.model, teacher.test_images), 2),
        "test_images": len(labels),
    }
