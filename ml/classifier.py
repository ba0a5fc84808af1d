"""A loaded classifier ready to serve: model, labels, and a compiled, shape-stable predict.

Batches are padded up to a few fixed sizes (powers of two up to the largest batch), so the
compiled graph is traced once per size at warm-up and never again while serving.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from ml.labels import imagenet_labels
from ml.registry import ModelVersion
from ml.weights import load_lite_imagenet

logger = logging.getLogger(__name__)


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch`` itself."""
    sizes, size = [], 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch)
    return tuple(sizes)


@dataclass(frozen=True)
class Prediction:
    """One label of one image's top-k."""

    label: str
    index: int
    score: float


class Classifier:
    """Serves one model version: uint8 images in, class probabilities out."""

    def __init__(self, version: ModelVersion, model: keras.Model, max_batch: int) -> None:
        self.version = version
        self.model = model
        self.labels: tuple[str, ...] = (
            imagenet_labels() if version.labels == "imagenet1k" else tuple(version.labels)
        )
        self.image_size = (version.image_size, version.image_size)
        self.buckets = batch_buckets(max_batch)
        self._forward = tf.function(
            lambda images: model(tf.cast(images, tf.float32), training=False),
            input_signature=[tf.TensorSpec([None, *self.image_size, 3], tf.uint8)],
            reduce_retracing=True,
        )

    def warm_up(self) -> None:
        """Run every bucket size once so no request pays for graph building."""
        for size in self.buckets:
            self.predict_proba(np.zeros((size, *self.image_size, 3), np.uint8))

    def predict_proba(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Class probabilities for a stack of ``(n, h, w, 3)`` images, in chunks of buckets."""
        outputs = []
        largest = self.buckets[-1]
        for start in range(0, len(images), largest):
            chunk = images[start : start + largest]
            bucket = next(size for size in self.buckets if size >= len(chunk))
            padded = chunk
            if bucket > len(chunk):
                padding = np.zeros((bucket - len(chunk), *chunk.shape[1:]), np.uint8)
                padded = np.concatenate([chunk, padding])
            outputs.append(np.asarray(self._forward(tf.constant(padded)))[: len(chunk)])
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.labels)), np.float32)

    def top_k(self, probabilities: NDArray[np.float32], k: int) -> list[list[Prediction]]:
        """The ``k`` most likely labels for each row, best first."""
        k = min(k, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [Prediction(self.labels[i], int(i), float(row[i])) for i in indices]
            for row, indices in zip(probabilities, order, strict=True)
        ]


def load_classifier(
    version: ModelVersion,
    version_dir: Path,
    weights_dir: Path,
    max_batch: int,
    lite_checkpoint: Path | None = None,
) -> Classifier:
    """Load a registered version from the store (or pretrained weights, for built-ins)."""
    model: Any
    if version.kind == "builtin":
        model = load_lite_imagenet(
            version.backbone.removeprefix("efficientnet_"), weights_dir, lite_checkpoint
        )
    else:
        model = keras.saving.load_model(version_dir / "model.keras", compile=False)
    logger.info("loaded model %s v%s", version.name, version.version)
    return Classifier(version, model, max_batch)
