"""Dataset layouts: classes from folders, reproducible stratified splits, clear refusals."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from ml.archive import ArchiveLimits, extract_archive, list_archive
from ml.datasets import (
    SPLITS,
    DatasetLayout,
    check_decoded_classes,
    dataset_fingerprint,
    layout_from_paths,
    load_split,
)
from ml.errors import InvalidDataset
from ml.preprocess import ImageLimits
from tests.support.images import solid_image

IMAGE_LIMITS = ImageLimits(max_bytes=1_000_000, max_pixels=1_000_000)
ARCHIVE_LIMITS = ArchiveLimits(max_entries=1000, max_total_bytes=10_000_000, max_ratio=100.0)
COLOURS = {"cats": (220, 20, 20), "dogs": (20, 200, 20), "fish": (20, 20, 220)}


def _flat(per_class: int, classes: tuple[str, ...] = ("cats", "dogs", "fish")) -> list[str]:
    return [f"{name}/{index:03d}.jpg" for name in classes for index in range(per_class)]


def _classes_of(layout: DatasetLayout, split: str) -> set[str]:
    return {layout.classes[label] for _, label in layout.splits[split]}


def _all_paths(layout: DatasetLayout) -> list[str]:
    return sorted(path for split in SPLITS for path, _ in layout.splits[split])


def test_class_folders_become_sorted_classes_split_stratified_in_the_default_fractions() -> None:
    layout = layout_from_paths(_flat(10, ("fish", "cats", "dogs")), 3, seed=7)
    assert layout.classes == ("cats", "dogs", "fish")
    assert not layout.split_given
    for split, expected in zip(SPLITS, (7, 2, 1), strict=True):
        labels = [label for _, label in layout.splits[split]]
        assert np.bincount(labels, minlength=3).tolist() == [expected] * 3
    assert _all_paths(layout) == sorted(_flat(10))
    for path, label in layout.splits["train"]:
        assert path.startswith(layout.classes[label] + "/")


def test_the_same_seed_gives_the_same_split_and_another_seed_another() -> None:
    paths = _flat(20)
    assert layout_from_paths(paths, 3, seed=1) == layout_from_paths(list(reversed(paths)), 3, 1)
    assert layout_from_paths(paths, 3, seed=1) != layout_from_paths(paths, 3, seed=2)


def test_every_class_is_in_every_split_even_with_three_images() -> None:
    layout = layout_from_paths(_flat(3), 3, seed=0)
    for split in SPLITS:
        assert _classes_of(layout, split) == {"cats", "dogs", "fish"}
        assert len(layout.splits[split]) == 3


def test_given_train_and_test_are_kept_and_validation_is_carved_out_of_train() -> None:
    train = [f"train/{path}" for path in _flat(9)]
    test = [f"test/{path}" for path in _flat(2)]
    layout = layout_from_paths(train + test, 3, seed=0)
    assert layout.split_given
    assert sorted(path for path, _ in layout.splits["test"]) == sorted(test)
    # validation gets 0.2 / (0.7 + 0.2) of each class's 9 training images: 2.
    assert len(layout.splits["validation"]) == 6
    assert _classes_of(layout, "validation") == {"cats", "dogs", "fish"}
    assert sorted(
        path for split in ("train", "validation") for path, _ in layout.splits[split]
    ) == (sorted(train))


def test_train_alone_is_split_into_all_three() -> None:
    layout = layout_from_paths([f"train/{path}" for path in _flat(10)], 3, seed=0)
    assert layout.split_given
    assert [len(layout.splits[split]) for split in SPLITS] == [21, 6, 3]


def test_all_three_given_splits_are_used_as_they_are() -> None:
    paths = [f"{split}/{path}" for split in SPLITS for path in _flat(1)]
    layout = layout_from_paths(paths, 3, seed=0)
    for split in SPLITS:
        assert [path for path, _ in layout.splits[split]] == [f"{split}/{p}" for p in _flat(1)]


@pytest.mark.parametrize("inner", ["", "train/"])
def test_a_single_wrapper_folder_is_stripped_and_paths_keep_it(inner: str) -> None:
    paths = [f"flowers/{inner}{path}" for path in _flat(5)] + ["flowers/README.txt"]
    layout = layout_from_paths(paths, 3, seed=0)
    assert layout.classes == ("cats", "dogs", "fish")
    assert all(path.startswith(f"flowers/{inner}") for path in _all_paths(layout))


def test_hidden_and_non_image_files_are_ignored() -> None:
    paths = [*_flat(3), "cats/.DS_Store", "cats/._000.jpg", ".git/x.png", "dogs/notes.txt"]
    assert _all_paths(layout_from_paths(paths, 3, seed=0)) == sorted(_flat(3))


def test_nested_folders_inside_a_class_count_as_that_class() -> None:
    layout = layout_from_paths([*_flat(3), "cats/2024/a.png"], 3, seed=0)
    assert layout.classes == ("cats", "dogs", "fish")
    assert "cats/2024/a.png" in _all_paths(layout)


def _refusal(paths: list[str], minimum: int = 3) -> InvalidDataset:
    with pytest.raises(InvalidDataset) as caught:
        layout_from_paths(paths, minimum, seed=0)
    assert caught.value.code == "invalid_dataset"
    assert caught.value.status == 400
    return caught.value


def test_no_images_is_refused() -> None:
    assert "no images" in _refusal(["README.md", "cats/notes.txt"]).message


def test_a_single_class_is_refused() -> None:
    assert _refusal(_flat(5, ("cats",))).details == {"classes": ["cats"]}


def test_a_class_folder_without_images_is_refused() -> None:
    error = _refusal([*_flat(5, ("cats", "dogs")), "birds/notes.txt"])
    assert error.details == {"split": "train", "class": "birds"}


def test_a_class_with_too_few_images_is_refused_naming_it() -> None:
    error = _refusal([*_flat(10, ("cats", "dogs")), "fish/a.jpg", "fish/b.jpg"], minimum=5)
    assert error.details == {"class": "fish", "count": 2, "minimum": 5}


def test_a_class_too_small_to_reach_every_split_is_refused_whatever_the_minimum() -> None:
    error = _refusal([*_flat(10, ("cats",)), "dogs/a.jpg", "dogs/b.jpg"], minimum=1)
    assert error.details == {"class": "dogs", "count": 2, "minimum": 3}


def test_images_outside_class_folders_are_refused() -> None:
    error = _refusal([*_flat(5), "stray.jpg"])
    assert error.details == {"paths": ["stray.jpg"], "count": 1}


def test_a_class_only_in_test_is_refused() -> None:
    paths = [f"{split}/{p}" for split in ("train", "test") for p in _flat(5, ("cats", "dogs"))]
    paths.append("test/birds/a.jpg")
    assert _refusal(paths).details == {"split": "test", "missing": [], "extra": ["birds"]}


def test_split_folders_without_train_are_refused() -> None:
    assert "train/" in _refusal([f"test/{p}" for p in _flat(5)]).message


def test_images_beside_the_split_folders_are_refused() -> None:
    error = _refusal([*(f"train/{p}" for p in _flat(5)), "val/cats/a.jpg"])
    assert error.details == {"path": "val/cats/a.jpg", "splits": list(SPLITS)}


@pytest.mark.parametrize("fractions", [(0.5, 0.5, 0.0), (0.7, 0.2, 0.2), (1.0, -0.5, 0.5)])
def test_fractions_that_are_not_three_positive_shares_of_one_are_a_value_error(
    fractions: tuple[float, float, float],
) -> None:
    with pytest.raises(ValueError, match="fractions"):
        layout_from_paths(_flat(5), 3, seed=0, fractions=fractions)


def _write_dataset(root: Path, per_class: int = 3) -> list[str]:
    paths = []
    for name, colour in COLOURS.items():
        for index in range(per_class):
            fmt = "PNG" if index % 2 else "JPEG"
            path = f"{name}/{index}.{fmt.lower()}"
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(solid_image(colour, fmt))
            paths.append(path)
    return paths


def test_the_fingerprint_depends_on_content_and_split_not_on_where_the_files_are(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    paths = _write_dataset(first)
    _write_dataset(second)
    layout = layout_from_paths(paths, 3, seed=0)
    fingerprint = dataset_fingerprint(first, layout)
    assert len(fingerprint) == 64
    assert dataset_fingerprint(second, layout) == fingerprint
    assert dataset_fingerprint(first, layout_from_paths(paths, 3, seed=5)) != fingerprint
    (second / "dogs/1.png").write_bytes(solid_image((0, 0, 0), "PNG"))
    assert dataset_fingerprint(second, layout) != fingerprint


def test_load_split_decodes_every_image_with_its_label(tmp_path: Path) -> None:
    layout = layout_from_paths(_write_dataset(tmp_path, per_class=4), 3, seed=0)
    images, labels, skipped = load_split(tmp_path, layout.splits["train"], 8, IMAGE_LIMITS)
    assert images.shape == (len(layout.splits["train"]), 8, 8, 3)
    assert images.dtype == np.uint8
    assert labels.dtype == np.int32
    assert skipped == []
    for image, label in zip(images, labels, strict=True):
        expected = np.array(COLOURS[layout.classes[label]])
        assert np.abs(image.astype(int) - expected).max() <= 8  # JPEG rounding


def test_load_split_skips_and_reports_unreadable_images(tmp_path: Path) -> None:
    _write_dataset(tmp_path)
    (tmp_path / "cats/broken.jpg").write_bytes(b"not a jpeg at all")
    items = [("cats/0.jpeg", 0), ("cats/broken.jpg", 0), ("dogs/1.png", 1)]
    images, labels, skipped = load_split(tmp_path, items, 8, IMAGE_LIMITS)
    assert images.shape == (2, 8, 8, 3)
    assert labels.tolist() == [0, 1]
    assert len(skipped) == 1
    assert skipped[0]["path"] == "cats/broken.jpg"
    assert skipped[0]["code"] == "invalid_image"
    assert skipped[0]["message"]


def _decode_all(
    root: Path, layout: DatasetLayout
) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    labels, skipped = {}, []
    for split in SPLITS:
        _, labels[split], bad = load_split(root, layout.splits[split], 8, IMAGE_LIMITS)
        skipped.extend(bad)
    return labels, skipped


def test_a_dataset_whose_files_all_fail_to_decode_is_refused_naming_every_class(
    tmp_path: Path,
) -> None:
    paths = _flat(5, ("cats", "dogs"))
    for path in paths:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_bytes(b"this is not a jpeg " * 20)
    layout = layout_from_paths(paths, 5, seed=0)
    labels, skipped = _decode_all(tmp_path, layout)
    with pytest.raises(InvalidDataset) as caught:
        check_decoded_classes(layout, labels, 5, skipped)
    error = caught.value
    assert error.code == "invalid_dataset"
    assert "'cats', 'dogs'" in error.message
    assert error.details["classes"] == {name: dict.fromkeys(SPLITS, 0) for name in ("cats", "dogs")}
    assert (error.details["minimum"], error.details["skipped_count"]) == (5, 10)
    assert len(error.details["skipped"]) == 10


def test_a_class_left_without_a_test_image_after_skipping_is_refused_alone(
    tmp_path: Path,
) -> None:
    layout = layout_from_paths(_write_dataset(tmp_path, per_class=4), 3, seed=0)
    (broken,) = [path for path, label in layout.splits["test"] if layout.classes[label] == "dogs"]
    (tmp_path / broken).write_bytes(b"truncated")
    labels, skipped = _decode_all(tmp_path, layout)
    with pytest.raises(InvalidDataset) as caught:
        check_decoded_classes(layout, labels, 3, skipped)
    assert list(caught.value.details["classes"]) == ["dogs"]
    assert caught.value.details["classes"]["dogs"]["test"] == 0
    assert caught.value.details["skipped"][0]["path"] == broken


def test_a_skipped_file_that_leaves_every_class_enough_is_accepted(tmp_path: Path) -> None:
    layout = layout_from_paths(_write_dataset(tmp_path, per_class=6), 3, seed=0)
    broken = next(path for path, label in layout.splits["train"] if label == 0)
    (tmp_path / broken).write_bytes(b"truncated")
    labels, skipped = _decode_all(tmp_path, layout)
    assert [item["path"] for item in skipped] == [broken]
    check_decoded_classes(layout, labels, 3, skipped)  # 5 cats left, in every split


def test_a_class_under_the_minimum_after_skipping_is_refused(tmp_path: Path) -> None:
    layout = layout_from_paths(_write_dataset(tmp_path, per_class=6), 6, seed=0)
    broken = next(path for path, label in layout.splits["train"] if label == 1)
    (tmp_path / broken).write_bytes(b"truncated")
    labels, skipped = _decode_all(tmp_path, layout)
    with pytest.raises(InvalidDataset) as caught:
        check_decoded_classes(layout, labels, 6, skipped)
    counts = caught.value.details["classes"]
    assert list(counts) == [layout.classes[1]]
    assert sum(counts[layout.classes[1]].values()) == 5


def _zip_dataset(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as bundle:
        for name, content in members.items():
            bundle.writestr(name, content)
    return path


def test_an_uploaded_class_folder_archive_is_checked_before_and_loaded_after_extraction(
    tmp_path: Path,
) -> None:
    members = {
        f"flowers/{name}/{index}.png": solid_image(colour, "PNG")
        for name, colour in COLOURS.items()
        for index in range(5)
    }
    archive = _zip_dataset(tmp_path / "flowers.zip", members)
    before = layout_from_paths(list_archive(archive, ARCHIVE_LIMITS), 3, seed=3)
    root = tmp_path / "dataset"
    written = extract_archive(archive, root, ARCHIVE_LIMITS)
    after = layout_from_paths([p.relative_to(root).as_posix() for p in written], 3, seed=3)
    assert before == after
    images, labels, skipped = load_split(root, after.splits["test"], 16, IMAGE_LIMITS)
    assert (images.shape, labels.tolist(), skipped) == ((3, 16, 16, 3), [0, 1, 2], [])


def test_an_uploaded_train_and_test_archive_keeps_its_test_images(tmp_path: Path) -> None:
    members = {
        f"{split}/{name}/{index}.jpg": solid_image(colour, "JPEG")
        for split, count in (("train", 6), ("test", 2))
        for name, colour in COLOURS.items()
        for index in range(count)
    }
    archive = _zip_dataset(tmp_path / "upload.zip", members)
    root = tmp_path / "dataset"
    written = extract_archive(archive, root, ARCHIVE_LIMITS)
    layout = layout_from_paths([p.relative_to(root).as_posix() for p in written], 3, seed=0)
    assert layout.split_given
    assert sorted(path for path, _ in layout.splits["test"]) == sorted(
        name for name in members if name.startswith("test/")
    )
    images, labels, skipped = load_split(root, layout.splits["validation"], 16, IMAGE_LIMITS)
    assert images.shape == (3, 16, 16, 3)
    assert sorted(labels.tolist()) == [0, 1, 2]
    assert skipped == []
