"""Stable train/validation/test splits for a dataset that grows.

A stored dataset gets new versions as images are added, relabelled and removed. Scores of two
model versions are only comparable on one test split, and an image that was in a test split
must never be trained on later, so an image's split is decided once and then kept:

- an image the dataset has seen before (in any version, deleted ones too) keeps its split;
- an image in a split folder of the upload (``train/``, ``validation/``, ``test/``) goes there;
- a class new to the dataset is carved as a single upload always was (``carve_class``): every
  split gets at least one of its images, in the configured proportions, seeded;
- any other image goes where its hash and the dataset's seed send it, except that a class
  which has no image in some split gets one there first, so small classes keep the guarantee.

No image ever changes split, and the same images and seed give the same splits on any machine.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Mapping

import numpy as np

from ml.datasets import SPLITS, carve_class
from ml.errors import InvalidDataset

ClassCounts = dict[str, dict[str, int]]
"""Class -> split -> number of images."""


def _unit_interval(image_hash: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{image_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def hash_split(image_hash: str, seed: int, shares: Mapping[str, float]) -> str:
    """The split an image's hash sends it to, given the splits' shares (adding up to 1)."""
    point, edge = _unit_interval(image_hash, seed), 0.0
    for split in SPLITS:
        edge += shares.get(split, 0.0)
        if point < edge:
            return split
    return "train"


def _class_seed(seed: int, name: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "big")


def _place_free(
    name: str, free: list[str], placed: Counter[str], shares: Mapping[str, float], seed: int
) -> dict[str, str]:
    """Splits for one class's images that have none yet (``free``, sorted by hash)."""
    if not placed and len(free) >= len(shares):
        carved = carve_class(free, dict(shares), np.random.default_rng(_class_seed(seed, name)))
        return {image: split for split, images in carved.items() for image in images}
    splits: dict[str, str] = {}
    ordered = sorted(free, key=lambda image: _unit_interval(image, seed))
    empty = [split for split in SPLITS if split in shares and placed[split] == 0]
    for split, image in zip(empty, ordered, strict=False):
        splits[image] = split
    for image in ordered[len(splits) :]:
        splits[image] = hash_split(image, seed, shares)
    return splits


def assign_splits(
    labels: Mapping[str, str],
    *,
    known: Mapping[str, str],
    given: Mapping[str, str],
    shares: Mapping[str, float],
    seed: int,
) -> dict[str, str]:
    """The split of every image of a new dataset version.

    Args:
        labels: image hash -> class, every image of the version.
        known: image hash -> split, for every image the dataset has held before.
        given: image hash -> split folder, for the upload's images in ``validation/`` and
            ``test/`` folders (images in ``train/`` are placed by ``shares``, which then holds
            ``train`` and the splits the upload did not give).
        shares: the splits images without a split may go to, with their shares (from
            ``ml.datasets.split_shares``).
        seed: the dataset's seed.

    Returns:
        Image hash -> split, for every image in ``labels``.
    """
    by_class: dict[str, list[str]] = {}
    for image, name in labels.items():
        by_class.setdefault(name, []).append(image)
    splits: dict[str, str] = {}
    for name, images in sorted(by_class.items()):
        placed: Counter[str] = Counter()
        free = []
        for image in sorted(images):
            split = known.get(image) or given.get(image)
            if split is None:
                free.append(image)
            else:
                splits[image] = split
                placed[split] += 1
        splits.update(_place_free(name, free, placed, shares, seed))
    return splits


def class_counts(entries: Mapping[str, tuple[str, str]]) -> ClassCounts:
    """Class -> split -> count, from image hash -> ``(class, split)``."""
    counts: ClassCounts = {}
    for name, split in entries.values():
        counts.setdefault(name, dict.fromkeys(SPLITS, 0))[split] += 1
    return dict(sorted(counts.items()))


def check_trainable(counts: ClassCounts, min_images_per_class: int) -> None:
    """Refuse a dataset version a classifier cannot be trained and tested on.

    The rules of a single upload (``ml.datasets.layout_from_paths``): two classes at least,
    each with ``min_images_per_class`` images in all and one in every split.

    Raises:
        InvalidDataset: naming the classes that are short, with their counts per split.
    """
    if len(counts) < 2:
        raise InvalidDataset(
            "A classifier needs at least two classes.", {"classes": sorted(counts)}
        )
    short = {
        name: per_split
        for name, per_split in counts.items()
        if sum(per_split.values()) < min_images_per_class or min(per_split.values()) < 1
    }
    if short:
        raise InvalidDataset(
            f"{', '.join(map(repr, short))} {'has' if len(short) == 1 else 'have'} too few "
            f"images (a class needs {min_images_per_class} in all and one in each of "
            f"{', '.join(SPLITS)}).",
            {"classes": short, "minimum": min_images_per_class},
        )
