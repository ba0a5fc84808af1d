"""A time budget's search: heads of a few configurations on cached features, the best kept.

Like Custom Vision's advanced training, a budget buys a search. Every trial trains a head on
the frozen backbone's cached features (``ml.head_training``), which costs seconds, not the
minutes of a pass over the backbone, and is scored on the validation split. The search is a
greedy walk from the automatic choice: each knob in turn (pooling, label smoothing, test-time
flip, mixup, learning rate, dropout) is moved to each of its other values, and a move is kept
only when its validation accuracy beats the best so far by more than the split's noise: one
binomial standard error, ``sqrt(p (1 - p) / n)`` over ``n`` images, and one image. Within that
margin the automatic choice stays: on 400 validation images, taking every move that scored
one image better picked a configuration that scored 0.8 point worse on the test split
(README). Validation loss breaks no ties: label smoothing raises it by design. The search
ends when the knobs run out or the next trial would not fit in the budget (its cost estimated
from the trials so far).

Where ``auto`` left the backbone frozen, what remains of the budget may then buy one last
trial that is not on cached features: the top of the backbone fine-tuned under the best head
(``ml.train``), as many epochs as fit (``fine_tune_epochs_within``), kept only when it scores
better on validation too.

The test split is never passed in: selection sees train and validation features only.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ml.head_training import HeadResult

KNOBS: tuple[tuple[str, tuple[Any, ...]], ...] = (
    ("pooling", ("avg", "grid")),
    ("label_smoothing", (0.0, 0.1, 0.2)),
    ("tta", (False, True)),
    ("mixup", (0.0, 0.2)),
    ("learning_rate", (3e-4, 1e-3, 3e-3)),
    ("dropout", (0.2, 0.5)),
)
"""The knobs a budget searches and the values each may take."""

FINE_TUNE_TRIAL_EPOCHS = 5
"""The most epochs a budget's fine-tune trial trains."""

FINE_TUNE_STEP_COST = 1.5
"""A training image's cost in a fine-tune epoch, in backbone forward passes (measured about
one on a CPU with the top 20 % unfrozen; the backward pass of a larger part costs more)."""


@dataclass
class Trial:
    """One configuration tried, and how it scored on the validation split."""

    number: int
    params: dict[str, Any]
    val_accuracy: float
    val_loss: float
    seconds: float
    epochs: int

    def document(self) -> dict[str, Any]:
        """As listed in the job's progress and result."""
        return {
            "trial": self.number,
            "params": self.params,
            "val_accuracy": round(self.val_accuracy, 5),
            "val_loss": round(self.val_loss, 5),
            "seconds": round(self.seconds, 2),
            "epochs": self.epochs,
        }


def noise_margin(accuracy: float, images: int) -> float:
    """The validation accuracy a move must gain by more than to be believed: one binomial
    standard error of ``accuracy`` over ``images`` images, or one image if that is more (0
    when the count is unknown)."""
    if images <= 0:
        return 0.0
    return max(math.sqrt(accuracy * (1 - accuracy) / images), 1 / images)


def better(result: HeadResult, best: HeadResult) -> bool:
    """Whether ``result`` beats ``best`` on validation by more than the split's noise."""
    margin = noise_margin(best.val_accuracy, best.val_images)
    return result.val_accuracy > best.val_accuracy + margin + 1e-9


def _candidates(config: Any, poolings: tuple[str, ...], flips: bool) -> list[dict[str, Any]]:
    """Every single-knob move from ``config``, in the order of ``KNOBS``."""
    moves = []
    for knob, values in KNOBS:
        for value in values:
            if value == getattr(config, knob):
                continue
            if (knob == "pooling" and value not in poolings) or (knob == "tta" and not flips):
                continue
            moves.append({knob: value})
    return moves


def search(
    config: Any,
    train: Callable[[Any], HeadResult],
    *,
    budget_s: float,
    poolings: tuple[str, ...],
    flips: bool,
    report: Callable[[list[Trial]], None],
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Any, HeadResult, list[Trial]]:
    """Walk the knobs from ``config`` within ``budget_s`` and return the best found.

    Args:
        config: the starting ``TrainConfig`` (the automatic choice); always trained first.
        train: trains and scores one head for a config (validation split only).
        budget_s: seconds the search may take, the first trial included.
        poolings: poolings the cached features hold.
        flips: whether mirrored features are cached (``tta`` can be tried).
        report: called with the trials so far after each one (the job's progress).
        clock: seconds, monotonic (tests pass a fake one to check the bookkeeping).

    Returns:
        The best config, its trained head, and every trial in the order run.
    """
    started = clock()
    best_config, best = config, train(config)
    trials = [record_trial(1, config, best)]
    report(trials)
    knob_moves = _candidates(config, poolings, flips)
    for move in knob_moves:
        spent = clock() - started
        per_trial = spent / len(trials)
        if spent + per_trial > budget_s:
            break
        candidate = dataclasses.replace(best_config, **move)
        result = train(candidate)
        trials.append(record_trial(len(trials) + 1, candidate, result))
        report(trials)
        if better(result, best):
            best_config, best = candidate, result
    return best_config, best, trials


def fine_tune_epochs_within(
    remaining_s: float, seconds_per_image: float, images: tuple[int, int]
) -> int:
    """How many epochs of a fine-tune trial fit in ``remaining_s`` (0: none, so none is run).

    Args:
        remaining_s: what is left of the budget.
        seconds_per_image: the backbone's forward pass per image, as extracting features took.
        images: training and validation images (each epoch trains on one, scores the other).
    """
    train, validation = images
    epoch_s = seconds_per_image * (train * FINE_TUNE_STEP_COST + validation)
    if epoch_s <= 0:
        return 0
    return max(0, min(FINE_TUNE_TRIAL_EPOCHS, math.floor(remaining_s / epoch_s)))


def record_trial(
    number: int, config: Any, result: HeadResult, *, fine_tuned: bool = False
) -> Trial:
    """A trial as listed: its knobs, how much of the backbone it fine-tuned (none for a head on
    cached features), and its scores."""
    params = {knob: getattr(config, knob) for knob, _ in KNOBS}
    params["unfreeze"] = config.unfreeze if fine_tuned else 0.0
    params["fine_tune_epochs"] = config.fine_tune_epochs if fine_tuned else 0
    return Trial(
        number, params, result.val_accuracy, result.val_loss, result.seconds, result.epochs
    )
