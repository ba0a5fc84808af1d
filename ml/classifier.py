"""A loaded classifier ready to serve: model, labels, and a compiled, shape-stable predict.

Batches are padded up to a few fixed sizes (powers of two up to the largest batch), so the
compiled graph is traced once per size at warm-up and never again while serving.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

import ml.layers  # noqa: F401  (registers the custom layers saved models may hold)
from ml.labels import class_names
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

    def __init__(
        self,
        version: ModelVersion,
        model: keras.Model,
        max_batch: int,
        *,
        lanes: int = 1,
        lane_batch: int = 4,
    ) -> None:
        self.version = version
        self.model = model
        self.labels: tuple[str, ...] = class_names(version.labels)
        self.image_size = (version.image_size, version.image_size)
        self.buckets = batch_buckets(max_batch)
        self._forward = tf.function(
            lambda images: model(tf.cast(images, tf.float32), training=False),
            input_signature=[tf.TensorSpec([None, *self.image_size, 3], tf.uint8)],
            reduce_retracing=True,
        )
        self.lanes = lanes
        self.lane_batch = min(lane_batch, max_batch)
        self._lanes = ThreadPoolExecutor(lanes, thread_name_prefix="lane") if lanes > 1 else None

    def warm_up(self) -> None:
        """Run every bucket size once so no request pays for graph building."""
        for size in self.buckets:
            self.predict_proba(np.zeros((size, *self.image_size, 3), np.uint8))

    def predict_proba(self, images: NDArray[np.uint8]) -> NDArray[np.float32]:
        """Class probabilities for a stack of ``(n, h, w, 3)`` images.

        With one lane, in chunks of the largest bucket; with several (a CPU, see
        ``ml.runtime``), in pieces of at most ``lane_batch`` images run side by side, since a
        CPU runs small batches faster per image (their activations stay in cache).
        """
        if not len(images):
            return np.zeros((0, len(self.labels)), np.float32)
        if self._lanes is None:
            largest = self.buckets[-1]
            starts = range(0, len(images), largest)
            return np.concatenate([self._run_bucketed(images[i : i + largest]) for i in starts])
        pieces = max(-(-len(images) // self.lane_batch), self.lanes)  # ceil division
        return np.concatenate(list(self._lanes.map(self._run_bucketed, _split(images, pieces))))

    def _run_bucketed(self, chunk: NDArray[np.uint8]) -> NDArray[np.float32]:
        """One forward pass, padded up to the nearest bucket size."""
        bucket = next(size for size in self.buckets if size >= len(chunk))
        padded = chunk
        if bucket > len(chunk):
            padding = np.zeros((bucket - len(chunk), *chunk.shape[1:]), np.uint8)
            padded = np.concatenate([chunk, padding])
        return np.asarray(self._forward(tf.constant(padded)))[: len(chunk)]

    def top_k(self, probabilities: NDArray[np.float32], k: int) -> list[list[Prediction]]:
        """The ``k`` most likely labels for each row, best first."""
        k = min(k, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            [Prediction(self.labels[i], int(i), float(row[i])) for i in indices]
            for row, indices in zip(probabilities, order, strict=True)
        ]


def _split(chunk: NDArray[np.uint8], parts: int) -> list[NDArray[np.uint8]]:
    """``chunk`` in up to ``parts`` near-equal, non-empty pieces, in order."""
    return list(np.array_split(chunk, min(parts, len(chunk))))


def load_classifier(
    version: ModelVersion,
    version_dir: Path,
    weights_dir: Path,
    max_batch: int,
    lite_checkpoint: Path | None = None,
    *,
    lanes: int = 1,
    lane_batch: int = 4,
) -> Classifier:
    """Load a registered version from the store (or pretrained weights, for built-ins)."""
    model: Any
    if version.kind == "builtin":
        model = load_lite_imagenet(
            version.backbone.removeprefix("efficientnet_"), weights_dir, lite_checkpoint
        )
    else:
        model = keras.saving.load_model(version_dir / "model.keras", compile=False, safe_mode=True)
    logger.info("loaded model %s v%s", version.name, version.version)
    return Classifier(version, model, max_batch, lanes=lanes, lane_batch=lane_batch)
