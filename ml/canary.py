"""Is the canary better than the active version, on the labels of the traffic both served?

While a canary runs, unpinned jobs are split between the active version and the canary, so
the feedback clients send on those jobs measures both on the same live traffic over the same
period. The two online accuracies are compared with the two-proportion z-test (computed as
the 2x2 chi-square test without continuity correction, ``scipy.stats.chi2_contingency``,
which is the same test), and the difference gets an Agresti-Caffo 95 % confidence interval
(the Wald interval after adding one right and one wrong label to each version: unlike the
plain Wald interval it does not shrink to a point when an accuracy is 0 or 1, so one label
each way is not yet a verdict). The verdict is ``better`` when the whole interval is above
zero, ``worse`` when it is below, else ``undecided``; a policy also asks for enough labels
before it acts on one (``min_canary_feedback``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from scipy import stats

from ml.drift import DriftRule, monitoring_report
from ml.registry import ModelRegistry

CONFIDENCE = 0.95
"""Coverage of the interval around the accuracy difference."""

Labelled = Sequence[tuple[str, str | None, float | None]]
"""A window's predictions as ``(predicted label, true label or None, time or None)``."""


def _accuracy(entries: Labelled, since: float) -> dict[str, Any]:
    judged = [(p, t) for p, t, at in entries if t is not None and at is not None and at >= since]
    correct = sum(p == t for p, t in judged)
    return {
        "count": len(judged),
        "correct": correct,
        "accuracy": correct / len(judged) if judged else None,
    }


def _p_value(candidate: Mapping[str, Any], active: Mapping[str, Any]) -> float | None:
    table = [
        [candidate["correct"], candidate["count"] - candidate["correct"]],
        [active["correct"], active["count"] - active["correct"]],
    ]
    if min(candidate["count"], active["count"]) == 0:
        return None
    if any(sum(column) == 0 for column in zip(*table, strict=True)):
        return 1.0  # both all right (or all wrong): no difference to find
    return float(stats.chi2_contingency(table, correction=False).pvalue)


def compare_canary(
    active_entries: Labelled,
    canary_entries: Labelled,
    *,
    since: float,
    drift: Mapping[str, bool | None],
) -> dict[str, Any]:
    """Both versions' online accuracy since ``since``, their difference and the verdict.

    Args:
        active_entries: the active version's window.
        canary_entries: the canary's window.
        since: when the canary started; earlier predictions are not compared.
        drift: each version's drift verdict, ``{"active", "canary"}``.

    Returns:
        ``{"active", "candidate"`` (each ``{count, correct, accuracy}``), ``"difference"``
        (candidate minus active), ``"interval"``, ``"p_value"``, ``"test"``, ``"drift"``,
        ``"verdict"}``.
    """
    active = _accuracy(active_entries, since)
    candidate = _accuracy(canary_entries, since)
    found: dict[str, Any] = {
        "active": active,
        "candidate": candidate,
        "difference": None,
        "interval": None,
        "p_value": _p_value(candidate, active),
        "test": "two-proportion z-test (2x2 chi-square, no continuity correction); "
        f"Agresti-Caffo {CONFIDENCE:.0%} interval",
        "drift": dict(drift),
        "verdict": "undecided",
    }
    if active["accuracy"] is None or candidate["accuracy"] is None:
        return found
    difference = candidate["accuracy"] - active["accuracy"]
    # Agresti-Caffo: the Wald interval of the difference after one right and one wrong label
    # more on each side.
    n_active, n_candidate = active["count"] + 2, candidate["count"] + 2
    p_active = (active["correct"] + 1) / n_active
    p_candidate = (candidate["correct"] + 1) / n_candidate
    centre = p_candidate - p_active
    spread = math.sqrt(
        p_active * (1 - p_active) / n_active + p_candidate * (1 - p_candidate) / n_candidate
    )
    z = float(stats.norm.ppf(0.5 + CONFIDENCE / 2))
    low, high = centre - z * spread, centre + z * spread
    verdict = "better" if low > 0 else "worse" if high < 0 else "undecided"
    return {**found, "difference": difference, "interval": [low, high], "verdict": verdict}


Window = Sequence[tuple[str, float, str | None, float | None]]
"""A version's newest predictions: ``(label, confidence, true label, time)``, newest first."""


def canary_block(
    registry: ModelRegistry,
    model: str,
    window_of: Callable[[int], Window],
    *,
    rule: DriftRule,
    builtin_reference: Path | None = None,
) -> dict[str, Any] | None:
    """The ``canary`` block of the monitoring documents of a model's active version and its
    canary, or None when no canary runs.

    Args:
        registry: where the model, its canary and the versions' references are.
        model: the model's id.
        window_of: a version's kept window (``imgq.monitoring.MonitorLog.window``).
        rule: when a drift test counts.
        builtin_reference: the operator's reference for built-in versions, if any.
    """
    canary = registry.canary(model)
    if canary is None:
        return None
    active = registry.active_version(model)
    windows = {"active": window_of(active), "canary": window_of(int(canary["version"]))}
    drift = {}
    for role, version in (("active", active), ("canary", int(canary["version"]))):
        entries = [(label, score, truth) for label, score, truth, _ in windows[role]]
        reference = registry.reference(model, version, builtin_reference)
        drift[role] = monitoring_report(entries, reference, rule)["drifted"]
    comparison = compare_canary(
        [(label, truth, at) for label, _, truth, at in windows["active"]],
        [(label, truth, at) for label, _, truth, at in windows["canary"]],
        since=float(canary["started_at"]),
        drift=drift,
    )
    return {
        "version": int(canary["version"]),
        "active_version": active,
        "traffic": float(canary["traffic"]),
        "started_at": float(canary["started_at"]),
        **comparison,
    }
