"""Dataset archives uploaded to the API: saved for a worker, and checked before a job exists.

Everything that can be known from an archive's listing (unsafe members, bombs, images outside
class folders, a class too small for the version the upload would make, a dataset grown past
its limits) is refused with a 4xx before any job exists; unreadable images can only be found
by decoding, so the worker skips and reports those.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from flask import request

from api.services import services
from imgq.errors import DatasetLimitExceeded, InvalidDataset, InvalidRequest
from ml.archive import ArchiveLimits, hash_files, list_archive
from ml.dataset_ingest import DataMode
from ml.datasets import labelled_files, layout_from_paths

ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz", ".tar")
"""Archive formats accepted as ``dataset``."""
DATASET_PART = "dataset"
"""Name of the multipart file part that carries the archive."""


def has_upload() -> bool:
    """Whether the request carries a ``dataset`` file part."""
    part = request.files.get(DATASET_PART)
    return part is not None and bool(part.filename)


def save_upload(job_id: str) -> tuple[Path, str]:
    """Stream the ``dataset`` part to the upload folder; returns its path and SHA-256."""
    part = request.files.get(DATASET_PART)
    if part is None or not part.filename:
        raise InvalidRequest("No `dataset` file part: send the dataset archive as `dataset`.")
    name = part.filename.lower()
    suffix = next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise InvalidRequest(
            f"`dataset` must be one of {list(ARCHIVE_SUFFIXES)}; got {part.filename!r}."
        )
    upload_dir = services().settings.upload_dir
    upload_dir.mkdir(parents=True, exist_ok=True)
    path = upload_dir / f"{job_id}{suffix}"
    digest = hashlib.sha256()
    with path.open("wb") as target:
        while chunk := part.stream.read(1 << 20):
            digest.update(chunk)
            target.write(chunk)
    return path, digest.hexdigest()


def check_upload(archive: Path, dataset: str, mode: DataMode, seed: int) -> None:
    """Refuse an upload whose listing cannot make a trainable version of ``dataset``.

    A replacement must be a whole dataset by itself, as a fine-tune's upload always was. An
    addition is judged with the latest version: classes and their sizes together (the splits
    are only known once the worker has hashed the images). The dataset's limits are judged
    on the version the upload would make: an upload that may pass one (counting every file as
    new) has its files hashed here, so that images the dataset holds already count once.

    Raises:
        InvalidArchive, ArchiveTooLarge, InvalidDataset, DatasetLimitExceeded.
    """
    settings = services().settings
    limits = ArchiveLimits(
        settings.max_dataset_entries,
        settings.max_dataset_unpacked_bytes,
        settings.max_dataset_ratio,
    )
    paths = list_archive(archive, limits)
    latest = services().datasets.latest(dataset) if mode is DataMode.APPEND else None
    if latest is None:
        layout_from_paths(paths, settings.min_images_per_class, seed)
    listing = labelled_files(paths)
    if latest is not None:
        counts = Counter(label for label, _ in latest.images.values())
        _check_union(
            counts + Counter(name for _, name, _ in listing.images), settings.min_images_per_class
        )
    kept = set(latest.images) if latest is not None else set()
    _check_limits(dataset, kept, {path for path, _, _ in listing.images}, archive, limits)


def _check_union(counts: Counter[str], minimum: int) -> None:
    short = {name: count for name, count in counts.items() if count < minimum}
    if len(counts) < 2 or short:
        raise InvalidDataset(
            "With the upload, the dataset would need at least two classes of "
            f"{minimum} images each.",
            {"classes": dict(sorted(counts.items())), "short": short, "minimum": minimum},
        )


def _check_limits(
    dataset: str, kept: set[str], images: set[str], archive: Path, limits: ArchiveLimits
) -> None:
    """The version's image count and the dataset's bytes against their limits.

    ``kept`` are the hashes the version keeps from the latest one; ``images`` the upload's
    image files. The bound that counts every file as new is free; only when it fails are the
    files hashed for the exact figures.
    """
    settings = services().settings
    store = services().datasets
    stored = store.storage_bytes(dataset)
    count, new_bytes = len(kept) + len(images), archive.stat().st_size
    if count > settings.max_dataset_images or stored + new_bytes > settings.max_dataset_store_bytes:
        sizes = dict(hash_files(archive, images, limits).values())  # hash -> bytes
        count = len(kept | set(sizes))
        new_bytes = sum(
            size for image, size in sizes.items() if not store.has_image(dataset, image)
        )
    if count > settings.max_dataset_images:
        raise DatasetLimitExceeded(
            f"The dataset would hold {count} images; the limit is {settings.max_dataset_images}.",
            {"images": count, "limit": settings.max_dataset_images},
        )
    if stored + new_bytes > settings.max_dataset_store_bytes:
        raise DatasetLimitExceeded(
            f"The dataset takes {stored} bytes on the store; with this upload it would pass "
            f"the limit of {settings.max_dataset_store_bytes}.",
            {"bytes": stored, "upload_bytes": new_bytes, "limit": settings.max_dataset_store_bytes},
        )
