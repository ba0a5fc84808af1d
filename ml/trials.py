"""A time budget's search: heads of a few configurations on cached features, the best kept.

Like Custom Vision's advanced training, a budget buys a search. Every trial trains a head on
the frozen backbone's cached features (``ml.head_training``), which costs seconds, not the
minutes of a pass over the backbone, and is scored on the validation split. The search is a
greedy walk from the automatic choice: each knob in turn (pooling, label smoothing, test-time
flip, mixup, learning rate, dropout) is moved to each of its other values, and a move is kept
when it scores better on validation (accuracy first, then loss). It ends when the knobs run
out or the next trial would not fit in the budget (its cost estimated from the trials so far).

The test split is never passed in: selection sees train and validation features only.
"""

from __future__ import annotations

import dataclasses
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


def _better(result: HeadResult, best: HeadResult) -> bool:
    return (result.val_accuracy, -result.val_loss) > (best.val_accuracy, -best.val_loss)


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
    trials = [_trial(1, config, best)]
    report(trials)
    knob_moves = _candidates(config, poolings, flips)
    for move in knob_moves:
        spent = clock() - started
        per_trial = spent / len(trials)
        if spent + per_trial > budget_s:
            break
        candidate = dataclasses.replace(best_config, **move)
        result = train(candidate)
        trials.append(_trial(len(trials) + 1, candidate, result))
        report(trials)
        if _better(result, best):
            best_config, best = candidate, result
    return best_config, best, trials


def _trial(number: int, config: Any, result: HeadResult) -> Trial:
    params = {knob: getattr(config, knob) for knob, _ in KNOBS}
    return Trial(
        number, params, result.val_accuracy, result.val_loss, result.seconds, result.epochs
    )
