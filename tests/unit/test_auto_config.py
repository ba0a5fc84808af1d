"""``auto`` training parameters: chosen from the dataset's measurements, explicit values win."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from ml.auto_config import (
    AUTO,
    FROZEN_BELOW,
    DatasetStats,
    budget_fine_tune,
    choose_config,
    dataset_stats,
)


def _stats(side: int, grey: float, smallest: int) -> DatasetStats:
    return DatasetStats(
        classes=5,
        train_images=smallest * 5,
        smallest_class=smallest,
        median_side=side,
        greyscale_share=grey,
    )


def test_small_greyscale_images_pool_on_a_grid_and_keep_the_backbone_frozen() -> None:
    config, auto = choose_config({}, _stats(28, 1.0, 140))
    assert config.pooling == "grid"
    assert config.unfreeze == 0 and config.fine_tune_epochs == 0
    assert config.label_smoothing == 0.1
    assert config.epochs == 100 and config.patience == 5
    assert not config.augment and not config.tta and config.mixup == 0
    assert "frozen" in auto["chosen"]["unfreeze"]["reason"]
    assert auto["stats"]["median_side"] == 28


def test_large_colour_photos_pool_globally_and_many_images_unfreeze_more() -> None:
    config, _ = choose_config({}, _stats(300, 0.0, FROZEN_BELOW))
    assert config.pooling == "avg"
    assert config.unfreeze == 0.2 and config.fine_tune_epochs == 5
    assert config.fine_tune_learning_rate == 1e-4
    config, _ = choose_config({}, _stats(300, 0.0, 5000))
    assert config.unfreeze == 0.3


def test_explicit_values_win_and_are_not_listed_as_chosen() -> None:
    config, auto = choose_config(
        {"epochs": 7, "pooling": "avg", "unfreeze": AUTO, "seed": 3}, _stats(8, 1.0, 100)
    )
    assert config.epochs == 7 and config.pooling == "avg" and config.seed == 3
    assert "epochs" not in auto["chosen"] and "pooling" not in auto["chosen"]
    assert auto["chosen"]["unfreeze"]["value"] == 0.0


def test_explicit_augmentation_trains_fewer_head_epochs() -> None:
    config, auto = choose_config({"augment": True}, _stats(300, 0.0, 50))
    assert config.augment and config.epochs == 30
    assert "augmentation" in auto["chosen"]["epochs"]["reason"]


def _png(size: tuple[int, int], mode: str) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (size[1], size[0], 3 if mode == "RGB" else 1), np.uint8)
    Image.fromarray(pixels.squeeze(), mode).save(buffer, "PNG")
    return buffer.getvalue()


def test_stats_measure_sides_colour_and_the_smallest_class() -> None:
    images = {"a": _png((8, 8), "L"), "b": _png((8, 10), "L"), "c": _png((40, 30), "RGB")}
    items = [("a", 0), ("b", 0), ("c", 1), ("missing", 1)]

    def read(name: str) -> bytes:
        if name not in images:
            raise OSError(name)
        return images[name]

    stats = dataset_stats(read, items, classes=3)
    assert stats.smallest_class == 0  # class 2 has no image
    assert stats.train_images == 4
    assert stats.median_side == 8
    assert stats.greyscale_share == round(2 / 3, 3)


def test_asking_for_a_fine_tune_with_one_parameter_sets_the_other() -> None:
    config, auto = choose_config({"fine_tune_epochs": 2}, _stats(28, 1.0, 20))
    assert config.fine_tune_epochs == 2 and config.unfreeze == 0.2
    assert "fine_tune_epochs" in auto["chosen"]["unfreeze"]["reason"]
    config, _ = choose_config({"unfreeze": 0.5}, _stats(28, 1.0, 20))
    assert config.unfreeze == 0.5 and config.fine_tune_epochs == 5


def test_a_budget_may_try_a_fine_tune_only_where_auto_froze_the_backbone() -> None:
    assert budget_fine_tune({}, _stats(28, 1.0, 140)) == 0.2
    assert budget_fine_tune({"unfreeze": AUTO, "epochs": 3}, _stats(28, 1.0, 140)) == 0.2
    assert budget_fine_tune({}, _stats(300, 0.0, FROZEN_BELOW)) is None  # auto fine-tunes
    assert budget_fine_tune({"unfreeze": 0.0}, _stats(28, 1.0, 140)) is None
    assert budget_fine_tune({"fine_tune_epochs": 0}, _stats(28, 1.0, 140)) is None
