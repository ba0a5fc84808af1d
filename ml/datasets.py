"""Image datasets laid out in folders: find the classes, split them, load them.

Two layouts are read, as in the Keras tutorials (``image_dataset_from_directory``)::

    <class>/<image>                       # one pool, split here
    train/<class>/<image>                 # the caller's split; validation/ and test/ optional
    validation/<class>/<image>
    test/<class>/<image>

One top-level wrapper folder around either layout (``flowers/<class>/...``) is stripped: a
single top-level folder, not named like a split, in which every image is at least two levels
deep. Images may sit in subfolders of their class folder. Only ``IMAGE_SUFFIXES`` count; other
files are ignored, as are hidden files and folders (``.DS_Store``, ``._*``). Images outside any
class folder are refused rather than dropped, so a malformed upload fails loudly instead of
training on less data than the user thinks. Consequently, in the one-pool layout no class may
be named ``train``, ``validation`` or ``test``.

Layouts are computed from relative POSIX paths only, so the API can check an archive's listing
before anything is extracted and the worker gets the same answer after extraction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from ml.errors import ImgqError, InvalidDataset
from ml.preprocess import ImageLimits, decode_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
"""File suffixes read as images (case-insensitive); any other file is ignored."""

SPLITS = ("train", "validation", "test")
"""Split names, as folder names and as keys of ``DatasetLayout.splits``."""

_Pools = dict[str, dict[str, list[str]]]  # split -> class -> image paths as the caller gave them


@dataclass(frozen=True)
class DatasetLayout:
    """Classes and the train/validation/test items of one dataset.

    Attributes:
        classes: class names (folder names), sorted; a label is an index into it.
        splits: ``"train"``, ``"validation"`` and ``"test"``, each a list of
            ``(relative path, class index)`` sorted by path.
        split_given: whether the files came in ``train/`` (and maybe ``validation/``,
            ``test/``) folders rather than as one pool.
    """

    classes: tuple[str, ...]
    splits: dict[str, list[tuple[str, int]]]
    split_given: bool


def _visible_files(paths: Sequence[str]) -> list[tuple[str, list[str]]]:
    files = []
    for path in sorted(set(paths)):
        parts = [part for part in path.split("/") if part not in ("", ".")]
        if ".." in parts:
            raise InvalidDataset(f"Path {path!r} points outside the dataset.", {"path": path})
        if parts and not any(part.startswith(".") for part in parts):
            files.append((path, parts))
    return files


def _is_image(parts: list[str]) -> bool:
    return parts[-1].lower().endswith(IMAGE_SUFFIXES)


def _strip_wrapper(files: list[tuple[str, list[str]]]) -> list[tuple[str, list[str]]]:
    images = [parts for _, parts in files if _is_image(parts)]
    tops = {parts[0] for parts in images}
    if len(tops) != 1 or tops & set(SPLITS) or any(len(parts) < 3 for parts in images):
        return files
    wrapper = tops.pop()
    return [(path, parts[1:]) for path, parts in files if parts[0] == wrapper and len(parts) > 1]


def _pools(files: list[tuple[str, list[str]]], split_given: bool) -> _Pools:
    """Group images by split and class; the one-pool layout's pool is called ``train``."""
    pools: _Pools = {}
    loose: list[str] = []
    for path, parts in files:
        split, rest = (parts[0], parts[1:]) if split_given else ("train", parts)
        if split_given and split not in SPLITS:
            if _is_image(parts):
                raise InvalidDataset(
                    f"Image {path!r} is outside the split folders {', '.join(SPLITS)}.",
                    {"path": path, "splits": list(SPLITS)},
                )
            continue
        if len(rest) < 2:  # directly in the root or a split folder
            if _is_image(parts):
                loose.append(path)
            continue
        images = pools.setdefault(split, {}).setdefault(rest[0], [])
        if _is_image(parts):
            images.append(path)
    if loose:
        raise InvalidDataset(
            "Images must be in class folders; some are outside any class folder.",
            {"paths": loose[:10], "count": len(loose)},
        )
    return pools


def _check_classes(pools: _Pools, min_images_per_class: int) -> tuple[str, ...]:
    classes = tuple(sorted(pools["train"]))
    for split, by_class in pools.items():
        if set(by_class) != set(classes):
            raise InvalidDataset(
                f"The class folders of {split}/ differ from those of train/.",
                {
                    "split": split,
                    "missing": sorted(set(classes) - set(by_class)),
                    "extra": sorted(set(by_class) - set(classes)),
                },
            )
        for name, images in by_class.items():
            if not images:
                raise InvalidDataset(
                    f"Class folder {name!r} has no images.", {"split": split, "class": name}
                )
    if len(classes) < 2:
        raise InvalidDataset(
            "A classifier needs at least two classes (two class folders).",
            {"classes": list(classes)},
        )
    for name in classes:
        count = sum(len(by_class[name]) for by_class in pools.values())
        if count < min_images_per_class:
            raise InvalidDataset(
                f"Class {name!r} has {count} images; at least {min_images_per_class} are needed.",
                {"class": name, "count": count, "minimum": min_images_per_class},
            )
    return classes


def carve_class(
    paths: list[str], shares: dict[str, float], rng: np.random.Generator
) -> dict[str, list[str]]:
    """Split one class's ``paths`` by ``shares``; ``train`` keeps what the others leave.

    Every split in ``shares`` gets at least one path (``train`` too), so ``paths`` must hold at
    least as many as there are splits.
    """
    shuffled = [paths[index] for index in rng.permutation(len(paths))]
    counts = {split: max(1, round(len(paths) * share)) for split, share in shares.items()}
    counts.pop("train")
    while len(paths) - sum(counts.values()) < 1:
        counts[max(counts, key=counts.__getitem__)] -= 1
    carved: dict[str, list[str]] = {}
    start = 0
    for split, count in counts.items():
        carved[split] = shuffled[start : start + count]
        start += count
    carved["train"] = shuffled[start:]
    return carved


def split_shares(given: set[str], fractions: tuple[float, float, float]) -> dict[str, float]:
    """The shares in which training images are carved into ``train`` and the splits not given.

    With no split folders (``given`` is ``{"train"}`` for the one pool) that is ``fractions``;
    with ``test/`` given, train and validation in proportion to their fractions; and so on.
    """
    wanted = [split for split in SPLITS if split == "train" or split not in given]
    weights = dict(zip(SPLITS, fractions, strict=True))
    return {split: weights[split] / sum(weights[s] for s in wanted) for split in wanted}


def _complete_splits(
    pools: _Pools, classes: tuple[str, ...], fractions: tuple[float, float, float], seed: int
) -> _Pools:
    """Carve the missing splits out of train, class by class, in the proportions given."""
    shares = split_shares(set(pools), fractions)
    wanted = list(shares)
    if len(wanted) == 1:
        return pools
    rng = np.random.default_rng(seed)
    complete: _Pools = {split: dict(pools.get(split, {})) for split in SPLITS}
    for name in classes:
        paths = sorted(pools["train"][name])
        if len(paths) < len(wanted):
            raise InvalidDataset(
                f"Class {name!r} has {len(paths)} training images; splitting it into "
                f"{', '.join(wanted)} needs at least {len(wanted)}.",
                {"class": name, "count": len(paths), "minimum": len(wanted)},
            )
        for split, carved in carve_class(paths, shares, rng).items():
            complete[split][name] = carved
    return complete


def _check_arguments(min_images_per_class: int, fractions: tuple[float, float, float]) -> None:
    if min_images_per_class < 1:
        raise ValueError(
            f"min_images_per_class must be 1 or more. Received {min_images_per_class}."
        )
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(
            f"fractions must be three positive numbers (train, validation, test) adding up "
            f"to 1. Received fractions={fractions}."
        )


@dataclass(frozen=True)
class LabelledFiles:
    """An upload's images by split folder and class, before any rule on class sizes.

    Attributes:
        pools: split folder -> class -> image paths; the one-pool layout's pool is ``train``.
        split_given: whether the files came in ``train/`` (and maybe other) split folders.
    """

    pools: dict[str, dict[str, list[str]]]
    split_given: bool

    @property
    def images(self) -> list[tuple[str, str, str | None]]:
        """``(path, class, split folder or None)`` of every image, sorted by path."""
        return sorted(
            (path, name, split if self.split_given else None)
            for split, by_class in self.pools.items()
            for name, paths in by_class.items()
            for path in paths
        )


def labelled_files(paths: Sequence[str]) -> LabelledFiles:
    """Group an upload's images by split folder and class, checking only its structure.

    An upload that adds images to a stored dataset may hold one class or a few images of one;
    the class-size rules apply to the dataset version it makes, not to it.

    Raises:
        InvalidDataset: no images, images outside class folders, split folders without
            ``train/``, or a paths that points outside the dataset.
    """
    files = _visible_files(paths)
    if not any(_is_image(parts) for _, parts in files):
        raise InvalidDataset("The dataset has no images.", {"image_suffixes": list(IMAGE_SUFFIXES)})
    files = _strip_wrapper(files)
    split_given = any(parts[0] in SPLITS and _is_image(parts) for _, parts in files)
    pools = _pools(files, split_given)
    if "train" not in pools:
        raise InvalidDataset("Split folders were given without a train/ folder.")
    return LabelledFiles(pools, split_given)


def layout_from_paths(
    paths: Sequence[str],
    min_images_per_class: int,
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.2, 0.1),
) -> DatasetLayout:
    """Find the classes and the train/validation/test items of a dataset from its file paths.

    Works on relative POSIX paths alone, so an upload can be checked from its archive listing
    before extraction. With no split folders, every class is split in ``fractions``; with
    ``train/`` but no ``validation/`` or ``test/``, the missing ones are carved out of train,
    in the proportions ``fractions`` gives them relative to the splits being made (with the
    default, 20/90 of train becomes validation when ``test/`` is given, and 10/80 becomes test
    when ``validation/`` is given). Either way the split is stratified (each carved split gets
    at least one image of every class) and the same ``seed`` gives the same split.

    Args:
        paths: file paths relative to the dataset root (folders may be omitted).
        min_images_per_class: fewest images a class may have, all splits together.
        seed: seed of ``numpy.random.default_rng`` for the split.
        fractions: train, validation and test shares; positive, adding up to 1.

    Returns:
        The layout; item paths are the given paths, so ``root / path`` opens them.

    Raises:
        InvalidDataset: no images, one class, an empty or too small class, images outside
            class folders, split folders whose classes differ, split folders without train/.
        ValueError: ``min_images_per_class`` or ``fractions`` out of range.
    """
    _check_arguments(min_images_per_class, fractions)
    listing = labelled_files(paths)
    pools, split_given = listing.pools, listing.split_given
    classes = _check_classes(pools, min_images_per_class)
    complete = _complete_splits(pools, classes, fractions, seed)
    splits = {
        split: sorted(
            (path, label) for label, name in enumerate(classes) for path in complete[split][name]
        )
        for split in SPLITS
    }
    return DatasetLayout(classes, splits, split_given)


def _file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def dataset_fingerprint(root: Path, layout: DatasetLayout) -> str:
    """Hash a dataset's files, split and labels, so a trained version records what it saw.

    Args:
        root: the folder the layout's paths are relative to.
        layout: the dataset's layout.

    Returns:
        Hex sha256 over the sorted ``(split, class, relative path, content sha256)`` records.

    Raises:
        OSError: a file of the layout cannot be read.
    """
    records = sorted(
        (split, layout.classes[label], path)
        for split, items in layout.splits.items()
        for path, label in items
    )
    digest = hashlib.sha256()
    for split, name, path in records:
        digest.update(f"{split}\0{name}\0{path}\0{_file_sha256(root / path)}\n".encode())
    return digest.hexdigest()


def load_split(
    root: Path, items: Sequence[tuple[str, int]], image_size: int, limits: ImageLimits
) -> tuple[NDArray[np.uint8], NDArray[np.int32], list[dict[str, str]]]:
    """Decode one split's images from a folder, skipping (and reporting) those that do not decode.

    Args:
        root: the folder the item paths are relative to.
        items: ``(relative path, class index)`` pairs, as in ``DatasetLayout.splits``.
        image_size: side of the square images, in pixels.
        limits: byte and pixel bounds of one image.

    Returns:
        As ``decode_items``.

    Raises:
        OSError: a file of ``items`` cannot be read.
        ValueError: ``image_size`` is below 1.
    """
    return decode_items(lambda path: (root / path).read_bytes(), items, image_size, limits)


def decode_items(
    read: Callable[[str], bytes],
    items: Sequence[tuple[str, int]],
    image_size: int,
    limits: ImageLimits,
) -> tuple[NDArray[np.uint8], NDArray[np.int32], list[dict[str, str]]]:
    """Decode labelled images into arrays, skipping (and reporting) those that do not decode.

    One bad file in a user's upload should cost one image, not the training job; the skipped
    files go back to the user with the reason.

    Args:
        read: the bytes of an item (a path in a folder, an image hash on the store); an
            ``ImgqError`` it raises (a purged image) skips the item like a decoding error.
        items: ``(item, class index)`` pairs, as in ``DatasetLayout.splits``.
        image_size: side of the square images, in pixels.
        limits: byte and pixel bounds of one image.

    Returns:
        Images of shape ``(n, image_size, image_size, 3)`` as uint8, their int32 labels, and
        one ``{"path", "code", "message"}`` per skipped item.

    Raises:
        OSError: an item cannot be read.
        ValueError: ``image_size`` is below 1.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be 1 or more. Received image_size={image_size}.")
    images = np.empty((len(items), image_size, image_size, 3), dtype=np.uint8)
    labels = np.empty(len(items), dtype=np.int32)
    skipped: list[dict[str, str]] = []
    count = 0
    for path, label in items:
        try:
            images[count] = decode_image(read(path), (image_size, image_size), limits)
        except ImgqError as exc:
            skipped.append({"path": path, "code": exc.code, "message": exc.message})
            continue
        labels[count] = label
        count += 1
    return images[:count], labels[:count], skipped


def check_decoded_classes(
    layout: DatasetLayout,
    labels: Mapping[str, NDArray[np.int32]],
    min_images_per_class: int,
    skipped: Sequence[Mapping[str, str]],
) -> None:
    """Refuse a dataset that skipping its undecodable files left without enough images.

    ``layout_from_paths`` judges files by name; only decoding finds that a ``.jpg`` is not an
    image, and ``load_split`` skips such files. Without them a class may fall under the rules
    the listing check enforced (``min_images_per_class`` in all, at least one image in each
    split), and training would then crash on an empty split or learn a class from nothing. The
    same rules are applied again to what decoded, so the job fails as an invalid dataset that
    names the classes left short instead of as a training crash.

    Args:
        layout: the dataset's layout.
        labels: the labels of each split's decoded images, as ``load_split`` returns them.
        min_images_per_class: fewest images a class may have, all splits together.
        skipped: the files that did not decode, as ``load_split`` reports them.

    Raises:
        InvalidDataset: some class is left short; ``details`` gives each such class's decoded
            images per split and the first skipped files.
    """
    counts = {split: np.bincount(labels[split], minlength=len(layout.classes)) for split in SPLITS}
    short: dict[str, dict[str, int]] = {}
    for index, name in enumerate(layout.classes):
        per_split = {split: int(counts[split][index]) for split in SPLITS}
        if min(per_split.values()) < 1 or sum(per_split.values()) < min_images_per_class:
            short[name] = per_split
    if not short:
        return
    raise InvalidDataset(
        f"{len(skipped)} files are not readable images; without them, "
        f"{', '.join(map(repr, short))} {'is' if len(short) == 1 else 'are'} left with too few "
        f"images (a class needs {min_images_per_class} in all and one in each of "
        f"{', '.join(SPLITS)}).",
        {
            "classes": short,
            "minimum": min_images_per_class,
            "skipped_count": len(skipped),
            "skipped": list(skipped[:10]),
        },
    )
