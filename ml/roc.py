"""How well a classifier's scores rank each class above the others: one-vs-rest ROC and AUC.

A class's AUC is the chance that a random image of it scores higher for it than a random image
of another class, ties counting half. A class with no image in the labels, or with nothing
but its own, has no such pair: its AUC is undefined (``None``), it is named in
``auc_undefined`` and left out of ``macro_auc``, where scikit-learn would raise. Numpy alone:
scikit-learn is no dependency of the workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray


def roc_curve(
    scores: NDArray[Any], positive: NDArray[np.bool_]
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    """One class's ROC curve: false and true positive rates at every distinct score threshold.

    Images with equal scores pass or fail a threshold together, so ties give one diagonal step
    rather than an order that depends on how the images were listed.

    Args:
        scores: each image's score for the class, shape ``(samples,)``.
        positive: whether each image is of the class.

    Returns:
        ``(fpr, tpr)``, both from 0 up to 1, one point more than there are distinct scores;
        None when the images are all positive or all negative (no curve is defined).
    """
    positives = int(positive.sum())
    negatives = int(positive.size) - positives
    if positives == 0 or negatives == 0:
        return None
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    ranked = np.asarray(scores, dtype=np.float64)[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]
    true_positives = np.cumsum(positive[order])[last_of_tie]
    false_positives = last_of_tie + 1 - true_positives
    return (
        np.r_[0.0, false_positives / negatives],
        np.r_[0.0, true_positives / positives],
    )


def roc_auc(fpr: NDArray[np.float64], tpr: NDArray[np.float64]) -> float:
    """The area under a ROC curve, by trapezoids (``numpy.trapezoid`` is numpy 2 only).

    Why trapezoids: on the tie-grouped curve of ``roc_curve`` they equal the Mann-Whitney
    statistic, a tied pair of images counting half.
    """
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def one_vs_rest_aucs(
    probabilities: NDArray[Any], labels: NDArray[np.int64], class_names: Sequence[str]
) -> tuple[list[float | None], dict[str, Any]]:
    """Each class's AUC against the rest, and their macro average over the classes that have one.

    Args:
        probabilities: scores of shape ``(samples, classes)``, columns in ``class_names`` order.
        labels: true class indices, shape ``(samples,)``.
        class_names: class names, in label order.

    Returns:
        The AUCs in class order (None where undefined), and the report's summary:
        ``macro_auc`` (None when no class has an AUC) and ``auc_undefined`` (class names).
    """
    aucs: list[float | None] = []
    for index in range(len(class_names)):
        curve = roc_curve(probabilities[:, index], labels == index)
        aucs.append(None if curve is None else roc_auc(*curve))
    defined = [auc for auc in aucs if auc is not None]
    return aucs, {
        "macro_auc": float(np.mean(defined)) if defined else None,
        "auc_undefined": [name for name, auc in zip(class_names, aucs, strict=True) if auc is None],
    }
