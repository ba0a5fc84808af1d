"""Has what a model version sees moved away from what it was tested on?

Two tests, each comparing a window of live predictions with the version's *reference*: the
predictions it made on its own test split when it was trained (``reference_from_predictions``).

- **Predicted classes**: Pearson's chi-square goodness of fit of the observed top-1 class
  counts against the reference class frequencies (``scipy.stats.chisquare``). Classes whose
  expected count is under 5 are pooled (the usual validity rule of the test), smallest first;
  with fewer than two bins left there is no test.
- **Top-1 confidence**: the two-sample Kolmogorov-Smirnov test of the observed confidences
  against the reference sample (``scipy.stats.ks_2samp``). A model shown images unlike its
  training data is typically less sure of them, even when the class mix looks normal.

A test reports ``drifted`` when its p-value is under ``alpha`` and the window holds at least
``min_predictions``; without a reference (the built-in model, unless the operator gives one)
the statistics are ``None``, never a false alarm.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from ml.registry import ModelRegistry, split_model_id

MIN_EXPECTED = 5.0
"""Smallest expected count of a chi-square bin; smaller classes are pooled."""
CONFIDENCE_BINS = 10
"""Equal-width bins of top-1 confidence in the report's histogram (0.1 wide): enough to see a
version grow unsure (mass moving left), few enough that a hundred predictions fill them."""


@dataclass(frozen=True)
class DriftRule:
    """When a test's result counts as drift."""

    alpha: float
    """p-value under which a test reports drift."""
    min_predictions: int
    """Fewest predictions in the window for any test to report drift."""


def reference_from_predictions(
    probabilities: NDArray[np.float32], classes: Sequence[str]
) -> dict[str, Any]:
    """A version's reference: its predicted-class frequencies and top-1 confidences on its
    test split.

    Args:
        probabilities: the version's class probabilities for its test images, one row each.
        classes: the class names, in column order.

    Returns:
        ``{"classes": {label: fraction}, "confidences": [top-1 probability, ...]}``.
    """
    top = np.argmax(probabilities, axis=1)
    counts = np.bincount(top, minlength=len(classes))
    total = max(int(counts.sum()), 1)
    return {
        "classes": {name: float(counts[i]) / total for i, name in enumerate(classes)},
        "confidences": [float(p) for p in probabilities.max(axis=1)],
    }


def _pooled(
    observed: Mapping[str, int], reference: Mapping[str, float]
) -> tuple[list[float], list[float]]:
    """Observed and expected counts per bin: classes in order of expected count, smallest
    first, pooled until a bin expects at least ``MIN_EXPECTED``; a remainder joins the last."""
    total = sum(observed.values())
    labels = sorted(
        set(reference) | set(observed), key=lambda name: (reference.get(name, 0.0), name)
    )
    bins_observed: list[float] = []
    bins_expected: list[float] = []
    pool_observed = pool_expected = 0.0
    for label in labels:
        pool_observed += observed.get(label, 0)
        pool_expected += reference.get(label, 0.0) * total
        if pool_expected >= MIN_EXPECTED:
            bins_observed.append(pool_observed)
            bins_expected.append(pool_expected)
            pool_observed = pool_expected = 0.0
    if bins_observed:
        bins_observed[-1] += pool_observed
        bins_expected[-1] += pool_expected
    return bins_observed, bins_expected


def class_drift(
    observed: Mapping[str, int], reference: Mapping[str, float] | None, rule: DriftRule
) -> dict[str, Any]:
    """Chi-square test of the observed top-1 classes against the reference frequencies.

    Returns:
        ``{"observed", "reference", "statistic", "p_value", "drifted"}``; the last three are
        ``None`` without a reference or with fewer than two bins after pooling.
    """
    found: dict[str, Any] = {
        "observed": dict(sorted(observed.items())),
        "reference": dict(reference) if reference is not None else None,
        "statistic": None,
        "p_value": None,
        "drifted": None,
    }
    total = sum(observed.values())
    if reference is None or total == 0:
        return found
    bins_observed, bins_expected = _pooled(observed, reference)
    if len(bins_observed) < 2:
        return found
    scale = sum(bins_observed) / sum(bins_expected)  # chisquare wants equal sums exactly
    statistic, p_value = stats.chisquare(bins_observed, [e * scale for e in bins_expected])
    p_value = float(p_value)
    return {
        **found,
        "statistic": float(statistic),
        "p_value": p_value,
        "drifted": bool(p_value < rule.alpha and total >= rule.min_predictions),
    }


def confidence_drift(
    observed: Sequence[float], reference: Sequence[float] | None, rule: DriftRule
) -> dict[str, Any]:
    """Two-sample Kolmogorov-Smirnov test of observed top-1 confidences against the reference.

    Returns:
        ``{"observed_mean", "reference_mean", "histogram", "statistic", "p_value",
        "drifted"}`` (``histogram`` as ``confidence_histogram``); the test's fields are ``None``
        without a reference sample or without observations.
    """
    found: dict[str, Any] = {
        "observed_mean": float(np.mean(observed)) if observed else None,
        "reference_mean": float(np.mean(reference)) if reference else None,
        "histogram": confidence_histogram(observed, reference),
        "statistic": None,
        "p_value": None,
        "drifted": None,
    }
    if not observed or not reference:
        return found
    result = stats.ks_2samp(observed, reference)
    p_value = float(result.pvalue)
    return {
        **found,
        "statistic": float(result.statistic),
        "p_value": p_value,
        "drifted": bool(p_value < rule.alpha and len(observed) >= rule.min_predictions),
    }


def confidence_histogram(
    observed: Sequence[float], reference: Sequence[float] | None
) -> dict[str, Any]:
    """Top-1 confidences counted in ``CONFIDENCE_BINS`` equal bins of [0, 1], the window's and
    the reference's side by side: what the KS statistic summarises in one number, as a shape
    people can read (the console draws it).

    Args:
        observed: the window's top-1 confidences.
        reference: the version's test-split confidences, or None without a reference.

    Returns:
        ``{"edges": [0.0, 0.1, …, 1.0], "observed": [count per bin], "reference": [fraction per
        bin] or None}``; the last bin includes 1.0.
    """
    edges = np.linspace(0.0, 1.0, CONFIDENCE_BINS + 1)
    counts, _ = np.histogram(np.clip(np.asarray(observed, dtype=np.float64), 0.0, 1.0), edges)
    shares = None
    if reference:
        expected, _ = np.histogram(
            np.clip(np.asarray(reference, dtype=np.float64), 0.0, 1.0), edges
        )
        shares = [float(count) / len(reference) for count in expected]
    return {
        "edges": [round(float(edge), 2) for edge in edges],
        "observed": [int(count) for count in counts],
        "reference": shares,
    }


def feedback_accuracy(
    entries: Sequence[tuple[str, float, str | None]], buckets: int
) -> dict[str, Any]:
    """Online accuracy of the predictions that received a true label.

    Args:
        entries: ``(predicted label, confidence, true label or None)``, newest first.
        buckets: how many consecutive slices of the window ``accuracy_series`` has.

    Returns:
        ``{"count", "correct", "accuracy", "per_class": {true label: {"count", "correct",
        "accuracy"}}, "accuracy_series": [accuracy or None per slice, oldest first]}``.
    """
    per_class: dict[str, dict[str, Any]] = {}
    for label, _, truth in entries:
        if truth is not None:
            found = per_class.setdefault(truth, {"count": 0, "correct": 0})
            found["count"] += 1
            found["correct"] += int(label == truth)
    for found in per_class.values():
        found["accuracy"] = found["correct"] / found["count"]
    count = sum(found["count"] for found in per_class.values())
    correct = sum(found["correct"] for found in per_class.values())
    oldest_first = list(reversed(entries))
    size = max(1, -(-len(oldest_first) // max(buckets, 1)))
    series = []
    for start in range(0, len(oldest_first), size):
        labelled = [(p, t) for p, _, t in oldest_first[start : start + size] if t is not None]
        series.append(sum(p == t for p, t in labelled) / len(labelled) if labelled else None)
    return {
        "count": count,
        "correct": correct,
        "accuracy": correct / count if count else None,
        "per_class": dict(sorted(per_class.items())),
        "accuracy_series": series,
    }


def monitoring_report(
    entries: Sequence[tuple[str, float, str | None]],
    reference: Mapping[str, Any] | None,
    rule: DriftRule,
    buckets: int = 20,
) -> dict[str, Any]:
    """The drift tests and the online accuracy of one window of a version's predictions.

    Args:
        entries: ``(predicted label, confidence, true label or None)``, newest first.
        reference: the version's reference (``reference_from_predictions``), or None.
        rule: when a test counts as drift.
        buckets: slices of the window in ``feedback.accuracy_series``.

    Returns:
        ``{"predictions", "classes", "confidence", "feedback", "drifted"}``: ``drifted`` is
        whether either test reports drift (None when neither could run).
    """
    classes = class_drift(
        Counter(label for label, _, _ in entries),
        reference["classes"] if reference is not None else None,
        rule,
    )
    confidence = confidence_drift(
        [score for _, score, _ in entries],
        reference["confidences"] if reference is not None else None,
        rule,
    )
    verdicts = [test["drifted"] for test in (classes, confidence) if test["drifted"] is not None]
    return {
        "predictions": len(entries),
        "classes": classes,
        "confidence": confidence,
        "feedback": feedback_accuracy(entries, buckets),
        "drifted": any(verdicts) if verdicts else None,
    }


def version_monitoring(
    registry: ModelRegistry,
    model: str,
    version: int,
    entries: Sequence[tuple[str, float, str | None]],
    *,
    window: int,
    rule: DriftRule,
    builtin_reference: Path | None = None,
) -> dict[str, Any]:
    """The monitoring document of one version (``GET /models/<name>/versions/<v>/monitoring``).

    Args:
        registry: where the version and its reference are.
        model: the model's id.
        version: the version.
        entries: its newest predictions, as ``monitoring_report`` takes them.
        window: how many predictions were asked for.
        rule: when a test counts as drift.
        builtin_reference: the operator's reference for built-in versions, if any.
    """
    meta = registry.get(model, version)
    report = monitoring_report(entries, registry.reference(model, version, builtin_reference), rule)
    return {
        "model": split_model_id(model)[1],
        "version": version,
        "window": window,
        **report,
        "test_accuracy": meta.metrics.get("accuracy"),
    }
