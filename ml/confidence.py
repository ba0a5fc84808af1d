"""Whether a classifier's confidence can be taken at its word: calibration errors.

Top-1 confidences are put in ``CALIBRATION_BINS`` equal-width bins of ``(0, 1]``. The expected
calibration error (ECE) is the image-weighted mean gap between a bin's accuracy and its mean
confidence; the maximum calibration error (MCE) the largest gap of a bin with images (Guo et
al., "On Calibration of Modern Neural Networks", 2017). The drift test on confidence
(``ml.drift``) and any client threshold on a score assume the scores mean what they say;
``ml.temperature`` makes them closer to it.

Not to be confused with ``ml.export``'s calibration images, which set a quantized export's
ranges.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

CALIBRATION_BINS = 15
"""Equal-width bins of top-1 confidence for the calibration errors: Guo et al.'s choice, which
most published ECE figures use, so ours compare with them."""


def calibration_bins(
    probabilities: NDArray[Any], labels: NDArray[Any], bins: int = CALIBRATION_BINS
) -> list[dict[str, Any]]:
    """Top-1 confidence against accuracy in equal-width bins: the reliability diagram's data.

    Bin ``i`` holds confidences in ``(i / bins, (i + 1) / bins]``, the first also 0.

    Args:
        probabilities: scores of shape ``(samples, classes)``.
        labels: true class indices, shape ``(samples,)``.
        bins: how many bins.

    Returns:
        One dict per bin: ``lower``, ``upper``, ``count``, and the bin's mean ``confidence`` and
        ``accuracy`` (None for an empty bin).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    confidence_sums = np.bincount(which, weights=confidence, minlength=bins)
    hit_sums = np.bincount(which, weights=correct.astype(np.float64), minlength=bins)
    return [
        {
            "lower": index / bins,
            "upper": (index + 1) / bins,
            "count": int(counts[index]),
            "confidence": float(confidence_sums[index] / counts[index]) if counts[index] else None,
            "accuracy": float(hit_sums[index] / counts[index]) if counts[index] else None,
        }
        for index in range(bins)
    ]


def calibration_errors(
    probabilities: NDArray[Any], labels: NDArray[Any], bins: int = CALIBRATION_BINS
) -> dict[str, Any]:
    """Expected and maximum calibration error of top-1 confidence, with the bins behind them.

    Why: accuracy says how often the model is right, calibration whether its confidence says
    *when*; a confidence threshold or a drift test on confidence is only as good as that.

    Args:
        probabilities: scores of shape ``(samples, classes)``.
        labels: true class indices, shape ``(samples,)``.
        bins: equal-width confidence bins (see ``calibration_bins``).

    Returns:
        ``ece`` (sum over bins of ``count / samples * |accuracy - confidence|``), ``mce`` (the
        largest such gap of a bin with images), both 0.0 without samples; and
        ``reliability``, the bins.
    """
    reliability = calibration_bins(probabilities, labels, bins)
    total = sum(entry["count"] for entry in reliability)
    gaps = [
        (entry["count"], abs(entry["accuracy"] - entry["confidence"]))
        for entry in reliability
        if entry["count"]
    ]
    return {
        "ece": float(sum(count * gap for count, gap in gaps) / total) if total else 0.0,
        "mce": float(max((gap for _, gap in gaps), default=0.0)),
        "reliability": reliability,
    }
