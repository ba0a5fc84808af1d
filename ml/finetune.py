"""A whole fine-tune job: archive in, evaluated and published model version out.

Called by the training worker; kept free of Celery and Redis so it can be tested and reused
directly. The steps: unpack the archive safely, find the splits, decode the images (skipping and
reporting unreadable ones), train, evaluate on the held-out test split, write the model, report
and plots into a staging directory, publish it as the next version, and activate it when it is
at least as good as the active version on the same test split.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from ml.archive import ArchiveLimits, extract_archive
from ml.backbones import BACKBONES, WeightSources, load_backbone
from ml.datasets import (
    DatasetLayout,
    check_decoded_classes,
    dataset_fingerprint,
    layout_from_paths,
    load_split,
)
from ml.errors import ImgqError, InvalidBase
from ml.evaluate import evaluate_predictions, plot_confusion_matrix, plot_training_curves
from ml.export import CALIBRATION_FILE, TEST_SPLIT_FILE
from ml.preprocess import ImageLimits
from ml.registry import (
    ARTIFACTS,
    ModelRegistry,
    ModelVersion,
    publish_version,
    staging_dir,
)
from ml.train import TrainConfig, TrainingHooks, train_classifier

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneRequest:
    """Everything a fine-tune job needs, resolved from the job record and the settings."""

    model: str
    base: str
    image_size: int
    config: TrainConfig
    archive: Path
    min_images_per_class: int
    archive_limits: ArchiveLimits
    image_limits: ImageLimits
    sources: WeightSources


@dataclass
class Splits:
    """Decoded images and labels of each split, and the images that were skipped."""

    layout: DatasetLayout
    arrays: dict[str, tuple[NDArray[np.uint8], NDArray[np.int32]]]
    skipped: list[dict[str, str]]


def resolve_backbone(request: FinetuneRequest, registry: ModelRegistry) -> tuple[keras.Model, str]:
    """The backbone to start from, and the backbone name to record with the new version."""
    if request.base in BACKBONES:
        backbone = load_backbone(request.base, request.image_size, True, request.sources)
        return backbone, request.base
    name, _, number = request.base.partition(":")
    if not number.isdigit():
        raise InvalidBase(
            f"`base` must be one of {list(BACKBONES)} or `model:version`; got {request.base!r}.",
            {"base": request.base},
        )
    version = registry.get(name, int(number))
    if version.kind == "builtin":
        return load_backbone(version.backbone, request.image_size, True, request.sources), (
            version.backbone
        )
    saved = keras.saving.load_model(
        registry.local_version_dir(name, version.version) / "model.keras", compile=False
    )
    return saved.get_layer("backbone"), version.backbone


def load_splits(request: FinetuneRequest, root: Path, image_size: int) -> Splits:
    """Extract the archive, lay out the splits and decode every image.

    Raises:
        InvalidDataset: the listing breaks the dataset rules, or breaks them once the files
            that do not decode are skipped.
    """
    written = extract_archive(request.archive, root, request.archive_limits)
    relative = [path.relative_to(root).as_posix() for path in written]
    layout = layout_from_paths(relative, request.min_images_per_class, request.config.seed)
    arrays, skipped = {}, []
    for split, items in layout.splits.items():
        images, labels, bad = load_split(root, items, image_size, request.image_limits)
        arrays[split] = (images, labels)
        skipped.extend(bad)
    labels_by_split = {split: labels for split, (_, labels) in arrays.items()}
    check_decoded_classes(layout, labels_by_split, request.min_images_per_class, skipped)
    return Splits(layout, arrays, skipped)


def _compare_with_active(
    registry: ModelRegistry,
    request: FinetuneRequest,
    classes: list[str],
    test: tuple[NDArray[np.uint8], NDArray[np.int32]],
    accuracy: float,
) -> tuple[bool, str]:
    """Whether the new version should become active, and why."""
    try:
        active = registry.get(request.model)
    except ImgqError:
        return True, "the model had no active version"
    if active.labels != classes:
        return False, (
            f"classes differ from active version {active.version}; activate it explicitly to switch"
        )
    saved = keras.saving.load_model(
        registry.local_version_dir(request.model, active.version) / "model.keras", compile=False
    )
    if saved.input_shape[1:3] != test[0].shape[1:3]:
        return False, f"active version {active.version} takes another image size"
    active_accuracy = float(np.mean(np.argmax(saved.predict(test[0], verbose=0), 1) == test[1]))
    if accuracy >= active_accuracy:
        return True, (
            f"test accuracy {accuracy:.3f} >= active version {active.version}'s "
            f"{active_accuracy:.3f} on the same test split"
        )
    return False, (
        f"test accuracy {accuracy:.3f} < active version {active.version}'s "
        f"{active_accuracy:.3f} on the same test split; kept as a candidate"
    )


CALIBRATION_IMAGES = 100
"""Training images kept with a version to calibrate its full-integer export."""


def _keep_samples(
    staged: Path,
    train_images: NDArray[np.uint8],
    test: tuple[NDArray[np.uint8], NDArray[np.int32]],
    seed: int,
) -> None:
    """Keep the test split and a training sample with the version, for checking its exports."""
    rng = np.random.default_rng(seed)
    sample = rng.choice(
        len(train_images), min(CALIBRATION_IMAGES, len(train_images)), replace=False
    )
    np.savez_compressed(staged / CALIBRATION_FILE, images=train_images[np.sort(sample)])
    np.savez_compressed(staged / TEST_SPLIT_FILE, images=test[0], labels=test[1])


def run_finetune(
    request: FinetuneRequest, registry: ModelRegistry, hooks: TrainingHooks, scratch: Path
) -> dict[str, Any]:
    """Run the whole job and return its result document (the new version and why).

    Raises:
        ImgqError: bad archive or dataset, unknown base; nothing is published.
        TrainingCanceled: canceled between batches; nothing is published.
    """
    backbone, backbone_name = resolve_backbone(request, registry)
    image_size = int(backbone.input_shape[1])
    work = Path(tempfile.mkdtemp(prefix="finetune-", dir=scratch))
    try:
        splits = load_splits(request, work / "data", image_size)
        classes = list(splits.layout.classes)
        fingerprint = dataset_fingerprint(work / "data", splits.layout)
        outcome = train_classifier(
            backbone,
            len(classes),
            splits.arrays["train"],
            splits.arrays["validation"],
            config=request.config,
            hooks=hooks,
        )
        images, labels = splits.arrays["test"]
        report = evaluate_predictions(outcome.model.predict(images, verbose=0), labels, classes)
        activate, reason = _compare_with_active(
            registry, request, classes, (images, labels), report["accuracy"]
        )
        staged = staging_dir(registry, request.model)
        outcome.model.save(staged / "model.keras")
        _keep_samples(staged, splits.arrays["train"][0], (images, labels), request.config.seed)
        (staged / "evaluation.json").write_text(json.dumps(report, indent=2))
        plot_training_curves(
            outcome.history, staged / "training_curves.png", outcome.phase_boundary
        )
        plot_confusion_matrix(report["confusion_matrix"], classes, staged / "confusion_matrix.png")
        training = {
            "base": request.base,
            "params": asdict(request.config),
            "dataset_fingerprint": fingerprint,
            "split_sizes": {k: len(v) for k, v in splits.layout.splits.items()},
            "split_given": splits.layout.split_given,
            "skipped_images": splits.skipped,
            "history": outcome.history,
            "phase_seconds": outcome.phase_seconds,
        }
        metrics = {
            k: report[k]
            for k in ("accuracy", "top_k_accuracy", "top_k", "macro_avg", "weighted_avg")
        }
        version = publish_version(
            registry,
            request.model,
            staged,
            lambda number: ModelVersion(
                request.model,
                number,
                "trained",
                backbone_name,
                image_size,
                classes,
                time.time(),
                metrics,
                training,
                list(ARTIFACTS),
            ),
        )
        if activate:
            registry.activate(request.model, version.version)
        logger.info(
            "published",
            extra={"model": request.model, "version": version.version, "activated": activate},
        )
        return {
            "model": request.model,
            "version": version.version,
            "activated": activate,
            "activation_reason": reason,
            "metrics": report,
            "skipped_images": splits.skipped,
            "artifacts": list(ARTIFACTS),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
