"""A whole fine-tune job: a dataset version in, an evaluated and published model version out.

Called by the training worker; kept free of Celery and Redis so it can be tested and reused
directly. The steps: store the uploaded archive, if there is one, as the dataset's next version
(``ml.dataset_ingest``), decode that version's images from the store (skipping and reporting
purged ones), train (logging both phases for TensorBoard), temperature-scale the model on the
validation split when that helps (``ml.temperature``), evaluate it on the version's test split
as it will serve, write the model, report, plots and zipped TensorBoard logs into a staging
directory, publish it as the next version, and activate it by the gate below.

The gate evaluates the active version on the same test split. With the same classes, the new
version is activated when it is at least as accurate. When the new version's classes strictly
contain the active version's (classes were added), both are compared on the test images of the
active version's classes, the new one predicting among those classes only, and it is activated
when it is no worse by more than ``activation_margin``: otherwise a version that learns new
classes could never be served. Any other change of classes waits for an explicit activation.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
from numpy.typing import NDArray

from ml.auto_config import budget_fine_tune, choose_config, dataset_stats
from ml.backbones import BACKBONES, WeightSources, load_backbone
from ml.dataset_ingest import IngestRequest, ingest_archive
from ml.dataset_store import DatasetStore, DatasetVersion
from ml.datasets import SPLITS, DatasetLayout, check_decoded_classes, decode_items
from ml.distillation import Teacher, compare_with_teacher, load_teacher
from ml.drift import reference_from_predictions
from ml.errors import ImgqError, InvalidBase
from ml.evaluate import (
    evaluate_predictions,
    plot_confusion_matrix,
    plot_reliability_diagram,
    plot_roc_curves,
    plot_training_curves,
)
from ml.export import CALIBRATION_FILE, TEST_SPLIT_FILE
from ml.preprocess import ImageLimits
from ml.registry import (
    ARTIFACTS,
    REFERENCE_FILE,
    TENSORBOARD_FILE,
    ModelRegistry,
    ModelVersion,
    publish_version,
    split_model_id,
    staging_dir,
)
from ml.temperature import calibrate_model, with_test_effect
from ml.tensorboard_logs import zip_logs
from ml.train import TrainConfig, TrainingHooks, TrainingOutcome, train_classifier

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneRequest:
    """Everything a fine-tune job needs, resolved from the job record and the settings."""

    model: str
    base: str
    image_size: int
    train_params: Mapping[str, Any]
    """``TrainConfig`` fields as the job gave them; missing or ``auto`` ones are chosen from
    the data (``ml.auto_config``)."""
    dataset: str
    """Id of the dataset to train on."""
    dataset_version: int | None
    """Its version; None: the latest (the one ``ingest`` makes, when there is an upload)."""
    ingest: IngestRequest | None
    """The upload to store as the dataset's next version first, if any."""
    min_images_per_class: int
    image_limits: ImageLimits
    sources: WeightSources
    activation_margin: float = 0.02
    """Accuracy a version that adds classes may lose on the active version's classes."""
    retrain_of: dict[str, Any] | None = None
    """For a retrain (``ml.retrain``), what it continues; it is never activated by the gate."""
    budget_s: float | None = None
    """Seconds phase 1 may spend trying configurations (``ml.trials``); None: no search."""
    teacher: str | None = None
    """``<model id>:<version>`` to distil from (``ml.distillation``); None: no teacher."""


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
        registry.local_version_dir(name, version.version) / "model.keras",
        compile=False,
        safe_mode=True,
    )
    return saved.get_layer("backbone"), version.backbone


def load_version_splits(
    datasets: DatasetStore, version: DatasetVersion, request: FinetuneRequest, image_size: int
) -> Splits:
    """Decode every image of a dataset version from the store, split as its manifest says.

    Raises:
        InvalidDataset: skipping its purged or undecodable images leaves a class too short.
    """
    classes = tuple(sorted(version.classes))
    index = {name: number for number, name in enumerate(classes)}
    items: dict[str, list[tuple[str, int]]] = {split: [] for split in SPLITS}
    for image, (label, split) in sorted(version.images.items()):
        items[split].append((image, index[label]))
    layout = DatasetLayout(classes, items, bool(version.details.get("split_given", False)))
    arrays, skipped = {}, []
    for split, split_items in items.items():
        images, labels, bad = decode_items(
            lambda image: datasets.read_image(version.dataset, image),
            split_items,
            image_size,
            request.image_limits,
        )
        arrays[split] = (images, labels)
        skipped.extend(bad)
    labels_by_split = {split: labels for split, (_, labels) in arrays.items()}
    check_decoded_classes(layout, labels_by_split, request.min_images_per_class, skipped)
    return Splits(layout, arrays, skipped)


def _accuracy(predicted: NDArray[np.int64], truth: NDArray[np.int32]) -> float:
    return float(np.mean(predicted == truth))


def _compare_on_old_classes(
    active: ModelVersion,
    saved: keras.Model,
    classes: list[str],
    test: tuple[NDArray[np.uint8], NDArray[np.int32]],
    probabilities: NDArray[np.float32],
    *,
    margin: float,
) -> tuple[bool, str]:
    """The gate for a version whose classes strictly contain the active version's."""
    old = list(active.labels)
    columns = np.array([classes.index(name) for name in old])
    keep = np.isin(test[1], columns)
    if not keep.any():
        return False, "the test split has no image of the active version's classes"
    truth = np.array([old.index(classes[label]) for label in test[1][keep]])
    candidate = _accuracy(np.argmax(probabilities[keep][:, columns], 1), truth)
    current = _accuracy(np.argmax(saved.predict(test[0][keep], verbose=0), 1), truth)
    scope = f"on the {int(keep.sum())} test images of active version {active.version}'s classes"
    if candidate >= current - margin:
        return True, (
            f"adds classes {sorted(set(classes) - set(old))}; accuracy {candidate:.3f} vs "
            f"active version {active.version}'s {current:.3f} {scope} (margin {margin:g})"
        )
    return False, (
        f"adds classes {sorted(set(classes) - set(old))}, but accuracy {candidate:.3f} < "
        f"active version {active.version}'s {current:.3f} - {margin:g} {scope}; "
        "kept as a candidate"
    )


def _compare_with_active(
    registry: ModelRegistry,
    request: FinetuneRequest,
    classes: list[str],
    test: tuple[NDArray[np.uint8], NDArray[np.int32]],
    probabilities: NDArray[np.float32],
) -> tuple[bool, str]:
    """Whether the new version should become active, and why (see the module docstring)."""
    try:
        active = registry.get(request.model)
    except ImgqError:
        return True, "the model had no active version"
    adds_classes = isinstance(active.labels, list) and set(classes) > set(active.labels)
    if active.labels != classes and not adds_classes:
        return False, (
            f"classes differ from active version {active.version}; activate it explicitly to switch"
        )
    saved = keras.saving.load_model(
        registry.local_version_dir(request.model, active.version) / "model.keras",
        compile=False,
        safe_mode=True,
    )
    if saved.input_shape[1:3] != test[0].shape[1:3]:
        return False, f"active version {active.version} takes another image size"
    if adds_classes:
        return _compare_on_old_classes(
            active, saved, classes, test, probabilities, margin=request.activation_margin
        )
    accuracy = _accuracy(np.argmax(probabilities, 1), test[1])
    active_accuracy = _accuracy(np.argmax(saved.predict(test[0], verbose=0), 1), test[1])
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


def _dataset_version(
    request: FinetuneRequest, datasets: DatasetStore, scratch: Path
) -> tuple[DatasetVersion, dict[str, Any] | None]:
    """The dataset version to train on, stored from the upload first if there is one."""
    if request.ingest is None:
        return datasets.get(request.dataset, request.dataset_version), None
    ingested = ingest_archive(datasets, request.ingest, scratch)
    return datasets.get(request.dataset, ingested["version"]), ingested


def _train_logged(
    backbone: keras.Model,
    splits: Splits,
    request: FinetuneRequest,
    config: TrainConfig,
    *,
    hooks: TrainingHooks,
    scratch: Path,
    teacher: Teacher | None,
    fine_tune_fraction: float | None,
) -> tuple[TrainingOutcome, bytes]:
    """Train both phases with TensorBoard logging; the logs come back zipped, their folder gone.

    The event files are written outside the staging directory, which must hold plain files only
    (an object store receives it file by file), and are zipped once training has ended.
    """
    with tempfile.TemporaryDirectory(prefix="tensorboard-", dir=scratch) as log_dir:
        outcome = train_classifier(
            backbone,
            len(splits.layout.classes),
            splits.arrays["train"],
            splits.arrays["validation"],
            config=config,
            hooks=hooks,
            log_dir=Path(log_dir),
            budget_s=request.budget_s,
            budget_fine_tune=fine_tune_fraction,
            teacher=None if teacher is None else teacher.soft_labels,
        )
        return outcome, zip_logs(Path(log_dir))


def run_finetune(
    request: FinetuneRequest,
    registry: ModelRegistry,
    datasets: DatasetStore,
    hooks: TrainingHooks,
    scratch: Path,
) -> dict[str, Any]:
    """Run the whole job and return its result document (the new version and why).

    Raises:
        ImgqError: bad archive or dataset, unknown base or dataset; no model version is
            published (a dataset version stored from the upload stays).
        TrainingCanceled: canceled between batches; nothing is published.
    """
    backbone, backbone_name = resolve_backbone(request, registry)
    image_size = int(backbone.input_shape[1])
    dataset, ingested = _dataset_version(request, datasets, scratch)
    splits = load_version_splits(datasets, dataset, request, image_size)
    classes = list(splits.layout.classes)
    stats = dataset_stats(
        lambda image: datasets.read_image(dataset.dataset, image),
        splits.layout.splits["train"],
        len(classes),
    )
    config, auto = choose_config(request.train_params, stats)
    teacher = (
        None
        if request.teacher is None
        else load_teacher(
            registry,
            request.teacher,
            classes,
            lambda size: load_version_splits(datasets, dataset, request, size).arrays,
        )
    )
    outcome, tensorboard_zip = _train_logged(
        backbone,
        splits,
        request,
        config,
        hooks=hooks,
        scratch=scratch,
        teacher=teacher,
        fine_tune_fraction=budget_fine_tune(request.train_params, stats),
    )
    config = outcome.config or config
    calibration = calibrate_model(
        outcome.model, splits.arrays["validation"], enabled=config.calibrate
    )
    images, labels = splits.arrays["test"]
    probabilities = outcome.model.predict(images, verbose=0)  # as served: calibrated
    report = evaluate_predictions(probabilities, labels, classes)
    report["calibration"] = with_test_effect(calibration, probabilities, labels)
    if teacher is not None:
        report["distillation"] = compare_with_teacher(
            teacher, outcome.model, (images, labels), probabilities
        )
    activate, reason = _compare_with_active(
        registry, request, classes, (images, labels), probabilities
    )
    if request.retrain_of is not None:
        activate, reason = (
            False,
            (
                "a retrain is never activated on its own (activate it, or let a canary decide); "
                f"the gate would say: {reason}"
            ),
        )
    staged = staging_dir(registry, request.model)
    outcome.model.save(staged / "model.keras")
    _keep_samples(staged, splits.arrays["train"][0], (images, labels), config.seed)
    (staged / "evaluation.json").write_text(json.dumps(report, indent=2))
    reference = reference_from_predictions(probabilities, classes)
    (staged / REFERENCE_FILE).write_text(json.dumps(reference))
    plot_training_curves(outcome.history, staged / "training_curves.png", outcome.phase_boundary)
    plot_confusion_matrix(report["confusion_matrix"], classes, staged / "confusion_matrix.png")
    plot_roc_curves(probabilities, labels, classes, staged / "roc.png")
    plot_reliability_diagram(report["reliability"], report["ece"], staged / "reliability.png")
    (staged / TENSORBOARD_FILE).write_bytes(tensorboard_zip)
    dataset_record = {
        "name": split_model_id(dataset.dataset)[1],
        "version": dataset.version,
        "fingerprint": dataset.fingerprint,
    }
    training = {
        "base": request.base,
        "params": asdict(config),
        "auto": auto,
        **_search_record(request, outcome, teacher),
        "dataset": dataset_record,
        "dataset_fingerprint": dataset.fingerprint,
        "split_sizes": {k: len(v) for k, v in splits.layout.splits.items()},
        "split_given": splits.layout.split_given,
        "skipped_images": (ingested or {}).get("skipped_images", []) + splits.skipped,
        "history": outcome.history,
        "phase_seconds": outcome.phase_seconds,
    }
    summary = ("accuracy", "top_k_accuracy", "top_k", "macro_avg", "weighted_avg", "macro_auc")
    metrics = {k: report[k] for k in (*summary, "ece", "mce", "calibration")}
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
    ended_canary = registry.canary(request.model) if activate else None
    if activate:
        registry.activate(request.model, version.version)  # ends a running canary
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
        "dataset": {**dataset_record, **_ingest_counts(ingested, dataset)},
        **_what_is_new(request, datasets, dataset),
        "skipped_images": training["skipped_images"],
        "training": {
            "params": asdict(config),
            "auto": auto,
            **_search_record(request, outcome, teacher),
        },
        "artifacts": list(ARTIFACTS),
        "ended_canary": ended_canary["version"] if ended_canary else None,
    }


def _search_record(
    request: FinetuneRequest, outcome: TrainingOutcome, teacher: Teacher | None
) -> dict[str, Any]:
    """A budget's trials and a teacher, as recorded with the version and in the result."""
    record: dict[str, Any] = {}
    if request.budget_s is not None:
        record["budget_s"] = request.budget_s
        record["trials"] = [trial.document() for trial in outcome.trials]
    if teacher is not None:
        record["teacher"] = teacher.reference
    return record


def _ingest_counts(ingested: dict[str, Any] | None, dataset: DatasetVersion) -> dict[str, Any]:
    """The version's sizes, and what storing the upload did (nothing without an upload)."""
    keys = ("added", "duplicated", "relabelled", "removed", "skipped")
    counts = {key: (ingested or {}).get(key, 0) for key in keys}
    return {"images": len(dataset.images), "classes": dataset.classes, **counts}


def _what_is_new(
    request: FinetuneRequest, datasets: DatasetStore, dataset: DatasetVersion
) -> dict[str, Any]:
    """For a retrain: the images added since the dataset version its parent was trained on."""
    if request.retrain_of is None:
        return {}
    since = request.retrain_of.get("parent_dataset_version")
    return {
        "retrain": {
            **request.retrain_of,
            "new_images": datasets.additions(dataset.dataset, since, dataset.version),
        }
    }
