"""Transfer learning: a new head on a pretrained backbone, then a partial fine-tune.

The recipe of the Keras transfer-learning guide, made fast and controllable:

* phase 1 trains only the head on a frozen backbone. With augmentation off, the backbone's
  features are computed once and the head trains on them, instead of running the backbone
  again every epoch (the costly part of phase 1);
* phase 2 unfreezes the top ``unfreeze`` fraction of the backbone's layers and trains with a
  much lower learning rate. The backbone is always called with ``training=False``, so its
  BatchNorm layers stay in inference mode and keep their ImageNet statistics;
* both phases stop early and lower the learning rate on a validation-loss plateau, weight
  classes when they are imbalanced, and report progress (and honour cancellation) through
  ``TrainingHooks`` after every batch; given a ``log_dir``, each logs its epochs for
  TensorBoard (``ml.tensorboard_logs``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from ml.tensorboard_logs import tensorboard_callback

IMBALANCE_RATIO = 1.5
"""Largest/smallest class count above which classes are weighted."""


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters of one fine-tune job (validated by the API)."""

    epochs: int = 10
    fine_tune_epochs: int = 5
    unfreeze: float = 0.2
    learning_rate: float = 1e-3
    fine_tune_learning_rate: float = 1e-5
    batch_size: int = 32
    augment: bool = False
    seed: int = 0
    dropout: float = 0.2
    patience: int = 3
    calibrate: bool = True
    """Temperature-scale the trained model on the validation split when that lowers its
    calibration error (``ml.temperature``)."""


class TrainingHooks(Protocol):
    """How training reports progress and learns that it should stop."""

    def report(self, progress: dict[str, Any]) -> bool:
        """Publish progress; return True to stop (the job was canceled)."""


class TrainingCanceled(Exception):
    """Raised when ``TrainingHooks.report`` asked training to stop."""


@dataclass
class TrainingOutcome:
    """A trained classifier and how it got there."""

    model: keras.Model
    history: dict[str, list[float]] = field(default_factory=dict)
    phase_boundary: int = 0
    phase_seconds: dict[str, float] = field(default_factory=dict)


def _augmentation(seed: int) -> keras.Sequential:
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.08, seed=seed),
            keras.layers.RandomZoom(0.1, seed=seed),
            keras.layers.RandomContrast(0.1, seed=seed),
        ],
        name="augmentation",
    )


@dataclass
class ClassifierParts:
    """The full model and the layers the phases train separately."""

    model: keras.Model
    backbone: keras.Model
    head: list[keras.layers.Layer]


def build_classifier(
    backbone: keras.Model, num_classes: int, config: TrainConfig
) -> ClassifierParts:
    """Stack augmentation (training only), the backbone (inference mode) and a softmax head.

    The head layers are returned too, so phase 1 can train them on cached features and the
    full model uses the very same weights afterwards.
    """
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be at least 2. Received {num_classes}.")
    head = [
        keras.layers.Dropout(config.dropout, name="head_dropout"),
        keras.layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier"),
    ]
    inputs = keras.Input(shape=backbone.input_shape[1:], name="image")
    x = _augmentation(config.seed)(inputs) if config.augment else inputs
    x = backbone(x, training=False)
    for layer in head:
        x = layer(x)
    return ClassifierParts(keras.Model(inputs, x, name="classifier_model"), backbone, head)


def class_weights(labels: NDArray[np.int32], num_classes: int) -> dict[int, float] | None:
    """Inverse-frequency weights when the largest class outnumbers the smallest by 1.5x."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if counts.min() == 0 or counts.max() / counts.min() <= IMBALANCE_RATIO:
        return None
    return {i: float(len(labels) / (num_classes * c)) for i, c in enumerate(counts)}


def _dataset(
    x: NDArray[Any], y: NDArray[np.int32], batch_size: int, shuffle: bool, seed: int
) -> tf.data.Dataset:
    data = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle:
        data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _Progress(keras.callbacks.Callback):
    """Reports phase, epoch, metrics and an ETA after each epoch; checks for cancel per batch."""

    def __init__(self, hooks: TrainingHooks, phase: str, epoch_offset: int, total: int) -> None:
        super().__init__()
        self.hooks, self.phase = hooks, phase
        self.offset, self.total = epoch_offset, total
        self.canceled = False
        self.started = time.monotonic()
        self.latest: dict[str, float] = {}
        self.epoch = 0

    def _report(self) -> None:
        done = self.offset + self.epoch
        per_epoch = (time.monotonic() - self.started) / max(self.epoch, 1)
        progress = {
            "phase": self.phase,
            "epoch": done,
            "total_epochs": self.total,
            "eta_s": round(per_epoch * max(self.total - done, 0), 1),
            **self.latest,
        }
        if self.hooks.report(progress):
            self.canceled = True
            self.model.stop_training = True

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        self.epoch = epoch + 1
        self.latest = {
            k: round(float(v), 5)
            for k, v in (logs or {}).items()
            if k in ("loss", "accuracy", "val_loss", "val_accuracy")
        }
        self._report()

    def on_train_batch_end(self, batch: int, logs: dict[str, float] | None = None) -> None:
        if not self.canceled:
            self._report()


def _fit(
    model: keras.Model,
    train: tuple[Any, NDArray[np.int32]],
    validation: tuple[Any, NDArray[np.int32]],
    *,
    epochs: int,
    config: TrainConfig,
    progress: _Progress,
    num_classes: int,
    log_dir: Path | None,
) -> dict[str, list[float]]:
    callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
        keras.callbacks.ReduceLROnPlateau(
            monitor="val_loss", factor=0.5, patience=max(1, config.patience // 2)
        ),
        progress,
    ]
    if log_dir is not None:
        callbacks.append(tensorboard_callback(log_dir))
    history = model.fit(
        _dataset(*train, config.batch_size, shuffle=True, seed=config.seed),
        validation_data=_dataset(*validation, config.batch_size, shuffle=False, seed=0),
        epochs=epochs,
        shuffle=False,  # the tf.data pipeline shuffles each epoch itself
        class_weight=class_weights(train[1], num_classes),
        callbacks=callbacks,
        verbose=0,
    )
    if progress.canceled:
        raise TrainingCanceled
    return {k: [float(v) for v in values] for k, values in history.history.items()}


def extract_features(backbone: keras.Model, images: NDArray[np.uint8], batch_size: int) -> Any:
    """Run the frozen backbone once over ``images`` (phase 1's cached features)."""
    return backbone.predict(images, batch_size=batch_size, verbose=0)


def _compile(model: keras.Model, learning_rate: float) -> None:
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )


def train_head(
    parts: ClassifierParts,
    train: tuple[NDArray[np.uint8], NDArray[np.int32]],
    validation: tuple[NDArray[np.uint8], NDArray[np.int32]],
    config: TrainConfig,
    hooks: TrainingHooks,
    *,
    total_epochs: int,
    cache_features: bool,
    log_dir: Path | None = None,
) -> dict[str, list[float]]:
    """Phase 1: train the head with the backbone frozen, on cached features when possible.

    ``log_dir``, when given, receives the phase's TensorBoard event files.
    """
    num_classes = int(parts.head[-1].units)
    parts.backbone.trainable = False
    progress = _Progress(hooks, "head", 0, total_epochs)
    if not cache_features:
        _compile(parts.model, config.learning_rate)
        return _fit(
            parts.model,
            train,
            validation,
            epochs=config.epochs,
            config=config,
            progress=progress,
            num_classes=num_classes,
            log_dir=log_dir,
        )
    features = [
        extract_features(parts.backbone, x, config.batch_size) for x in (train[0], validation[0])
    ]
    inputs = keras.Input(shape=features[0].shape[1:], name="features")
    x = inputs
    for layer in parts.head:
        x = layer(x)
    head_model = keras.Model(inputs, x, name="head")
    _compile(head_model, config.learning_rate)
    return _fit(
        head_model,
        (features[0], train[1]),
        (features[1], validation[1]),
        epochs=config.epochs,
        config=config,
        progress=progress,
        num_classes=num_classes,
        log_dir=log_dir,
    )


def unfreeze_top(backbone: keras.Model, fraction: float) -> int:
    """Make the top ``fraction`` of the backbone's weighted layers trainable, BatchNorm excepted.

    Returns:
        How many layers are now trainable.
    """
    backbone.trainable = True
    weighted = [layer for layer in backbone.layers if layer.weights]
    count = math.ceil(len(weighted) * fraction)
    trainable = set(map(id, weighted[len(weighted) - count :])) if count else set()
    for layer in backbone.layers:
        layer.trainable = id(layer) in trainable and not isinstance(
            layer, keras.layers.BatchNormalization
        )
    return sum(1 for layer in backbone.layers if layer.trainable and layer.weights)


def fine_tune(
    parts: ClassifierParts,
    train: tuple[NDArray[np.uint8], NDArray[np.int32]],
    validation: tuple[NDArray[np.uint8], NDArray[np.int32]],
    config: TrainConfig,
    hooks: TrainingHooks,
    *,
    log_dir: Path | None = None,
) -> dict[str, list[float]]:
    """Phase 2: unfreeze the top of the backbone and train end to end with a low rate.

    ``log_dir``, when given, receives the phase's TensorBoard event files.
    """
    unfreeze_top(parts.backbone, config.unfreeze)
    _compile(parts.model, config.fine_tune_learning_rate)  # recompile after changing trainable
    progress = _Progress(hooks, "fine_tune", config.epochs, config.epochs + config.fine_tune_epochs)
    num_classes = int(parts.head[-1].units)
    return _fit(
        parts.model,
        train,
        validation,
        epochs=config.fine_tune_epochs,
        config=config,
        progress=progress,
        num_classes=num_classes,
        log_dir=log_dir,
    )


def train_classifier(
    backbone: keras.Model,
    num_classes: int,
    train: tuple[NDArray[np.uint8], NDArray[np.int32]],
    validation: tuple[NDArray[np.uint8], NDArray[np.int32]],
    *,
    config: TrainConfig,
    hooks: TrainingHooks,
    log_dir: Path | None = None,
) -> TrainingOutcome:
    """Run both phases and return the trained classifier with its merged history.

    Args:
        backbone: the pretrained feature extractor.
        num_classes: classes of the new head.
        train: training images and labels.
        validation: validation images and labels (early stopping and the plateau watch them).
        config: the job's training parameters.
        hooks: where progress goes and cancellation comes from.
        log_dir: where to write TensorBoard event files, one run per phase (``head/``,
            ``fine_tune/``); None writes none.

    Returns:
        The classifier, its history over both phases and where phase 2 began.

    Raises:
        TrainingCanceled: ``hooks.report`` asked to stop; nothing should be published.
    """
    keras.utils.set_random_seed(config.seed)
    # One strategy for the model's whole life: variables made under one MirroredStrategy
    # cannot be trained under another, so both phases reuse the one that built the model.
    strategy = _strategy()
    with strategy.scope():
        parts = build_classifier(backbone, num_classes, config)
    total = config.epochs + config.fine_tune_epochs
    started = time.monotonic()
    history = train_head(
        parts,
        train,
        validation,
        config,
        hooks,
        total_epochs=total,
        cache_features=not config.augment,
        log_dir=None if log_dir is None else log_dir / "head",
    )
    outcome = TrainingOutcome(parts.model, history, len(history.get("loss", [])))
    outcome.phase_seconds["head"] = time.monotonic() - started
    if config.fine_tune_epochs > 0 and config.unfreeze > 0:
        started = time.monotonic()
        with strategy.scope():
            tuned = fine_tune(
                parts,
                train,
                validation,
                config,
                hooks,
                log_dir=None if log_dir is None else log_dir / "fine_tune",
            )
        for key, values in tuned.items():
            outcome.history.setdefault(key, []).extend(values)
        outcome.phase_seconds["fine_tune"] = time.monotonic() - started
    parts.backbone.trainable = False
    return outcome


def _strategy() -> tf.distribute.Strategy:
    """MirroredStrategy across several GPUs; the default strategy otherwise."""
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def configure_accelerators() -> None:
    """On GPUs: grow memory as needed and train in mixed precision (the head stays float32)."""
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        keras.mixed_precision.set_global_policy("mixed_float16")
