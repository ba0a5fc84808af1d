"""A budget's search: trial bookkeeping, the budget, and that selection never sees test images."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import pytest

import ml.train
from ml import feature_cache
from ml.head_training import HeadResult
from ml.train import TrainConfig, train_classifier
from ml.trials import KNOBS, search


class _Clock:
    """A fake monotonic clock each trial advances by its own cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _trainer(clock: _Clock, scores: dict[tuple[str, Any], float], cost: float) -> Any:
    def train(config: TrainConfig) -> HeadResult:
        clock.now += cost
        score = 0.5 + sum(
            bonus for (knob, value), bonus in scores.items() if getattr(config, knob) == value
        )
        return HeadResult([], {}, score, 1 - score, cost, epochs=3)

    return train


def test_the_search_keeps_better_moves_and_lists_every_trial() -> None:
    clock, reports = _Clock(), []
    scores = {("pooling", "grid"): 0.2, ("mixup", 0.2): 0.1, ("dropout", 0.5): -0.3}
    best, result, trials = search(
        TrainConfig(),
        _trainer(clock, scores, cost=1.0),
        budget_s=1000,
        poolings=("avg", "grid"),
        flips=True,
        report=lambda so_far: reports.append(len(so_far)),
        clock=clock,
    )
    moves = sum(len(values) - 1 for _, values in KNOBS) - 1  # label smoothing 0 is the default
    assert len(trials) == 1 + moves + 1
    assert reports == list(range(1, len(trials) + 1))
    assert [trial.number for trial in trials] == list(range(1, len(trials) + 1))
    assert best.pooling == "grid" and best.mixup == 0.2 and best.dropout == 0.2
    assert result.val_accuracy == pytest.approx(0.8)
    assert trials[0].params["pooling"] == "avg"  # the starting config is trial 1
    assert all(trial.document()["seconds"] == 1.0 for trial in trials)


def test_the_search_stops_before_a_trial_that_would_not_fit() -> None:
    clock = _Clock()
    _, _, trials = search(
        TrainConfig(),
        _trainer(clock, {}, cost=10.0),
        budget_s=35,
        poolings=("avg", "grid"),
        flips=True,
        report=lambda _: None,
        clock=clock,
    )
    assert len(trials) == 3  # 30 s spent; a fourth would end at 40 s > 35 s
    assert clock.now <= 35


def test_knobs_the_features_cannot_serve_are_not_tried() -> None:
    clock = _Clock()
    _, _, trials = search(
        TrainConfig(),
        _trainer(clock, {}, cost=1.0),
        budget_s=1000,
        poolings=("avg",),
        flips=False,
        report=lambda _: None,
        clock=clock,
    )
    assert all(t.params["pooling"] == "avg" and not t.params["tta"] for t in trials)


def _tiny_backbone(size: int) -> keras.Model:
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, name="conv")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D(name="features")(x))


class _Quiet:
    def report(self, progress: dict[str, Any]) -> bool:
        return False


def test_a_budgeted_training_extracts_and_scores_train_and_validation_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[set[str]] = []
    extract = feature_cache.extract_features

    def spy(backbone: keras.Model, images_by_split: dict[str, Any], **kwargs: Any) -> Any:
        seen.append(set(images_by_split))
        return extract(backbone, images_by_split, **kwargs)

    monkeypatch.setattr(ml.train, "extract_features", spy)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (24, 16, 16, 3), dtype=np.uint8)
    labels = (np.arange(24) % 2).astype(np.int32)
    outcome = train_classifier(
        _tiny_backbone(16),
        2,
        (images[:16], labels[:16]),
        (images[16:], labels[16:]),
        config=TrainConfig(epochs=2, fine_tune_epochs=0),
        hooks=_Quiet(),
        budget_s=60,
    )
    assert seen == [{"train", "validation"}]
    assert outcome.trials and outcome.config is not None
    assert outcome.model.predict(images[:2], verbose=0).shape == (2, 2)
