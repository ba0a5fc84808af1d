"""Turning an uploaded archive into the next version of a stored dataset.

An upload either *replaces* the dataset's images (the upload alone is the next version, as a
fine-tune always trained on exactly its archive) or is *appended* to the latest version. Every
readable image is stored once by its SHA-256; the same bytes uploaded again are counted as a
duplicate, or as a relabel when they come with another class. Files that do not decode are
skipped and reported, as training always did. The version's splits come from
``ml.dataset_splits``, so images already in the dataset keep theirs.

Limits are checked before an image is written, and the class-size rules are checked on the
version the upload makes, not on the upload: an append may bring one new class, or a few more
images of an old one.

Pillow only, no TensorFlow: ingest jobs run without loading a model.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ml.archive import ArchiveLimits, extract_archive
from ml.dataset_splits import assign_splits, check_trainable, class_counts
from ml.dataset_store import DatasetStore, DatasetVersion, image_hash
from ml.datasets import LabelledFiles, labelled_files, split_shares
from ml.errors import DatasetLimitExceeded, ImagePurged, ImgqError
from ml.preprocess import ImageLimits, check_image
from ml.registry import split_model_id

SPLIT_FRACTIONS = (0.7, 0.2, 0.1)
"""Train, validation and test shares of images that come without a split."""


class DataMode(StrEnum):
    """How an upload makes the dataset's next version."""

    REPLACE = "replace"
    """The upload alone is the next version."""
    APPEND = "append"
    """The upload is added to the latest version."""


@dataclass(frozen=True)
class DatasetLimits:
    """Bounds of one dataset, all its versions together."""

    max_images: int
    """Most images in one version."""
    max_store_bytes: int
    """Most bytes of images (every version's) on the store."""


@dataclass(frozen=True)
class IngestRequest:
    """An archive to store as a dataset's next version, and the rules it must follow."""

    dataset: str
    archive: Path
    mode: DataMode
    seed: int
    """Split seed of a new dataset (an existing one keeps its own)."""
    by: str
    details: dict[str, Any]
    min_images_per_class: int
    archive_limits: ArchiveLimits
    image_limits: ImageLimits
    dataset_limits: DatasetLimits


@dataclass
class _Upload:
    """The readable images of an upload, once each, and what was left out."""

    labels: dict[str, str]  # hash -> class
    folders: dict[str, str]  # hash -> split folder (validation/ or test/ only)
    paths: dict[str, Path]  # hash -> file
    repeated: int
    skipped: list[dict[str, str]]


def _read_upload(
    root: Path, listing: LabelledFiles, request: IngestRequest, purged: set[str]
) -> _Upload:
    upload = _Upload({}, {}, {}, 0, [])
    for path, name, folder in listing.images:
        image_bytes = (root / path).read_bytes()
        image = image_hash(image_bytes)
        try:
            check_image(image_bytes, request.image_limits)
            if image in purged:
                raise ImagePurged("The image was purged from this dataset; it is not taken back.")
        except ImgqError as exc:
            upload.skipped.append({"path": path, "code": exc.code, "message": exc.message})
            continue
        if image in upload.labels:
            upload.repeated += 1
            continue
        upload.labels[image], upload.paths[image] = name, root / path
        if folder in ("validation", "test"):
            upload.folders[image] = folder
    return upload


def _check_limits(
    store: DatasetStore, request: IngestRequest, upload: _Upload, images: int
) -> None:
    limits = request.dataset_limits
    if images > limits.max_images:
        raise DatasetLimitExceeded(
            f"The dataset would hold {images} images; the limit is {limits.max_images}.",
            {"images": images, "limit": limits.max_images},
        )
    new_bytes = sum(
        path.stat().st_size
        for image, path in upload.paths.items()
        if not store.has_image(request.dataset, image)
    )
    total = store.storage_bytes(request.dataset) + new_bytes
    if total > limits.max_store_bytes:
        raise DatasetLimitExceeded(
            f"The dataset would take {total} bytes on the store; the limit is "
            f"{limits.max_store_bytes}.",
            {"bytes": total, "limit": limits.max_store_bytes},
        )


def _next_images(latest: DatasetVersion | None, upload: _Upload, mode: DataMode) -> dict[str, str]:
    base = latest.images if latest is not None and mode is DataMode.APPEND else {}
    return {**{image: label for image, (label, _) in base.items()}, **upload.labels}


def _counts(
    latest: DatasetVersion | None, upload: _Upload, labels: dict[str, str]
) -> dict[str, int]:
    before = latest.images if latest is not None else {}
    relabelled = sum(
        1 for i, label in upload.labels.items() if i in before and before[i][0] != label
    )
    kept = sum(1 for image in upload.labels if image in before)
    return {
        "added": len(upload.labels) - kept,
        "duplicated": kept - relabelled + upload.repeated,
        "relabelled": relabelled,
        "removed": sum(1 for image in before if image not in labels),
        "skipped": len(upload.skipped),
    }


def ingest_archive(store: DatasetStore, request: IngestRequest, scratch: Path) -> dict[str, Any]:
    """Store an archive's images and write the dataset's next version.

    Args:
        store: the dataset store.
        request: the archive, the dataset and the rules.
        scratch: a local folder to unpack the archive in.

    Returns:
        The ingest result: the new version's number, its image and class counts, and how many
        images were added, duplicated, relabelled, removed (by a replacement) and skipped,
        with the skipped files and why.

    Raises:
        InvalidArchive, ArchiveTooLarge: the archive is unsafe or too large.
        InvalidDataset: the version would break the class-size rules.
        DatasetLimitExceeded: the dataset would grow past its limits.
    """
    work = Path(tempfile.mkdtemp(prefix="ingest-", dir=scratch))
    try:
        written = extract_archive(request.archive, work, request.archive_limits)
        listing = labelled_files([path.relative_to(work).as_posix() for path in written])
        upload = _read_upload(work, listing, request, store.purged(request.dataset))
        latest = store.latest(request.dataset)
        _check_limits(store, request, upload, len(_next_images(latest, upload, request.mode)))
        for path in upload.paths.values():
            store.put_image(request.dataset, path.read_bytes())
        shares = split_shares(
            set(listing.pools) if listing.split_given else {"train"}, SPLIT_FRACTIONS
        )
        counts: dict[str, int] = {}

        def make(latest: DatasetVersion | None, number: int) -> DatasetVersion:
            labels = _next_images(latest, upload, request.mode)
            _check_limits(store, request, upload, len(labels))
            seed = latest.seed if latest is not None else request.seed
            splits = assign_splits(
                labels,
                known=store.known_splits(request.dataset),
                given=upload.folders,
                shares=shares,
                seed=seed,
            )
            entries = {image: (label, splits[image]) for image, label in labels.items()}
            check_trainable(class_counts(entries), request.min_images_per_class)
            counts.update(_counts(latest, upload, labels))
            return DatasetVersion(
                request.dataset,
                number,
                time.time(),
                latest.version if latest is not None and request.mode is DataMode.APPEND else None,
                "upload",
                seed,
                entries,
                request.by,
                {
                    **request.details,
                    "data_mode": request.mode.value,
                    "split_given": listing.split_given,
                },
            )

        version = store.commit(request.dataset, make)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "dataset": split_model_id(request.dataset)[1],
        "version": version.version,
        "images": len(version.images),
        "classes": version.classes,
        "fingerprint": version.fingerprint,
        **counts,
        "skipped_images": upload.skipped,
    }
