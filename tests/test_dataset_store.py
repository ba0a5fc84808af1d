"""Stored datasets: stable splits, ingest counts and limits, immutable versions, sweep, purge.

Fast unit tests of ``ml.dataset_splits``, ``ml.dataset_store`` and ``ml.dataset_ingest`` on a
local store under ``tmp_path``: no Redis, no Celery, no TensorFlow.
"""

from __future__ import annotations

import functools
import io
import json
import time
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.archive import ArchiveLimits
from ml.dataset_ingest import (
    SPLIT_FRACTIONS,
    DataMode,
    DatasetLimits,
    IngestRequest,
    ingest_archive,
)
from ml.dataset_splits import assign_splits, check_trainable, class_counts, hash_split
from ml.dataset_store import DatasetStore, DatasetVersion, image_hash
from ml.datasets import SPLITS, split_shares
from ml.errors import (
    DatasetLimitExceeded,
    DatasetNotFound,
    ImageNotFound,
    ImagePurged,
    InvalidDataset,
)
from ml.preprocess import ImageLimits
from ml.registry import model_id
from tests.support.datasets import make_dataset_zip, zip_archive
from tests.support.images import jpeg_bytes

ARCHIVE_LIMITS = ArchiveLimits(1000, 10**9, 200.0)
IMAGE_LIMITS = ImageLimits(10**7, 10**8)
DATASET_LIMITS = DatasetLimits(1000, 10**9)
MIN_IMAGES = 5
SHOP = model_id("alice", "shop")
SHARES = split_shares({"train"}, SPLIT_FRACTIONS)
"""The shares of an upload without split folders."""


@functools.cache
def _base_zip() -> bytes:
    """30 images: 10 each of cat, coffee and rocket (built once, it takes a third of a second)."""
    return make_dataset_zip(per_class=10)


def _entries(archive: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(archive)) as opened:
        return {name: opened.read(name) for name in opened.namelist()}


def _base_bytes(image: str) -> bytes:
    """The bytes of an image of ``_base_zip``, by hash."""
    for image_bytes in _entries(_base_zip()).values():
        if image_hash(image_bytes) == image:
            return image_bytes
    raise AssertionError(image)


def _new_images(count: int, seed: int) -> list[bytes]:
    """``count`` small noise JPEGs, none equal to another or to a crop of ``make_dataset_zip``."""
    rng = np.random.default_rng(1000 + seed)
    return [jpeg_bytes(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)) for _ in range(count)]


def _class_files(name: str, images: list[bytes], prefix: str = "") -> dict[str, bytes]:
    return {f"{prefix}{name}/new-{index:03d}.jpg": image for index, image in enumerate(images)}


@pytest.fixture
def store(tmp_path: Path) -> DatasetStore:
    return DatasetStore(tmp_path / "store")


def _ingest(
    store: DatasetStore,
    tmp_path: Path,
    archive: bytes,
    mode: DataMode,
    *,
    dataset: str = SHOP,
    seed: int = 0,
    limits: DatasetLimits = DATASET_LIMITS,
) -> dict[str, Any]:
    path = tmp_path / f"upload-{uuid.uuid4().hex}.zip"
    path.write_bytes(archive)
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    request = IngestRequest(
        dataset,
        path,
        mode,
        seed,
        "alice",
        {"job": "test"},
        MIN_IMAGES,
        ARCHIVE_LIMITS,
        IMAGE_LIMITS,
        limits,
    )
    return ingest_archive(store, request, scratch)


def _first_version(store: DatasetStore, tmp_path: Path, dataset: str = SHOP) -> DatasetVersion:
    result = _ingest(store, tmp_path, _base_zip(), DataMode.REPLACE, dataset=dataset)
    assert result["version"] == 1
    return store.get(dataset, 1)


def _hashes(version: DatasetVersion, label: str, split: str) -> list[str]:
    return sorted(
        h for h, (name, where) in version.images.items() if (name, where) == (label, split)
    )


def _image_files(store: DatasetStore, tmp_path: Path, dataset: str = SHOP) -> list[Path]:
    folder = tmp_path / "store" / "_datasets" / dataset / "images"
    return sorted(path for path in folder.rglob("*") if path.is_file())


def _version(
    number: int, latest: DatasetVersion | None, images: dict[str, tuple[str, str]], **kw: Any
) -> DatasetVersion:
    return DatasetVersion(
        kw.pop("dataset", SHOP),
        number,
        time.time(),
        latest.version if latest is not None else None,
        kw.pop("source", "edit"),
        kw.pop("seed", 0),
        images,
        **kw,
    )


def _fake_hash(text: str) -> str:
    return image_hash(text.encode())


# --- ml.dataset_splits ----------------------------------------------------------------------


def test_hash_split_is_deterministic_and_follows_the_shares() -> None:
    hashes = [_fake_hash(str(index)) for index in range(2000)]
    splits = [hash_split(h, 3, SHARES) for h in hashes]
    assert splits == [hash_split(h, 3, SHARES) for h in hashes]
    for split, share in SHARES.items():
        assert abs(splits.count(split) / len(hashes) - share) < 0.04
    assert {hash_split(h, 3, {"train": 1.0}) for h in hashes} == {"train"}


def test_assign_splits_gives_the_same_splits_for_the_same_images_and_seed_in_any_order() -> None:
    labels = {_fake_hash(f"{name}{i}"): name for name in ("a", "b", "c") for i in range(12)}
    reordered = dict(reversed(list(labels.items())))
    first = assign_splits(labels, known={}, given={}, shares=SHARES, seed=7)
    assert set(first) == set(labels)
    assert first == assign_splits(reordered, known={}, given={}, shares=SHARES, seed=7)


def test_another_seed_places_hash_placed_images_differently_and_keeps_known_ones() -> None:
    known = {_fake_hash(f"known-{split}"): split for split in SPLITS}
    free = [_fake_hash(f"free-{i}") for i in range(40)]
    labels = dict.fromkeys([*known, *free], "a")
    one = assign_splits(labels, known=known, given={}, shares=SHARES, seed=1)
    two = assign_splits(labels, known=known, given={}, shares=SHARES, seed=2)
    assert all(one[h] == two[h] == split for h, split in known.items())
    assert all(one[h] == hash_split(h, 1, SHARES) for h in free)
    assert all(two[h] == hash_split(h, 2, SHARES) for h in free)
    assert [one[h] for h in free] != [two[h] for h in free]


def test_a_new_class_is_carved_with_one_image_at_least_in_every_split() -> None:
    labels = {_fake_hash(f"n{i}"): "new" for i in range(3)}
    splits = assign_splits(labels, known={}, given={}, shares=SHARES, seed=0)
    assert sorted(splits.values()) == sorted(SPLITS)


def test_a_class_missing_a_split_gets_its_next_images_there_first() -> None:
    known = {_fake_hash(f"t{i}"): "train" for i in range(5)}
    free = [_fake_hash("f1"), _fake_hash("f2")]
    labels = dict.fromkeys([*known, *free], "a")
    splits = assign_splits(labels, known=known, given={}, shares=SHARES, seed=0)
    assert sorted(splits[h] for h in free) == ["test", "validation"]


def test_given_split_folders_place_images_and_known_splits_win_over_them() -> None:
    seen, fresh = _fake_hash("seen"), _fake_hash("fresh")
    labels = {seen: "a", fresh: "a", _fake_hash("other"): "a"}
    splits = assign_splits(
        labels,
        known={seen: "train"},
        given={seen: "test", fresh: "test"},
        shares={"train": 0.8, "validation": 0.2},
        seed=0,
    )
    assert splits[seen] == "train"
    assert splits[fresh] == "test"


def test_class_counts_counts_every_split_of_every_class() -> None:
    entries = {
        "1": ("b", "train"),
        "2": ("b", "train"),
        "3": ("a", "test"),
        "4": ("b", "validation"),
    }
    assert class_counts(entries) == {
        "a": {"train": 0, "validation": 0, "test": 1},
        "b": {"train": 2, "validation": 1, "test": 0},
    }
    assert list(class_counts(entries)) == ["a", "b"]


def test_check_trainable_refuses_one_class_and_a_class_short_of_a_split() -> None:
    full = {"train": 3, "validation": 1, "test": 1}
    check_trainable({"a": full, "b": full}, 5)
    with pytest.raises(InvalidDataset, match="two classes"):
        check_trainable({"a": full}, 5)
    with pytest.raises(InvalidDataset) as raised:
        check_trainable({"a": full, "b": {"train": 5, "validation": 1, "test": 0}}, 5)
    assert raised.value.details == {
        "classes": {"b": {"train": 5, "validation": 1, "test": 0}},
        "minimum": 5,
    }
    with pytest.raises(InvalidDataset, match="'a' has too few"):
        check_trainable({"a": {"train": 2, "validation": 1, "test": 1}, "b": full}, 5)


# --- stable splits across versions -----------------------------------------------------------


def _grow_archive() -> bytes:
    """New cat and coffee images and a new class, dog, of six."""
    return zip_archive(
        {
            **_class_files("cat", _new_images(4, 1)),
            **_class_files("coffee", _new_images(3, 2)),
            **_class_files("dog", _new_images(6, 3)),
        }
    )


def test_every_image_of_a_version_keeps_its_split_after_an_append(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    result = _ingest(store, tmp_path, _grow_archive(), DataMode.APPEND)
    second = store.get(SHOP, result["version"])
    assert result["version"] == 2
    assert second.parent == 1
    assert len(second.images) == 30 + 13
    for image, entry in first.images.items():
        assert second.images[image] == entry
    assert store.known_splits(SHOP) == {h: split for h, (_, split) in second.images.items()}


def test_every_class_has_an_image_in_every_split_after_an_append_of_a_new_class(
    store: DatasetStore, tmp_path: Path
) -> None:
    _first_version(store, tmp_path)
    result = _ingest(store, tmp_path, _grow_archive(), DataMode.APPEND)
    classes = store.get(SHOP).classes
    assert set(classes) == {"cat", "coffee", "rocket", "dog"}
    assert result["classes"] == classes
    for name, per_split in classes.items():
        assert min(per_split.values()) >= 1, name
    assert sum(classes["dog"].values()) == 6


def test_the_same_uploads_and_seed_make_the_same_versions_in_another_store(
    tmp_path: Path,
) -> None:
    fingerprints = []
    for copy in ("one", "two"):
        store = DatasetStore(tmp_path / copy)
        _ingest(store, tmp_path, _base_zip(), DataMode.REPLACE, seed=5)
        _ingest(store, tmp_path, _grow_archive(), DataMode.APPEND, seed=5)
        fingerprints.append([store.get(SHOP, v).fingerprint for v in (1, 2)])
    assert fingerprints[0] == fingerprints[1]
    other = DatasetStore(tmp_path / "other-seed")
    _ingest(other, tmp_path, _base_zip(), DataMode.REPLACE, seed=6)
    assert other.get(SHOP, 1).fingerprint != fingerprints[0][0]


def test_an_appended_dataset_keeps_its_own_seed(store: DatasetStore, tmp_path: Path) -> None:
    _ingest(store, tmp_path, _base_zip(), DataMode.REPLACE, seed=5)
    _ingest(store, tmp_path, _grow_archive(), DataMode.APPEND, seed=99)
    assert store.get(SHOP, 2).seed == 5


def test_an_image_in_a_test_split_stays_in_test_after_an_append(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    (tested,) = _hashes(first, "cat", "test")
    again = store.read_image(SHOP, tested)
    # Sent again, in a train/ folder and under another class: it keeps its split.
    archive = zip_archive(
        {
            "train/rocket/again.jpg": again,
            **_class_files("cat", _new_images(3, 4), "train/"),
        }
    )
    result = _ingest(store, tmp_path, archive, DataMode.APPEND)
    assert result["relabelled"] == 1
    assert store.get(SHOP).images[tested] == ("rocket", "test")


# --- ingest counts ----------------------------------------------------------------------------


def test_an_append_counts_added_duplicated_relabelled_and_skipped_images(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    duplicate = _hashes(first, "cat", "train")[0]
    moved = _hashes(first, "coffee", "train")[0]
    new = _new_images(2, 5)
    archive = zip_archive(
        {
            "cat/duplicate.jpg": store.read_image(SHOP, duplicate),
            "rocket/moved.jpg": store.read_image(SHOP, moved),
            "cat/new-a.jpg": new[0],
            "cat/new-a-again.jpg": new[0],
            "cat/new-b.jpg": new[1],
            "cat/x.jpg": b"not an image",
        }
    )
    result = _ingest(store, tmp_path, archive, DataMode.APPEND)
    assert {k: result[k] for k in ("added", "duplicated", "relabelled", "removed", "skipped")} == {
        "added": 2,
        "duplicated": 2,  # one already stored, one twice in the upload
        "relabelled": 1,
        "removed": 0,
        "skipped": 1,
    }
    (skipped,) = result["skipped_images"]
    assert (skipped["path"], skipped["code"]) == ("cat/x.jpg", "invalid_image")
    second = store.get(SHOP, result["version"])
    assert result["images"] == len(second.images) == 32
    assert second.images[moved] == ("rocket", "train")
    assert second.images[duplicate] == ("cat", "train")
    assert {image_hash(b) for b in new} <= set(second.images)
    assert image_hash(b"not an image") not in second.images
    assert not store.has_image(SHOP, image_hash(b"not an image"))


def test_a_replacement_holds_only_the_upload_and_counts_what_it_removed(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    kept = {h: first.images[h] for h in sorted(first.images)[:4]}
    entries = {
        f"{label}/kept-{h[:8]}.jpg": store.read_image(SHOP, h) for h, (label, _) in kept.items()
    }
    for index, name in enumerate(("cat", "coffee", "rocket")):
        entries.update(_class_files(name, _new_images(6, 10 + index)))
    result = _ingest(store, tmp_path, zip_archive(entries), DataMode.REPLACE)
    second = store.get(SHOP, result["version"])
    uploaded = {image_hash(b) for b in entries.values()}
    assert set(second.images) == uploaded
    assert {k: result[k] for k in ("added", "duplicated", "relabelled", "removed")} == {
        "added": 18,
        "duplicated": 4,
        "relabelled": 0,
        "removed": 26,
    }
    for image, entry in kept.items():
        assert second.images[image] == entry
    assert store.get(SHOP, 1) == first  # the old version is untouched


def test_a_replacement_has_no_parent(store: DatasetStore, tmp_path: Path) -> None:
    """``DatasetVersion.parent``: "None for a first version or a replacement"."""
    _first_version(store, tmp_path)
    entries = {}
    for index, name in enumerate(("cat", "coffee")):
        entries.update(_class_files(name, _new_images(6, 20 + index)))
    result = _ingest(store, tmp_path, zip_archive(entries), DataMode.REPLACE)
    replacement = store.get(SHOP, result["version"])
    assert replacement.details["data_mode"] == "replace"
    assert replacement.parent is None, (
        f"a replacement is not made from version {replacement.parent}, yet records it as parent"
    )


# --- split folders ---------------------------------------------------------------------------


def test_split_folders_of_a_new_dataset_are_honoured(store: DatasetStore, tmp_path: Path) -> None:
    entries: dict[str, bytes] = {}
    for index, name in enumerate(("cat", "coffee")):
        images = _new_images(7, 30 + index)
        entries.update(_class_files(name, images[:4], "train/"))
        entries.update(_class_files(name, images[4:6], "validation/"))
        entries.update(_class_files(name, images[6:], "test/"))
    result = _ingest(store, tmp_path, zip_archive(entries), DataMode.REPLACE)
    version = store.get(SHOP, result["version"])
    for path, image_bytes in entries.items():
        split, name, _ = path.split("/")
        assert version.images[image_hash(image_bytes)] == (name, split), path
    assert version.details["split_given"] is True


def test_split_folders_of_an_append_are_honoured_for_new_images(
    store: DatasetStore, tmp_path: Path
) -> None:
    _first_version(store, tmp_path)
    entries: dict[str, bytes] = {}
    for index, name in enumerate(("cat", "rocket")):
        images = _new_images(9, 40 + index)
        entries.update(_class_files(name, images[:3], "train/"))
        entries.update(_class_files(name, images[3:6], "validation/"))
        entries.update(_class_files(name, images[6:], "test/"))
    result = _ingest(store, tmp_path, zip_archive(entries), DataMode.APPEND)
    version = store.get(SHOP, result["version"])
    assert result["added"] == 18
    for path, image_bytes in entries.items():
        split, name, _ = path.split("/")
        assert version.images[image_hash(image_bytes)] == (name, split), path


def test_a_test_folder_alone_sends_train_images_to_train_and_validation(
    store: DatasetStore, tmp_path: Path
) -> None:
    entries: dict[str, bytes] = {}
    for index, name in enumerate(("cat", "coffee")):
        images = _new_images(10, 50 + index)
        entries.update(_class_files(name, images[:8], "train/"))
        entries.update(_class_files(name, images[8:], "test/"))
    version = store.get(
        SHOP, _ingest(store, tmp_path, zip_archive(entries), DataMode.REPLACE)["version"]
    )
    for path, image_bytes in entries.items():
        split = version.images[image_hash(image_bytes)][1]
        if path.startswith("test/"):
            assert split == "test", path
        else:
            assert split in ("train", "validation"), path
    assert all(per_split["validation"] >= 1 for per_split in version.classes.values())


# --- refusals --------------------------------------------------------------------------------


def test_an_append_leaving_a_new_class_too_small_raises_and_writes_no_version(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    archive = zip_archive(_class_files("dog", _new_images(MIN_IMAGES - 1, 60)))
    with pytest.raises(InvalidDataset) as raised:
        _ingest(store, tmp_path, archive, DataMode.APPEND)
    assert raised.value.code == "invalid_dataset"
    assert "dog" in raised.value.details["classes"]
    assert store.versions(SHOP) == [1]
    assert store.get(SHOP) == first


def test_a_first_upload_of_one_class_raises_and_writes_no_version(
    store: DatasetStore, tmp_path: Path
) -> None:
    archive = zip_archive(_class_files("cat", _new_images(8, 61)))
    with pytest.raises(InvalidDataset, match="two classes"):
        _ingest(store, tmp_path, archive, DataMode.APPEND)
    assert not store.exists(SHOP)
    assert store.datasets("alice") == []


def test_more_images_than_max_images_raises_and_writes_no_version_or_image(
    store: DatasetStore, tmp_path: Path
) -> None:
    limits = DatasetLimits(max_images=29, max_store_bytes=10**9)
    with pytest.raises(DatasetLimitExceeded) as raised:
        _ingest(store, tmp_path, _base_zip(), DataMode.REPLACE, limits=limits)
    assert (raised.value.code, raised.value.status) == ("dataset_limit_exceeded", 413)
    assert raised.value.details == {"images": 30, "limit": 29}
    assert not store.exists(SHOP)
    assert _image_files(store, tmp_path) == []
    assert list((tmp_path / "scratch").iterdir()) == []


def test_an_append_past_max_images_raises_and_keeps_the_latest_version(
    store: DatasetStore, tmp_path: Path
) -> None:
    _first_version(store, tmp_path)
    files = _image_files(store, tmp_path)
    limits = DatasetLimits(max_images=32, max_store_bytes=10**9)
    archive = zip_archive(_class_files("cat", _new_images(3, 62)))
    with pytest.raises(DatasetLimitExceeded):
        _ingest(store, tmp_path, archive, DataMode.APPEND, limits=limits)
    assert store.versions(SHOP) == [1]
    assert _image_files(store, tmp_path) == files


def test_more_bytes_than_max_store_bytes_raises_and_writes_no_version_or_image(
    store: DatasetStore, tmp_path: Path
) -> None:
    upload = sum(len(b) for b in _entries(_base_zip()).values())
    limits = DatasetLimits(max_images=1000, max_store_bytes=upload - 1)
    with pytest.raises(DatasetLimitExceeded) as raised:
        _ingest(store, tmp_path, _base_zip(), DataMode.REPLACE, limits=limits)
    assert (raised.value.code, raised.value.status) == ("dataset_limit_exceeded", 413)
    assert raised.value.details == {"bytes": upload, "limit": upload - 1}
    assert not store.exists(SHOP)
    assert _image_files(store, tmp_path) == []


def test_max_store_bytes_counts_the_images_already_stored(
    store: DatasetStore, tmp_path: Path
) -> None:
    _first_version(store, tmp_path)
    stored = store.storage_bytes(SHOP)
    new = _new_images(3, 63)
    limits = DatasetLimits(1000, stored + sum(len(b) for b in new) - 1)
    with pytest.raises(DatasetLimitExceeded):
        _ingest(
            store, tmp_path, zip_archive(_class_files("cat", new)), DataMode.APPEND, limits=limits
        )
    # Images already stored cost nothing more: the same upload again fits in what it takes.
    _ingest(store, tmp_path, _base_zip(), DataMode.APPEND, limits=DatasetLimits(1000, stored))
    assert store.versions(SHOP) == [1, 2]


# --- commit ----------------------------------------------------------------------------------


def test_commit_retries_with_the_next_number_when_another_writer_claims_it(
    store: DatasetStore, tmp_path: Path
) -> None:
    theirs, mine = {_fake_hash("theirs"): ("cat", "train")}, {_fake_hash("mine"): ("cat", "test")}
    other_process = DatasetStore(tmp_path / "store")
    calls: list[tuple[int | None, int]] = []

    def make(latest: DatasetVersion | None, number: int) -> DatasetVersion:
        calls.append((latest.version if latest else None, number))
        if len(calls) == 1:
            other_process.commit(SHOP, lambda latest, n: _version(n, latest, theirs))
        base = latest.images if latest is not None else {}
        return _version(number, latest, {**base, **mine})

    written = store.commit(SHOP, make)
    assert calls == [(None, 1), (1, 2)]
    assert store.versions(SHOP) == [1, 2]
    assert store.get(SHOP, 1).images == theirs
    assert written == store.get(SHOP, 2)
    assert (written.version, written.parent, written.images) == (2, 1, {**theirs, **mine})


def test_commit_never_overwrites_a_manifest_created_by_another_machine(
    store: DatasetStore, tmp_path: Path
) -> None:
    manifest = tmp_path / "store" / "_datasets" / SHOP / "versions" / "000001.json"
    foreign = _version(1, None, {_fake_hash("foreign"): ("cat", "train")}).to_json()

    def make(latest: DatasetVersion | None, number: int) -> DatasetVersion:
        if not manifest.exists():
            manifest.parent.mkdir(parents=True)
            manifest.write_text(foreign)
        return _version(number, latest, {_fake_hash("mine"): ("cat", "train")})

    written = store.commit(SHOP, make)
    assert manifest.read_text() == foreign
    assert (written.version, written.parent) == (2, 1)
    leftovers = [p.name for p in manifest.parent.iterdir() if not p.name.endswith(".json")]
    assert leftovers == []


def test_a_version_number_is_never_reused_after_its_version_is_retired_and_swept(
    store: DatasetStore,
) -> None:
    store.commit(SHOP, lambda latest, n: _version(n, latest, {_fake_hash("a"): ("cat", "train")}))
    store.commit(SHOP, lambda latest, n: _version(n, latest, {_fake_hash("b"): ("cat", "test")}))
    now = time.time()
    store.retire(SHOP, 2, now=now)
    store.sweep(SHOP, grace_s=0, now=now + 10)
    third = store.commit(SHOP, lambda latest, n: _version(n, latest, {}))
    assert third.version == 3, (
        f"the next version got number {third.version}, the number of a deleted version: a "
        "model trained on the old version 2 now names other data"
    )


# --- retire and sweep ------------------------------------------------------------------------


def _drop_one(store: DatasetStore, image: str) -> DatasetVersion:
    """Commit an edit: the latest version less one image."""

    def make(latest: DatasetVersion | None, number: int) -> DatasetVersion:
        assert latest is not None
        images = {h: entry for h, entry in latest.images.items() if h != image}
        return _version(number, latest, images, seed=latest.seed, details={"deleted": image})

    return store.commit(SHOP, make)


def test_a_retired_version_leaves_the_list_at_once_and_its_number_stays_taken(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    _drop_one(store, sorted(first.images)[0])
    store.retire(SHOP, 1)
    assert store.versions(SHOP) == [2]
    assert _drop_one(store, sorted(first.images)[1]).version == 3


def test_sweep_keeps_an_image_an_older_version_still_refers_to(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    dropped = _hashes(first, "cat", "train")[0]
    second = _drop_one(store, dropped)
    assert (second.source, second.parent, len(second.images)) == ("edit", 1, 29)
    assert store.sweep(SHOP, grace_s=0, now=time.time() + 3600) == []
    assert store.read_image(SHOP, dropped)


def test_sweep_keeps_the_images_of_a_retired_version_for_the_grace_period_then_removes_them(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    dropped = _hashes(first, "cat", "train")[0]
    _drop_one(store, dropped)
    retired_at = time.time() + 10
    store.retire(SHOP, 1, now=retired_at)
    assert store.sweep(SHOP, grace_s=100, now=retired_at + 50) == []
    assert store.has_image(SHOP, dropped)
    assert store.sweep(SHOP, grace_s=0, now=retired_at + 50) == [dropped]
    assert not store.has_image(SHOP, dropped)
    with pytest.raises(ImageNotFound):
        store.read_image(SHOP, dropped)
    assert len(_image_files(store, tmp_path)) == 29
    assert store.versions(SHOP) == [2]


def test_sweep_keeps_an_unreferenced_image_while_younger_than_the_grace_period(
    store: DatasetStore, tmp_path: Path
) -> None:
    _first_version(store, tmp_path)
    orphan, new = store.put_image(SHOP, _new_images(1, 70)[0])
    assert new
    assert store.put_image(SHOP, store.read_image(SHOP, orphan)) == (orphan, False)
    assert store.sweep(SHOP, grace_s=3600) == []
    assert store.has_image(SHOP, orphan)
    assert store.sweep(SHOP, grace_s=3600, now=time.time() + 10**6) == [orphan]
    assert not store.has_image(SHOP, orphan)
    assert len(_image_files(store, tmp_path)) == 30


def test_a_deleted_image_keeps_its_split_when_uploaded_again_after_its_version_is_swept(
    store: DatasetStore, tmp_path: Path
) -> None:
    """``ml.dataset_splits``: an image seen before, "in any version, deleted ones too", keeps
    its split; "No image ever changes split"."""
    first = _first_version(store, tmp_path)
    # A validation image its hash would send elsewhere (cat keeps another validation image,
    # so the "empty split first" rule does not put it back by chance).
    candidates = [
        h
        for name in ("cat", "coffee", "rocket")
        for h in _hashes(first, name, "validation")
        if hash_split(h, first.seed, SHARES) != "validation"
    ]
    assert candidates
    image = candidates[0]
    label = first.images[image][0]
    _drop_one(store, image)
    now = time.time() + 10
    store.retire(SHOP, 1, now=now)
    assert store.sweep(SHOP, grace_s=0, now=now + 10) == [image]
    result = _ingest(
        store, tmp_path, zip_archive({f"{label}/back.jpg": _base_bytes(image)}), DataMode.APPEND
    )
    split = store.get(SHOP, result["version"]).images[image][1]
    assert split == "validation", (
        f"an image deleted from validation came back in {split}: known_splits forgot it when "
        "the sweep removed the retired manifest"
    )


# --- purge -----------------------------------------------------------------------------------


def test_a_purged_image_reads_as_purged_and_stays_in_old_manifests(
    store: DatasetStore, tmp_path: Path
) -> None:
    first = _first_version(store, tmp_path)
    image = _hashes(first, "rocket", "train")[0]
    store.purge(SHOP, image)
    with pytest.raises(ImagePurged) as raised:
        store.read_image(SHOP, image)
    assert (raised.value.code, raised.value.status) == ("image_purged", 410)
    assert not store.has_image(SHOP, image)
    assert store.purged(SHOP) == {image}
    assert store.get(SHOP, 1).images[image] == ("rocket", "train")
    assert store.get(SHOP, 1) == first


def test_a_purged_image_uploaded_again_is_skipped(store: DatasetStore, tmp_path: Path) -> None:
    first = _first_version(store, tmp_path)
    image = _hashes(first, "rocket", "train")[0]
    store.purge(SHOP, image)
    archive = zip_archive(
        {"coffee/back.jpg": _base_bytes(image), **_class_files("cat", _new_images(2, 80))}
    )
    result = _ingest(store, tmp_path, archive, DataMode.APPEND)
    (skipped,) = result["skipped_images"]
    assert (skipped["path"], skipped["code"]) == ("coffee/back.jpg", "image_purged")
    assert (result["added"], result["relabelled"], result["skipped"]) == (2, 0, 1)
    assert not store.has_image(SHOP, image)
    assert store.get(SHOP, result["version"]).images[image] == ("rocket", "train")


def test_purge_refuses_a_name_that_is_not_an_image_hash_and_writes_nothing(
    store: DatasetStore, tmp_path: Path
) -> None:
    _first_version(store, tmp_path)
    before = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    with pytest.raises(ImageNotFound):
        store.purge(SHOP, "../../../escaped")
    written = sorted(set(p for p in tmp_path.rglob("*") if p.is_file()) - set(before))
    assert written == [], f"purge of a bad name wrote {[str(p) for p in written]}"


# --- namespaces and ids ----------------------------------------------------------------------


def _commit_named(store: DatasetStore, dataset: str) -> None:
    store.commit(
        dataset, lambda latest, n: _version(n, latest, {}, dataset=dataset, source="upload")
    )


def test_datasets_lists_only_the_namespace_asked_for(store: DatasetStore) -> None:
    spaced = model_id("carol smith", "pets")
    for dataset in (SHOP, model_id("alice", "pets"), model_id("bob", "shop"), spaced):
        _commit_named(store, dataset)
    assert sorted(store.datasets("alice")) == ["@alice/pets", "@alice/shop"]
    assert store.datasets("bob") == ["@bob/shop"]
    assert store.datasets("carol smith") == [spaced]
    assert store.datasets("nobody") == []
    assert sorted(store.datasets()) == sorted(["@alice/pets", "@alice/shop", "@bob/shop", spaced])


def test_a_dataset_with_only_retired_versions_is_not_listed(store: DatasetStore) -> None:
    _commit_named(store, SHOP)
    store.retire(SHOP, 1)
    assert store.datasets("alice") == []
    assert not store.exists(SHOP)


@pytest.mark.parametrize("dataset", ["shop", "@alice/Shop", "@alice/", "@alice/../x", "@/shop"])
def test_an_id_without_a_namespace_or_with_a_bad_name_is_not_a_dataset(
    store: DatasetStore, dataset: str
) -> None:
    _commit_named(store, SHOP)
    with pytest.raises(DatasetNotFound) as raised:
        store.get(dataset)
    assert raised.value.code == "dataset_not_found"
    with pytest.raises(DatasetNotFound):
        store.put_image(dataset, b"bytes")
    assert store.datasets() == [SHOP]


def test_a_dataset_without_versions_is_not_found(store: DatasetStore) -> None:
    with pytest.raises(DatasetNotFound):
        store.versions(model_id("alice", "missing"))
    with pytest.raises(DatasetNotFound):
        store.get(model_id("alice", "missing"))
    assert store.latest(model_id("alice", "missing")) is None


# --- summaries -------------------------------------------------------------------------------


def test_a_version_summary_counts_images_and_classes_per_split(
    store: DatasetStore, tmp_path: Path
) -> None:
    result = _ingest(store, tmp_path, _base_zip(), DataMode.REPLACE)
    summary = store.get(SHOP).summary()
    assert summary["images"] == result["images"] == 30
    expected = {"train": 7, "validation": 2, "test": 1}
    assert summary["classes"] == dict.fromkeys(("cat", "coffee", "rocket"), expected)
    assert summary["fingerprint"] == result["fingerprint"]
    assert (summary["version"], summary["parent"], summary["source"], summary["by"]) == (
        1,
        None,
        "upload",
        "alice",
    )
    assert json.loads(json.dumps(summary)) == summary


def test_the_fingerprint_changes_when_a_label_changes(store: DatasetStore, tmp_path: Path) -> None:
    first = _first_version(store, tmp_path)
    image = _hashes(first, "coffee", "train")[0]
    same = _ingest(store, tmp_path, _base_zip(), DataMode.APPEND)
    assert same["fingerprint"] == first.fingerprint
    moved = _ingest(
        store, tmp_path, zip_archive({"cat/moved.jpg": _base_bytes(image)}), DataMode.APPEND
    )
    assert moved["fingerprint"] != first.fingerprint
    assert store.get(SHOP, moved["version"]).summary()["classes"]["coffee"]["train"] == 6


def test_a_manifest_reads_back_as_the_version_written(store: DatasetStore) -> None:
    version = _version(
        1, None, {_fake_hash("a"): ("cat", "test")}, by="alice", details={"job": "j1"}
    )
    store.commit(SHOP, lambda latest, n: version)
    assert store.get(SHOP, 1) == version
    assert DatasetVersion.from_json(SHOP, version.to_json()) == version
