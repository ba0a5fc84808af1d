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
from ml.trials import (
    FINE_TUNE_TRIAL_EPOCHS,
    KNOBS,
    better,
    fine_tune_epochs_within,
    noise_margin,
    record_trial,
    search,
)


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


def test_a_fine_tune_trial_gets_the_epochs_that_fit_and_none_when_one_does_not() -> None:
    # 100 training images at 1.5 passes and 20 validation images: 170 passes an epoch
    assert fine_tune_epochs_within(10 * 170 * 0.01, 0.01, (100, 20)) == FINE_TUNE_TRIAL_EPOCHS
    assert fine_tune_epochs_within(2.5 * 170 * 0.01, 0.01, (100, 20)) == 2
    assert fine_tune_epochs_within(0.9 * 170 * 0.01, 0.01, (100, 20)) == 0
    assert fine_tune_epochs_within(-5, 0.01, (100, 20)) == 0
    assert fine_tune_epochs_within(100, 0.0, (100, 20)) == 0


def _separable(count: int) -> tuple[Any, Any]:
    rng = np.random.default_rng(1)
    labels = (np.arange(count) % 2).astype(np.int32)
    images = rng.integers(0, 60, (count, 16, 16, 3)).astype(np.uint8)
    images[labels == 1, :8] += 150  # class 1 is bright at the top
    return images, labels


def _first_trial_only(config: TrainConfig, train: Any, **_: Any) -> Any:
    """The search cut to its first trial (the starting config, really trained)."""
    result = train(config)
    return config, result, [record_trial(1, config, result)]


@pytest.mark.parametrize(("rate", "kept"), [(3e-2, True), (10.0, False)])  # 10: it diverges
def test_what_a_budget_leaves_buys_a_fine_tune_trial_kept_only_if_validation_improves(
    monkeypatch: pytest.MonkeyPatch, rate: float, kept: bool
) -> None:
    monkeypatch.setattr(ml.train, "search", _first_trial_only)
    images, labels = _separable(48)
    train, validation = (images[:32], labels[:32]), (images[32:], labels[32:])
    weak_head = TrainConfig(  # a head that learns nothing; the fine-tune has to
        epochs=1,
        learning_rate=1e-6,
        fine_tune_epochs=0,
        unfreeze=0.0,
        fine_tune_learning_rate=rate,
        batch_size=8,
    )
    backbone = _tiny_backbone(16)
    before = [weights.copy() for weights in backbone.get_weights()]
    outcome = train_classifier(
        backbone,
        2,
        train,
        validation,
        config=weak_head,
        hooks=_Quiet(),
        budget_s=600,
        budget_fine_tune=1.0,
    )
    head, tuned = (trial.document() for trial in outcome.trials)
    assert head["params"]["unfreeze"] == 0.0 and head["params"]["fine_tune_epochs"] == 0
    assert tuned["params"]["unfreeze"] == 1.0 and tuned["params"]["fine_tune_epochs"] >= 1
    assert outcome.config is not None and (outcome.config.unfreeze == 1.0) is kept
    # the model scores as the trial it kept; an undone fine-tune leaves the backbone as it was
    probabilities = outcome.model.predict(validation[0], verbose=0)
    accuracy = float(np.mean(np.argmax(probabilities, 1) == validation[1]))
    assert accuracy == pytest.approx((tuned if kept else head)["val_accuracy"])
    unchanged = all(
        np.array_equal(a, b) for a, b in zip(before, backbone.get_weights(), strict=True)
    )
    assert unchanged is not kept
    assert not any(layer.trainable for layer in backbone.layers if layer.weights)


def test_no_fine_tune_trial_without_the_time_or_without_the_ask(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ml.train, "search", _first_trial_only)
    images, labels = _separable(32)
    train, validation = (images[:24], labels[:24]), (images[24:], labels[24:])
    frozen = TrainConfig(epochs=2, fine_tune_epochs=0, unfreeze=0.0)
    for budget_s, fraction in ((600.0, None), (0.001, 0.5)):
        outcome = train_classifier(
            _tiny_backbone(16),
            2,
            train,
            validation,
            config=frozen,
            hooks=_Quiet(),
            budget_s=budget_s,
            budget_fine_tune=fraction,
        )
        assert all(t.params["unfreeze"] == 0.0 for t in outcome.trials)
        assert outcome.config is not None and outcome.config.unfreeze == 0.0


def test_a_move_must_beat_the_validation_splits_noise_to_be_kept() -> None:
    def result(correct: int) -> HeadResult:
        return HeadResult([], {}, correct / 400, 0.1, 1.0, epochs=1, val_images=400)

    assert noise_margin(0.98, 400) == pytest.approx(0.007, abs=1e-4)  # 2.8 images
    assert noise_margin(1.0, 400) == pytest.approx(1 / 400)  # never below one image
    assert noise_margin(0.9, 0) == 0  # unknown count: any gain
    assert not better(result(393), result(392))  # one image is noise
    assert not better(result(394), result(392))
    assert better(result(395), result(392))  # three images beat 2.8
    lower_loss = HeadResult([], {}, 392 / 400, 0.01, 1.0, epochs=1, val_images=400)
    assert not better(lower_loss, result(392))  # loss breaks no tie
