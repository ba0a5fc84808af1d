"""Training parameters chosen from the data: what ``auto`` means for each of them.

A user uploads class folders and takes the defaults, so the defaults must fit the data. Each
parameter left at ``auto`` is chosen from the dataset's size, class count and image sizes, and
the choice is recorded with its reason in the version's training parameters. Explicit values
always win. The rules were measured on real labelled sets (``bench/accuracy.py``, README):

* the head trains on cached features (augmentation off), so it can afford to train to
  convergence: up to 100 epochs, stopped by early stopping on validation loss (patience 5).
  Ten epochs, the old default, stopped well before the validation loss did;
* label smoothing 0.1 (Szegedy et al. 2016; Müller et al. 2019) helped on every set measured;
* small (at most 64 px) or greyscale images are upscaled to the backbone's size and pooled on
  a 2 x 2 grid: where a stroke or a sleeve is in the picture is the class, and global average
  pooling discards it. Larger colour photos keep global average pooling;
* the backbone stays frozen when the smallest class has fewer than ``FROZEN_BELOW`` training
  images: on a few hundred images a partial unfreeze costs minutes a pass on a CPU and, with
  the head trained to convergence, measured no better (the Keras transfer-learning guide's
  advice for small datasets). Larger sets unfreeze the top 20 % (30 % from
  ``MORE_UNFROZEN_FROM`` images a class) at a learning rate of 1e-4 for 5 epochs;
* with a budget, a frozen choice is not final: what the heads' search leaves of the budget
  may buy a fine-tune of the fraction above (``budget_fine_tune``), kept only when it scores
  better on validation;
* test-time flip and mixup stay off: their worth depends on the set (a mirrored digit is
  another digit), so only a budget's trials (``ml.trials``) turn them on, on validation
  evidence.
"""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ml.errors import ImgqError
from ml.train import TrainConfig

AUTO = "auto"
"""The value that asks for a parameter to be chosen from the data."""

AUTO_FIELDS: tuple[str, ...] = (
    "epochs",
    "fine_tune_epochs",
    "unfreeze",
    "learning_rate",
    "fine_tune_learning_rate",
    "augment",
    "patience",
    "pooling",
    "label_smoothing",
    "mixup",
    "tta",
)
"""``TrainConfig`` fields that may be ``auto``."""

SMALL_IMAGE_SIDE = 64
"""Images whose shorter side is at most this many pixels count as small."""

FROZEN_BELOW = 300
"""Training images in the smallest class below which the backbone stays frozen."""

MORE_UNFROZEN_FROM = 1000
"""Training images in the smallest class from which 30 % of the backbone is unfrozen."""

STATS_SAMPLE = 200
"""Images whose headers are read to measure sizes and colour."""


@dataclass(frozen=True)
class DatasetStats:
    """What the automatic choices look at."""

    classes: int
    train_images: int
    smallest_class: int
    median_side: int
    greyscale_share: float

    def document(self) -> dict[str, Any]:
        """As recorded with the version."""
        return dataclasses.asdict(self)


def _is_greyscale(image: Image.Image) -> bool:
    if image.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return True
    if image.mode not in ("RGB", "RGBA"):
        return False
    small = np.asarray(image.convert("RGB").resize((16, 16)), dtype=np.int16)
    return bool(np.abs(small - small.mean(axis=2, keepdims=True)).max() <= 8)


def dataset_stats(
    read: Callable[[str], bytes],
    train_items: Iterable[tuple[str, int]],
    classes: int,
    seed: int = 0,
) -> DatasetStats:
    """Measure the training split: its size per class, and a sample's image sides and colour."""
    items = list(train_items)
    counts = np.bincount([label for _, label in items], minlength=classes)
    rng = np.random.default_rng(seed)
    sample = rng.choice(len(items), min(STATS_SAMPLE, len(items)), replace=False)
    sides, grey = [], 0
    for index in sample:
        try:
            with Image.open(io.BytesIO(read(items[index][0]))) as image:
                sides.append(min(image.size))
                grey += _is_greyscale(image)
        except (ImgqError, OSError, ValueError):
            continue  # purged or undecodable: decoding skips and reports it
    return DatasetStats(
        classes=classes,
        train_images=len(items),
        smallest_class=int(counts.min()) if len(counts) else 0,
        median_side=int(np.median(sides)) if sides else 0,
        greyscale_share=round(grey / max(len(sides), 1), 3),
    )


def _unfreeze_fraction(stats: DatasetStats) -> float:
    """How much of the backbone a fine-tune unfreezes: more with more images a class."""
    return 0.3 if stats.smallest_class >= MORE_UNFROZEN_FROM else 0.2


def _choices(stats: DatasetStats, augment: bool) -> dict[str, tuple[Any, str]]:
    """Every automatic value, with why."""
    small = 0 < stats.median_side <= SMALL_IMAGE_SIDE
    grey = stats.greyscale_share >= 0.5
    grid = small or grey
    frozen = stats.smallest_class < FROZEN_BELOW
    fraction = _unfreeze_fraction(stats)
    size_reason = f"the smallest class has {stats.smallest_class} training images"
    return {
        "epochs": (
            (30, "augmentation re-runs the backbone every epoch; early stopping ends it sooner")
            if augment
            else (100, "cached features make head epochs cheap; early stopping ends it")
        ),
        "patience": (5, "epochs without a better validation loss before stopping"),
        "learning_rate": (1e-3, "Adam's usual rate for a new head"),
        "label_smoothing": (0.1, "measured better on every benchmark set"),
        "pooling": (
            ("grid", f"{'small' if small else 'greyscale'} images: their layout is the class")
            if grid
            else ("avg", "colour photos larger than 64 px")
        ),
        "tta": (False, "a budget's trials may turn it on, on validation evidence"),
        "mixup": (0.0, "a budget's trials may turn it on, on validation evidence"),
        "augment": (False, "keeps phase 1 on cached features"),
        "unfreeze": (0.0, f"{size_reason} (< {FROZEN_BELOW}): backbone frozen")
        if frozen
        else (fraction, f"{size_reason}: unfreeze the top {fraction:.0%}"),
        "fine_tune_epochs": (0, f"{size_reason} (< {FROZEN_BELOW}): no fine-tune")
        if frozen
        else (5, size_reason),
        "fine_tune_learning_rate": (1e-4, "a tenth of the head's rate for the unfrozen layers"),
    }


def _follow_explicit_fine_tune(
    choices: dict[str, tuple[Any, str]], explicit: Mapping[str, Any], stats: DatasetStats
) -> None:
    """A fine-tune asked for by one of its two parameters gets the other one to match."""
    if explicit.get("fine_tune_epochs", 0) > 0 and "unfreeze" not in explicit:
        choices["unfreeze"] = (_unfreeze_fraction(stats), "`fine_tune_epochs` asks for a fine-tune")
    if explicit.get("unfreeze", 0) > 0 and "fine_tune_epochs" not in explicit:
        choices["fine_tune_epochs"] = (5, "`unfreeze` asks for a fine-tune")


def choose_config(
    params: Mapping[str, Any], stats: DatasetStats
) -> tuple[TrainConfig, dict[str, Any]]:
    """The training parameters with every ``auto`` replaced, and what was chosen and why.

    Args:
        params: ``TrainConfig`` fields as the job gave them; missing or ``"auto"`` ones are
            chosen (for ``AUTO_FIELDS``), other missing ones keep ``TrainConfig``'s value.
        stats: the training split's measurements.

    Returns:
        The config, and ``{"stats": ..., "chosen": {field: {"value", "reason"}}}``.
    """
    known = {field.name for field in dataclasses.fields(TrainConfig)}
    explicit = {k: v for k, v in params.items() if k in known and v != AUTO}
    augment = bool(explicit.get("augment", False))
    choices = _choices(stats, augment)
    _follow_explicit_fine_tune(choices, explicit, stats)
    chosen = {
        name: {"value": value, "reason": reason}
        for name, (value, reason) in choices.items()
        if name not in explicit
    }
    config = TrainConfig(**explicit, **{k: v["value"] for k, v in chosen.items()})
    return config, {"stats": stats.document(), "chosen": chosen}


def budget_fine_tune(params: Mapping[str, Any], stats: DatasetStats) -> float | None:
    """The backbone fraction a budget may try to fine-tune after its heads' search.

    Only where ``auto`` chose a frozen backbone: a fine-tune (or none) asked for explicitly,
    by either of its two parameters, is the user's.
    """
    explicit = {k for k, v in params.items() if v != AUTO}
    if explicit & {"unfreeze", "fine_tune_epochs"}:
        return None
    if stats.smallest_class >= FROZEN_BELOW:
        return None  # auto fine-tunes already
    return _unfreeze_fraction(stats)
