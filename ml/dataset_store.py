"""Datasets on the model store: images kept once by content, versions as immutable manifests.

Layout, one directory per dataset (``<dataset>`` is an id like a model's, ``@alice/shop``)::

    <store>/_datasets/<dataset>/images/<h[:2]>/<h>     # image bytes, named by their SHA-256
    <store>/_datasets/<dataset>/versions/000003.json   # manifest: hash -> (label, split)
    <store>/_datasets/<dataset>/retired/000002.json    # a deleted version (holds no file
                                                       # once the sweep's grace has passed)
    <store>/_datasets/<dataset>/purged/<h>             # bytes removed for good, on request
    <store>/_datasets/<dataset>/held/<h>               # kept until then for feedback (retain)

A version never changes once written, and its number is claimed by creating its manifest
(``os.link`` on a local disk fails when the number is taken), so two jobs adding to one dataset
at once make two versions, each from the one before. Image files are shared by every version
that holds them and are only removed by ``sweep``: an image no manifest refers to any more is
removed once it is older than a grace period, and a deleted version's manifest still counts
for that long, so a job reading a version it resolved a moment ago never loses a file. A
*purged* image is different: its bytes go at once, for good, and every version that held it
reads it as purged (the marker is outside the manifests, which never change).

Same fsspec store as the model registry, so a shared volume or a bucket serves several
machines. No TensorFlow here: the API reads datasets with this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ml.dataset_splits import ClassCounts, class_counts
from ml.errors import DatasetNotFound, DatasetVersionNotFound, ImageNotFound, ImagePurged
from ml.registry import MODEL_ID, namespace_prefix, split_model_id
from ml.store_files import StoreFiles

DATASETS_DIR = "_datasets"
"""Top folder of the datasets on the store (not a model name, not a namespace)."""
IMAGE_HASH = re.compile(r"^[0-9a-f]{64}$")
"""An image's name: the hex SHA-256 of its bytes."""
SOURCES = ("upload", "feedback", "edit")
"""What made a version: an uploaded archive, predictions' feedback, an edit of one image."""


def image_hash(image_bytes: bytes) -> str:
    """The name of an image on the store: the hex SHA-256 of its bytes."""
    return hashlib.sha256(image_bytes).hexdigest()


@dataclass(frozen=True)
class DatasetVersion:
    """One immutable version of a dataset.

    Attributes:
        dataset: the dataset's id (``@alice/shop``).
        version: its number, from 1.
        created_at: Unix time it was written.
        parent: the version it was made from (None for a first version or a replacement).
        source: one of ``SOURCES``.
        seed: the dataset's split seed (copied from version to version).
        images: image hash -> ``(label, split)``.
        by: the client that made it.
        details: what made it (the job id, the edit).
    """

    dataset: str
    version: int
    created_at: float
    parent: int | None
    source: str
    seed: int
    images: dict[str, tuple[str, str]]
    by: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> ClassCounts:
        """Class -> split -> number of images."""
        return class_counts(self.images)

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 over the sorted ``(hash, label, split)`` records: what a model saw."""
        digest = hashlib.sha256()
        for image, (label, split) in sorted(self.images.items()):
            digest.update(f"{image}\0{label}\0{split}\n".encode())
        return digest.hexdigest()

    def summary(self) -> dict[str, Any]:
        """The version as ``GET /datasets/<name>`` lists it."""
        return {
            "version": self.version,
            "created_at": self.created_at,
            "parent": self.parent,
            "source": self.source,
            "images": len(self.images),
            "classes": self.classes,
            "fingerprint": self.fingerprint,
            "by": self.by,
        }

    def to_json(self) -> str:
        """The manifest as stored."""
        return json.dumps(
            {
                "version": self.version,
                "created_at": self.created_at,
                "parent": self.parent,
                "source": self.source,
                "seed": self.seed,
                "by": self.by,
                "details": self.details,
                "images": {image: list(entry) for image, entry in sorted(self.images.items())},
            }
        )

    @classmethod
    def from_json(cls, dataset: str, text: str) -> DatasetVersion:
        """Read a stored manifest."""
        raw = json.loads(text)
        images = {image: (label, split) for image, (label, split) in raw["images"].items()}
        return cls(
            dataset,
            raw["version"],
            raw["created_at"],
            raw["parent"],
            raw["source"],
            raw["seed"],
            images,
            raw.get("by", ""),
            raw.get("details", {}),
        )


def _manifest_name(version: int) -> str:
    return f"{version:06d}.json"


class DatasetStore(StoreFiles):
    """Reads and writes datasets on the store shared by every process.

    Args:
        store: a local path or an ``fsspec`` URL (the model store).
    """

    def _dir(self, dataset: str, *parts: str) -> str:
        if not MODEL_ID.match(dataset) or not dataset.startswith("@"):
            raise DatasetNotFound(f"No dataset named {dataset!r}.", {"dataset": dataset})
        return self._path(DATASETS_DIR, dataset, *parts)

    def _image_path(self, dataset: str, image: str) -> str:
        if not IMAGE_HASH.match(image):
            raise ImageNotFound(f"No image {image!r} in the dataset.", {"image": image})
        return self._dir(dataset, "images", image[:2], image)

    # --- reading ----------------------------------------------------------------------------

    def datasets(self, namespace: str | None = None) -> list[str]:
        """Ids of every dataset with a version, or of those in one namespace."""
        prefixes = (
            [namespace_prefix(namespace)]
            if namespace is not None
            else [n for n in self._children(self._path(DATASETS_DIR)) if n.startswith("@")]
        )
        found: list[str] = []
        for prefix in prefixes:
            names = self._children(self._path(DATASETS_DIR, prefix))
            ids = (f"{prefix}/{name}" for name in names)
            found.extend(d for d in ids if MODEL_ID.match(d) and self.exists(d))
        return found

    def _numbers(self, dataset: str, folder: str) -> list[int]:
        names = self._children(self._dir(dataset, folder))
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def exists(self, dataset: str) -> bool:
        """Whether the dataset has a version."""
        return MODEL_ID.match(dataset) is not None and bool(self._numbers(dataset, "versions"))

    def versions(self, dataset: str) -> list[int]:
        """The dataset's versions, oldest first.

        Raises:
            DatasetNotFound: it has none.
        """
        numbers = self._numbers(dataset, "versions")
        if not numbers:
            _, name = split_model_id(dataset)
            raise DatasetNotFound(f"No dataset named {name!r}.", {"dataset": name})
        return numbers

    def latest(self, dataset: str) -> DatasetVersion | None:
        """The newest version, or None for a dataset that has none."""
        numbers = self._numbers(dataset, "versions")
        return self.get(dataset, numbers[-1]) if numbers else None

    def get(self, dataset: str, version: int | None = None) -> DatasetVersion:
        """One version (default: the latest).

        Raises:
            DatasetNotFound: no such dataset.
            DatasetVersionNotFound: the dataset has no such version.
        """
        number = self.versions(dataset)[-1] if version is None else version
        text = self._read(self._dir(dataset, "versions", _manifest_name(number)))
        if text is None:
            self.versions(dataset)
            _, name = split_model_id(dataset)
            raise DatasetVersionNotFound(
                f"Dataset {name!r} has no version {number}.", {"dataset": name, "version": number}
            )
        return DatasetVersion.from_json(dataset, text)

    def _every_manifest(self, dataset: str) -> Iterator[tuple[DatasetVersion, float | None]]:
        """Every version, live and retired, with the time it was retired (None: live)."""
        for folder in ("versions", "retired"):
            for number in self._numbers(dataset, folder):
                text = self._read(self._dir(dataset, folder, _manifest_name(number)))
                if text is not None:
                    retired_at = json.loads(text).get("retired_at") if folder == "retired" else None
                    yield DatasetVersion.from_json(dataset, text), retired_at

    def additions(self, dataset: str, since: int | None, version: int) -> dict[str, Any]:
        """What ``version`` holds that version ``since`` did not: how many images, per class,
        and per source of the version that first brought each (``upload``, ``feedback``...)."""
        target = self.get(dataset, version)
        before: set[str] = set()
        for manifest, _ in self._every_manifest(dataset):
            if manifest.version == since:
                before = set(manifest.images)
        new = [image for image in target.images if image not in before]
        sources: dict[str, str] = {}
        sources_at: dict[str, int] = {}
        for manifest, _ in self._every_manifest(dataset):
            if (since or 0) < manifest.version <= version:
                for image in manifest.images:
                    if image not in sources or manifest.version < sources_at.get(image, version):
                        sources[image], sources_at[image] = manifest.source, manifest.version
        return {
            "since_version": since,
            "images": len(new),
            "per_class": dict(sorted(Counter(target.images[i][0] for i in new).items())),
            "per_source": dict(sorted(Counter(sources.get(i, target.source) for i in new).items())),
        }

    def known_splits(self, dataset: str) -> dict[str, str]:
        """Image hash -> split, for every image any version of the dataset has held."""
        known: dict[str, str] = {}
        for manifest, _ in self._every_manifest(dataset):
            for image, (_, split) in manifest.images.items():
                known.setdefault(image, split)
        return known

    def purged(self, dataset: str) -> set[str]:
        """Hashes of the images whose bytes were purged."""
        return {n for n in self._children(self._dir(dataset, "purged")) if IMAGE_HASH.match(n)}

    def has_image(self, dataset: str, image: str) -> bool:
        """Whether the image's bytes are on the store."""
        return bool(self.fs.exists(self._image_path(dataset, image)))

    def read_image(self, dataset: str, image: str) -> bytes:
        """An image's bytes.

        Raises:
            ImagePurged: its bytes were purged.
            ImageNotFound: no such image.
        """
        found = self._read_bytes(self._image_path(dataset, image))
        if found is not None:
            return found
        if self.fs.exists(self._dir(dataset, "purged", image)):
            raise ImagePurged(f"Image {image} was purged.", {"image": image})
        raise ImageNotFound(f"No image {image} in the dataset.", {"image": image})

    def storage_bytes(self, dataset: str) -> int:
        """Bytes the dataset takes on the store: images and manifests."""
        return self._bytes_under(self._dir(dataset))

    # --- writing ----------------------------------------------------------------------------

    def put_image(self, dataset: str, image_bytes: bytes) -> tuple[str, bool]:
        """Store an image once; returns its hash and whether it was new to the store."""
        image = image_hash(image_bytes)
        path = self._image_path(dataset, image)
        if self.fs.exists(path):
            return image, False
        self._write(path, image_bytes)
        return image, True

    def hold(self, dataset: str, image_bytes: bytes, until: float) -> str:
        """Store an image that no version holds yet and keep it from the sweep until
        ``until`` (a predict job's retained image, waiting for feedback); returns its hash."""
        image, _ = self.put_image(dataset, image_bytes)
        marker = self._dir(dataset, "held", image)
        earlier = self._read(marker)
        self._write(marker, f"{max(until, float(earlier or 0))}\n")
        return image

    def _held(self, dataset: str, now: float) -> set[str]:
        """Hashes held past ``now``; markers that ran out are removed."""
        held = set()
        for image in self._children(self._dir(dataset, "held")):
            until = float(self._read(self._dir(dataset, "held", image)) or 0)
            if until > now:
                held.add(image)
            else:
                self.fs.rm_file(self._dir(dataset, "held", image))
        return held

    def namespace_bytes(self, namespace: str) -> int:
        """Bytes every dataset of a namespace takes, images held for feedback included."""
        return self._bytes_under(self._path(DATASETS_DIR, namespace_prefix(namespace)))

    def commit(
        self, dataset: str, make: Callable[[DatasetVersion | None, int], DatasetVersion]
    ) -> DatasetVersion:
        """Write the dataset's next version, made by ``make(latest version, number)``.

        When another writer claims the number first, ``make`` is called again with the new
        latest version, so an addition is never made from a stale version.
        """
        while True:
            taken = self._numbers(dataset, "versions") + self._numbers(dataset, "retired")
            number = max(taken, default=0) + 1
            latest = self.latest(dataset)
            version = make(latest, number)
            if self._claim(self._dir(dataset, "versions", _manifest_name(number)), version):
                return version

    def _claim(self, path: str, version: DatasetVersion) -> bool:
        if not self.is_local:
            if self.fs.exists(path):
                return False
            self.fs.pipe_file(path, version.to_json().encode())  # the store cannot arbitrate
            return True
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=target.parent, prefix=".claim-", delete=False
        ) as handle:
            handle.write(version.to_json())
        try:
            os.link(handle.name, target)  # fails if the number is taken
        except FileExistsError:
            return False
        finally:
            os.unlink(handle.name)
        return True

    def retire(self, dataset: str, version: int, now: float | None = None) -> None:
        """Delete a version: it leaves the list at once; its images stay until the sweep."""
        manifest = self.get(dataset, version)
        record = {**json.loads(manifest.to_json()), "retired_at": now or time.time()}
        self._write(self._dir(dataset, "retired", _manifest_name(version)), json.dumps(record))
        self.fs.rm_file(self._dir(dataset, "versions", _manifest_name(version)))

    def purge(self, dataset: str, image: str, now: float | None = None) -> None:
        """Remove an image's bytes for good; every version that held it now reads it purged."""
        path = self._image_path(dataset, image)  # ImageNotFound for a name that is no hash
        self._write(self._dir(dataset, "purged", image), f"{now or time.time()}\n")
        if self.fs.exists(path):
            self.fs.rm_file(path)

    def delete(self, dataset: str) -> None:
        """Remove a dataset: every version and image."""
        self.versions(dataset)
        self._remove(self._dir(dataset))

    def _image_files(self, dataset: str) -> Iterator[tuple[str, str]]:
        for prefix in self._children(self._dir(dataset, "images")):
            for image in self._children(self._dir(dataset, "images", prefix)):
                if IMAGE_HASH.match(image):
                    yield image, self._dir(dataset, "images", prefix, image)

    def sweep(self, dataset: str, grace_s: float, now: float | None = None) -> list[str]:
        """Remove the images no version refers to, once ``grace_s`` old.

        An image just written by a job that has not committed its version yet, and an image
        of a version deleted a moment ago that a job may still be reading, are both younger
        than the grace period and stay.

        Returns:
            The hashes of the images removed.
        """
        now = time.time() if now is None else now
        referenced = self._held(dataset, now)
        for manifest, retired_at in self._every_manifest(dataset):
            # A retired manifest stays (it is small): its number is never reused and its
            # images keep their splits if uploaded again; past the grace it holds no file.
            if retired_at is None or retired_at >= now - grace_s:
                referenced.update(manifest.images)
        removed = []
        for image, path in self._image_files(dataset):
            if image not in referenced and self.fs.modified(path).timestamp() < now - grace_s:
                self.fs.rm_file(path)
                removed.append(image)
        return removed

    def sweep_all(self, grace_s: float) -> dict[str, int]:
        """``sweep`` every dataset (those that only hold images for feedback too); returns the
        number of images removed per dataset id."""
        found = [
            f"{prefix}/{name}"
            for prefix in self._children(self._path(DATASETS_DIR))
            if prefix.startswith("@")
            for name in self._children(self._path(DATASETS_DIR, prefix))
        ]
        return {d: len(self.sweep(d, grace_s)) for d in found if MODEL_ID.match(d)}
