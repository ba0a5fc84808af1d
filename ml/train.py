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

import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import keras
import numpy as np
import tensorflow as tf
from numpy.typing import NDArray

from ml.backbones import with_pooling
from ml.feature_cache import extract_features
from ml.head_training import (
    HeadData,
    HeadResult,
    make_head,
    train_head_on_features,
    validation_scores,
)
from ml.layers import HorizontalFlip
from ml.tensorboard_logs import tensorboard_callback
from ml.train_targets import (
    Distillation,
    class_weights,
    compile_for_targets,
    sample_weights,
    training_targets,
)
from ml.trials import Trial, better, fine_tune_epochs_within, record_trial, search

__all__ = [
    "ClassifierParts",
    "TrainConfig",
    "build_classifier",
    "class_weights",
    "configure_accelerators",
    "extract_features",
    "train_classifier",
]


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
    pooling: str = "avg"
    """``avg``: the mean of the backbone's feature map; ``grid``: the means of a 2 x 2 grid."""
    label_smoothing: float = 0.0
    """Share of each label spread evenly over the classes (Szegedy et al. 2016)."""
    mixup: float = 0.0
    """Mixup's Beta alpha on phase 1's cached features (0: off)."""
    tta: bool = False
    """Train on mirrored images too and serve the mean of an image's and its mirror's
    predictions (test-time augmentation; twice the serving cost)."""
    distill_alpha: float = 0.5
    """With a teacher: the weight of its soft labels against the true ones."""
    distill_temperature: float = 4.0
    """With a teacher: the temperature both softmaxes are softened by."""


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
    config: TrainConfig | None = None
    """The parameters the model was trained with (a budget's best, when there was one)."""
    trials: list[Trial] = field(default_factory=list)
    """A budget's trials, in the order run."""


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
    backbone: keras.Model,
    num_classes: int,
    config: TrainConfig,
    head: list[keras.layers.Layer] | None = None,
) -> ClassifierParts:
    """Stack augmentation (training only), the backbone (inference mode) and a softmax head.

    The backbone pools as ``config.pooling`` says; with ``config.tta`` the model averages its
    predictions for the image and its mirror. ``head`` passes layers phase 1 already trained
    (on cached features), so the full model uses the very same weights; by default new ones.
    """
    if num_classes < 2:
        raise ValueError(f"`num_classes` must be at least 2. Received {num_classes}.")
    backbone = with_pooling(backbone, config.pooling)
    head = head if head is not None else make_head(num_classes, config.dropout)
    inputs = keras.Input(shape=backbone.input_shape[1:], name="image")
    x = _augmentation(config.seed)(inputs) if config.augment else inputs
    views = [x, HorizontalFlip(name="mirror")(x)] if config.tta else [x]
    outputs = []
    for view in views:
        y = backbone(view, training=False)
        for layer in head:
            y = layer(y)
        outputs.append(y)
    output = outputs[0] if len(outputs) == 1 else keras.layers.Average(name="tta_mean")(outputs)
    return ClassifierParts(keras.Model(inputs, output, name="classifier_model"), backbone, head)


def _dataset(
    x: NDArray[Any],
    targets: NDArray[np.float32],
    weights: NDArray[np.float32] | None,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
) -> tf.data.Dataset:
    parts = (x, targets) if weights is None else (x, targets, weights)
    data = tf.data.Dataset.from_tensor_slices(parts)
    if shuffle:
        data = data.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)


class _Progress(keras.callbacks.Callback):
    """Reports phase, epoch, metrics and an ETA after each epoch; checks for cancel per batch."""

    def __init__(
        self,
        hooks: TrainingHooks,
        phase: str,
        epoch_offset: int,
        total: int,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.hooks, self.phase = hooks, phase
        self.offset, self.total = epoch_offset, total
        self.extra = extra or {}
        self.canceled = False
        self.started = time.monotonic()
        self.latest: dict[str, float] = {}
        self.epoch = 0

    def report_now(self) -> None:
        """Publish the progress as it stands (a budget's trials once one more has ended)."""
        self._report()

    def _report(self) -> None:
        done = self.offset + self.epoch
        per_epoch = (time.monotonic() - self.started) / max(self.epoch, 1)
        progress = {
            "phase": self.phase,
            "epoch": done,
            "total_epochs": self.total,
            "eta_s": round(per_epoch * max(self.total - done, 0), 1),
            **self.extra,
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


def _callbacks(
    config: TrainConfig, progress: _Progress, log_dir: Path | None
) -> list[keras.callbacks.Callback]:
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
    return callbacks


@dataclass(frozen=True)
class TrainingData:
    """Images and labels of the training and validation splits, and a teacher's view of them."""

    train: tuple[NDArray[np.uint8], NDArray[np.int32]]
    validation: tuple[NDArray[np.uint8], NDArray[np.int32]]
    teacher: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None
    """A teacher's probabilities for the training and validation images (distillation)."""

    def head_data(self, num_classes: int) -> HeadData:
        """Labels and teacher probabilities, as phase 1 on cached features takes them."""
        teacher_train, teacher_val = self.teacher if self.teacher is not None else (None, None)
        return HeadData(self.train[1], self.validation[1], num_classes, teacher_train, teacher_val)


def _distillation(config: TrainConfig, data: TrainingData) -> Distillation | None:
    if data.teacher is None:
        return None
    return Distillation(config.distill_alpha, config.distill_temperature)


def _fit_images(
    parts: ClassifierParts,
    data: TrainingData,
    *,
    epochs: int,
    learning_rate: float,
    config: TrainConfig,
    progress: _Progress,
    log_dir: Path | None,
    deadline: float | None = None,
) -> dict[str, list[float]]:
    """Fit the full model on images (phase 2, or phase 1 with augmentation on); with a
    ``deadline`` (``time.monotonic``), no epoch starts that would end after it."""
    num_classes = int(parts.head[-1].units)
    compile_for_targets(
        parts.model,
        learning_rate,
        num_classes,
        config.label_smoothing,
        _distillation(config, data),
    )
    teacher_train, teacher_val = data.teacher if data.teacher is not None else (None, None)
    train_targets = training_targets(data.train[1], num_classes, teacher_train)
    val_targets = training_targets(data.validation[1], num_classes, teacher_val)
    history = parts.model.fit(
        _dataset(
            data.train[0],
            train_targets,
            sample_weights(data.train[1], num_classes),
            config.batch_size,
            shuffle=True,
            seed=config.seed,
        ),
        validation_data=_dataset(
            data.validation[0], val_targets, None, config.batch_size, shuffle=False, seed=0
        ),
        epochs=epochs,
        shuffle=False,  # the tf.data pipeline shuffles each epoch itself
        callbacks=_callbacks(config, progress, log_dir)
        + ([] if deadline is None else [_Deadline(deadline)]),
        verbose=0,
    )
    if progress.canceled:
        raise TrainingCanceled
    return {k: [float(v) for v in values] for k, values in history.history.items()}


class _Deadline(keras.callbacks.Callback):
    """Stops training before an epoch that would end after ``deadline`` (a budget's end)."""

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline
        self.started = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        per_epoch = (time.monotonic() - self.started) / (epoch + 1)
        if time.monotonic() + per_epoch > self.deadline:
            self.model.stop_training = True


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


class _HeadPhase(NamedTuple):
    """What phase 1 ended with."""

    config: TrainConfig
    best: HeadResult
    trials: list[Trial]
    seconds_per_image: float
    """The backbone's forward pass per image, as extracting the features took."""
    deadline: float | None
    """When a budget ends (``time.monotonic``), counted from the start of its search."""


def _head_phase(
    backbone: keras.Model,
    num_classes: int,
    data: TrainingData,
    config: TrainConfig,
    hooks: TrainingHooks,
    *,
    total_epochs: int,
    budget_s: float | None,
    log_dir: Path | None,
) -> _HeadPhase:
    """Phase 1 on cached features: one head, or a budget's search for the best one."""
    backbone.trainable = False
    cache = extract_features(
        backbone,
        {"train": data.train[0], "validation": data.validation[0]},
        flips=config.tta or budget_s is not None,
        batch_size=config.batch_size,
    )
    head_data = data.head_data(num_classes)
    distillation = _distillation(config, data)
    if config.pooling not in cache.poolings:
        config = dataclasses.replace(config, pooling="avg")

    def train_one(candidate: TrainConfig, extra: dict[str, Any] | None = None) -> HeadResult:
        progress = _Progress(hooks, "head", 0, total_epochs, extra)
        result = train_head_on_features(
            cache,
            head_data,
            candidate,
            distillation=distillation,
            callbacks=_callbacks(candidate, progress, log_dir),
        )
        if progress.canceled:
            raise TrainingCanceled
        return result

    if budget_s is None:
        return _HeadPhase(config, train_one(config), [], cache.seconds_per_image, None)
    deadline = time.monotonic() + budget_s
    reported: list[dict[str, Any]] = []

    def report(trials: list[Trial]) -> None:
        reported[:] = [trial.document() for trial in trials]

    best_config, best, trials = search(
        config,
        lambda candidate: train_one(candidate, {"trials": reported}),
        budget_s=budget_s,
        poolings=cache.poolings,
        flips=cache.has_flips,
        report=report,
    )
    return _HeadPhase(best_config, best, trials, cache.seconds_per_image, deadline)


def _fine_tune_trial(
    parts: ClassifierParts,
    data: TrainingData,
    config: TrainConfig,
    phase: _HeadPhase,
    *,
    fraction: float,
    hooks: TrainingHooks,
    log_dir: Path | None,
) -> tuple[TrainConfig, dict[str, list[float]]]:
    """A budget's last trial: the top ``fraction`` of the backbone fine-tuned under the best
    head, in as many epochs as fit before the budget ends, kept only when it scores better on
    the validation split than the head alone (else the weights go back as they were). The
    trial is appended to ``phase.trials``.

    Returns:
        The config the model now has, and the trial's history when it was kept (else empty).
    """
    best, trials, deadline = phase.best, phase.trials, phase.deadline or 0.0
    images = (len(data.train[1]), len(data.validation[1]))
    remaining = deadline - time.monotonic()
    epochs = fine_tune_epochs_within(remaining, phase.seconds_per_image, images)
    if epochs == 0:
        return config, {}
    started = time.monotonic()
    candidate = dataclasses.replace(config, unfreeze=fraction, fine_tune_epochs=epochs)
    before = parts.model.get_weights()
    unfreeze_top(parts.backbone, fraction)
    progress = _Progress(
        hooks,
        "fine_tune",
        best.epochs,
        best.epochs + epochs,
        {"trials": [trial.document() for trial in trials]},
    )
    history = _fit_images(
        parts,
        data,
        epochs=epochs,
        learning_rate=candidate.fine_tune_learning_rate,
        config=candidate,
        progress=progress,
        log_dir=log_dir,
        deadline=deadline,
    )
    probabilities = parts.model.predict(data.validation[0], verbose=0)
    val_accuracy, val_loss = validation_scores(probabilities, data.validation[1])
    candidate = dataclasses.replace(candidate, fine_tune_epochs=len(history.get("loss", [])))
    result = HeadResult(
        [],
        history,
        val_accuracy,
        val_loss,
        time.monotonic() - started,
        candidate.fine_tune_epochs,
        val_images=len(data.validation[1]),
    )
    trials.append(record_trial(len(trials) + 1, candidate, result, fine_tuned=True))
    progress.extra["trials"] = [trial.document() for trial in trials]
    progress.report_now()
    if progress.canceled:
        raise TrainingCanceled
    if better(result, best):
        return candidate, history
    parts.model.set_weights(before)
    return config, {}


def train_classifier(
    backbone: keras.Model,
    num_classes: int,
    train: tuple[NDArray[np.uint8], NDArray[np.int32]],
    validation: tuple[NDArray[np.uint8], NDArray[np.int32]],
    *,
    config: TrainConfig,
    hooks: TrainingHooks,
    log_dir: Path | None = None,
    budget_s: float | None = None,
    budget_fine_tune: float | None = None,
    teacher: tuple[NDArray[np.float32], NDArray[np.float32]] | None = None,
) -> TrainingOutcome:
    """Run both phases and return the trained classifier with its merged history.

    Args:
        backbone: the pretrained feature extractor.
        num_classes: classes of the new head.
        train: training images and labels.
        validation: validation images and labels (early stopping, the plateau and a
            budget's trials watch them).
        config: the job's training parameters.
        hooks: where progress goes and cancellation comes from.
        log_dir: where to write TensorBoard event files, one run per phase (``head/``,
            ``fine_tune/``); None writes none.
        budget_s: seconds phase 1 may spend trying configurations (``ml.trials``); None
            trains ``config`` alone. Needs cached features (``augment`` off).
        budget_fine_tune: the fraction of the backbone a budget may fine-tune with what is
            left of it after the heads' search, when ``config`` has no fine-tune (``auto``
            left the backbone frozen); None tries none.
        teacher: a teacher's probabilities for the training and validation images, to
            distil (``ml.train_targets``).

    Returns:
        The classifier, its history over both phases, where phase 2 began, and the config it
        was trained with (a budget's best).

    Raises:
        TrainingCanceled: ``hooks.report`` asked to stop; nothing should be published.
    """
    keras.utils.set_random_seed(config.seed)
    data = TrainingData(train, validation, teacher)
    total = config.epochs + config.fine_tune_epochs
    started = time.monotonic()
    # One strategy for the model's whole life: variables made under one MirroredStrategy
    # cannot be trained under another, so both phases reuse the one that built the model.
    strategy = _strategy()
    phase: _HeadPhase | None = None
    with strategy.scope():
        if config.augment:
            parts = build_classifier(backbone, num_classes, config)
            parts.backbone.trainable = False
            history = _fit_images(
                parts,
                data,
                epochs=config.epochs,
                learning_rate=config.learning_rate,
                config=config,
                progress=_Progress(hooks, "head", 0, total),
                log_dir=None if log_dir is None else log_dir / "head",
            )
        else:
            phase = _head_phase(
                backbone,
                num_classes,
                data,
                config,
                hooks,
                total_epochs=total,
                budget_s=budget_s,
                log_dir=None if log_dir is None else log_dir / "head",
            )
            config = phase.config
            parts = build_classifier(backbone, num_classes, config, phase.best.head)
            history = phase.best.history
    outcome = TrainingOutcome(parts.model, history, len(history.get("loss", [])))
    outcome.config, outcome.trials = config, [] if phase is None else phase.trials
    outcome.phase_seconds["head"] = time.monotonic() - started
    asked = config.fine_tune_epochs > 0 and config.unfreeze > 0
    tuned: dict[str, list[float]] | None = None
    started = time.monotonic()
    if not asked and budget_fine_tune and phase is not None and phase.deadline is not None:
        with strategy.scope():
            config, tuned = _fine_tune_trial(
                parts,
                data,
                config,
                phase,
                fraction=budget_fine_tune,
                hooks=hooks,
                log_dir=None if log_dir is None else log_dir / "fine_tune",
            )
        outcome.config = config
    elif asked:
        with strategy.scope():
            unfreeze_top(parts.backbone, config.unfreeze)
            tuned = _fit_images(
                parts,
                data,
                epochs=config.fine_tune_epochs,
                learning_rate=config.fine_tune_learning_rate,
                config=config,
                progress=_Progress(hooks, "fine_tune", config.epochs, total),
                log_dir=None if log_dir is None else log_dir / "fine_tune",
            )
    if tuned is not None:
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
