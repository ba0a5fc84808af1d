"""How good a trained classifier is: metrics from its predictions, and the pictures of them.

Metrics are computed with numpy alone (no scikit-learn on the workers) and returned as plain
JSON-able values, so they can be stored in a version's ``meta.json`` and shown by the API as
they are. A ratio whose denominator is zero (precision of a class never predicted, recall of a
class absent from the labels, F1 when both are 0) is 0.0, as scikit-learn's
``zero_division=0``; such classes still count in the macro average.

The report also says how well the scores rank (one-vs-rest AUC, ``ml.roc``) and how far they
can be taken at their word (calibration errors, ``ml.confidence``).

Plots are drawn on a ``matplotlib.figure.Figure`` with the Agg canvas directly, not through
``pyplot``: no global figure registry and no GUI backend, which suits worker processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import NDArray

from ml.confidence import calibration_errors
from ml.roc import one_vs_rest_aucs, roc_auc, roc_curve

ANNOTATED_CLASSES = 30
"""Largest confusion matrix whose cells get their count written in them (beyond: unreadable)."""
LABELLED_CURVES = 10
"""Most ROC curves drawn with a legend entry each; more are drawn thin and unlabelled."""


def _ratio(numerator: NDArray[np.float64], denominator: NDArray[np.float64]) -> NDArray[np.float64]:
    """Element-wise ``numerator / denominator``, 0.0 where the denominator is 0."""
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, numerator / safe, 0.0)


def _check_inputs(
    probabilities: NDArray[Any], labels: NDArray[Any], class_names: Sequence[str], top_k: int
) -> None:
    if probabilities.ndim != 2 or probabilities.shape[1] != len(class_names):
        raise ValueError(
            f"probabilities must have shape (samples, {len(class_names)} classes). "
            f"Received shape {probabilities.shape}."
        )
    if labels.shape != (probabilities.shape[0],):
        raise ValueError(
            f"labels must have shape ({probabilities.shape[0]},). Received shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError(
            f"labels must lie in [0, {len(class_names)}). "
            f"Received labels from {labels.min()} to {labels.max()}."
        )
    if len(set(class_names)) != len(class_names) or len(class_names) < 1:
        raise ValueError(f"class_names must be distinct and non-empty. Received {class_names}.")
    if top_k < 1:
        raise ValueError(f"top_k must be 1 or more. Received top_k={top_k}.")


def _class_scores(matrix: NDArray[np.int64], class_names: Sequence[str]) -> dict[str, Any]:
    """``per_class``, ``macro_avg`` (plain mean over classes) and ``weighted_avg`` (by support)."""
    hits = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    precision = _ratio(hits, matrix.sum(axis=0).astype(np.float64))
    recall = _ratio(hits, support.astype(np.float64))
    f1 = _ratio(2 * precision * recall, precision + recall)
    total = int(support.sum())
    weights = support / total if total else np.zeros(len(support))
    scores = {"precision": precision, "recall": recall, "f1": f1}
    return {
        "per_class": {
            name: {
                **{metric: float(values[index]) for metric, values in scores.items()},
                "support": int(support[index]),
            }
            for index, name in enumerate(class_names)
        },
        "macro_avg": {metric: float(values.mean()) for metric, values in scores.items()},
        "weighted_avg": {metric: float(values @ weights) for metric, values in scores.items()},
    }


def evaluate_predictions(
    probabilities: NDArray[Any],
    labels: NDArray[Any],
    class_names: Sequence[str],
    top_k: int = 5,
) -> dict[str, Any]:
    """Score a classifier's predictions on labelled images, in a form the API can return.

    The predicted class is the most probable one (the first on ties, as ``argmax``).

    Args:
        probabilities: scores of shape ``(samples, classes)``, columns in ``class_names`` order.
        labels: true class indices, shape ``(samples,)``.
        class_names: class names, in label order.
        top_k: ``top_k_accuracy`` counts a hit when the true class is among this many best
            scores; capped at the number of classes.

    Returns:
        ``accuracy``, ``top_k_accuracy``, ``top_k``, ``per_class`` (name -> precision, recall,
        f1, support, and ``auc``: one-vs-rest, None when undefined), ``macro_avg`` and
        ``weighted_avg`` (precision, recall, f1), ``macro_auc`` (mean of the defined AUCs;
        None if there is none) and ``auc_undefined`` (the classes left out of it),
        ``ece``, ``mce`` and ``reliability`` (``calibration_errors``), ``confusion_matrix``
        (rows true class, columns predicted, ``class_names`` order), ``classes`` and
        ``count``. With no samples every rate and calibration error is 0.0.

    Raises:
        ValueError: shapes that do not match, labels out of range, duplicate class names, or
            ``top_k`` below 1.
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels).astype(np.int64)
    _check_inputs(probabilities, labels, class_names, top_k)
    classes, count, k = len(class_names), int(labels.size), min(top_k, len(class_names))
    predicted = probabilities.argmax(axis=1) if count else np.zeros(0, dtype=np.int64)
    matrix = np.bincount(labels * classes + predicted, minlength=classes * classes)
    matrix = matrix.reshape(classes, classes).astype(np.int64)
    best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    top_k_hits = int((best == labels[:, None]).any(axis=1).sum())
    scores = _class_scores(matrix, class_names)
    aucs, auc_summary = one_vs_rest_aucs(probabilities, labels, class_names)
    for name, auc in zip(class_names, aucs, strict=True):
        scores["per_class"][name]["auc"] = auc
    return {
        "accuracy": float(np.trace(matrix) / count) if count else 0.0,
        "top_k_accuracy": top_k_hits / count if count else 0.0,
        "top_k": k,
        **scores,
        **auc_summary,
        **calibration_errors(probabilities, labels),
        "confusion_matrix": matrix.tolist(),
        "classes": list(class_names),
        "count": count,
    }


def _save(figure: Figure, path: Path) -> None:
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=100)
    figure.clear()


def plot_training_curves(
    history: dict[str, list[float]], path: Path, phase_boundary: int | None = None
) -> None:
    """Draw loss and metric curves per epoch to a PNG, so a user can see over- or under-fitting.

    One panel per metric (``loss``, ``accuracy``...), each with its ``val_`` counterpart.

    Args:
        history: per-epoch values over all epochs of both phases, as Keras' ``History.history``
            (``loss``, ``val_loss``, ``accuracy``, ``val_accuracy``...).
        path: the PNG file to write.
        phase_boundary: epochs in the first phase (frozen backbone); a dashed vertical line is
            drawn between that epoch and the next, when fine-tuning starts.

    Raises:
        ValueError: an empty ``history``, or ``phase_boundary`` outside ``[0, epochs]``.
    """
    names = {name.removeprefix("val_") for name, values in history.items() if values}
    metrics = sorted(names, key=lambda name: (name != "loss", name))
    if not metrics:
        raise ValueError(f"history must hold at least one metric. Received {history}.")
    epochs = max(len(values) for values in history.values())
    if phase_boundary is not None and not 0 <= phase_boundary <= epochs:
        raise ValueError(
            f"phase_boundary must lie in [0, {epochs}]. Received phase_boundary={phase_boundary}."
        )
    figure = Figure(figsize=(6, 3 * len(metrics)), layout="constrained")
    axes = figure.subplots(len(metrics), 1, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics, strict=True):
        for name, style in ((metric, "-"), (f"val_{metric}", "--")):
            values = history.get(name, [])
            if values:
                ax.plot(range(1, len(values) + 1), values, style, marker=".", label=name)
        if phase_boundary is not None and 0 < phase_boundary < epochs:
            ax.axvline(phase_boundary + 0.5, color="grey", linestyle=":", label="fine-tuning")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
        ax.grid(alpha=0.3)
    _save(figure, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path
) -> None:
    """Draw a confusion matrix to a PNG, so a user sees which classes the model mixes up.

    Args:
        matrix: counts, rows the true class and columns the predicted one.
        class_names: class names in the matrix's order.
        path: the PNG file to write.

    Raises:
        ValueError: ``matrix`` is not square with one row per class name.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    classes = len(class_names)
    if classes < 1 or counts.shape != (classes, classes):
        raise ValueError(
            f"matrix must be {classes}x{classes}, one row per class. Received {counts.shape}."
        )
    side = min(4 + 0.4 * classes, 30)
    figure = Figure(figsize=(side, side), layout="constrained")
    ax = figure.subplots()
    image = ax.imshow(counts, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=ax, shrink=0.8)
    ticks = np.arange(classes)
    ax.set_xticks(ticks, list(class_names), rotation=45, ha="right")
    ax.set_yticks(ticks, list(class_names))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if classes <= ANNOTATED_CLASSES:
        threshold = counts.max() / 2
        for (row, column), value in np.ndenumerate(counts):
            colour = "white" if value > threshold else "black"
            ax.text(column, row, str(value), ha="center", va="center", color=colour)
    _save(figure, path)


def plot_roc_curves(
    probabilities: NDArray[Any], labels: NDArray[Any], class_names: Sequence[str], path: Path
) -> None:
    """Draw each class's one-vs-rest ROC curve to a PNG, so a user sees how each class ranks.

    Accuracy hides how far apart right and wrong answers score; the curves show what a stricter
    or looser score threshold would trade for each class. Classes without a curve (see
    ``roc_curve``) are named in the title; beyond ``LABELLED_CURVES`` classes the curves are
    drawn thin and without legend entries.

    Args:
        probabilities: scores of shape ``(samples, classes)``, columns in ``class_names`` order.
        labels: true class indices, shape ``(samples,)``.
        class_names: class names, in label order.
        path: the PNG file to write.

    Raises:
        ValueError: shapes that do not match, labels out of range or duplicate class names.
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels).astype(np.int64)
    _check_inputs(probabilities, labels, class_names, 1)
    figure = Figure(figsize=(6, 6), layout="constrained")
    ax = figure.subplots()
    labelled = len(class_names) <= LABELLED_CURVES
    missing = []
    for index, name in enumerate(class_names):
        curve = roc_curve(probabilities[:, index], labels == index)
        if curve is None:
            missing.append(name)
            continue
        label = f"{name} (AUC {roc_auc(*curve):.3f})" if labelled else None
        ax.plot(*curve, linewidth=1.5 if labelled else 0.6, label=label)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate")
    ax.set_title("one-vs-rest ROC" + (f"; no curve for {', '.join(missing)}" if missing else ""))
    ax.legend(loc="lower right", fontsize="small")
    ax.grid(alpha=0.3)
    _save(figure, path)


def plot_reliability_diagram(reliability: Sequence[dict[str, Any]], ece: float, path: Path) -> None:
    """Draw accuracy against confidence per bin to a PNG, so a user sees over- or
    under-confidence (bars under the diagonal: the model is surer than it is right).

    Args:
        reliability: the bins of ``calibration_bins`` (``lower``, ``upper``, ``count``,
            ``confidence``, ``accuracy``).
        ece: the expected calibration error, written in the title.
        path: the PNG file to write.

    Raises:
        ValueError: no bins.
    """
    if not reliability:
        raise ValueError(f"reliability must hold at least one bin. Received {reliability}.")
    lower = np.array([entry["lower"] for entry in reliability], dtype=np.float64)
    width = np.array([entry["upper"] for entry in reliability], dtype=np.float64) - lower
    filled = [entry for entry in reliability if entry["count"]]
    figure = Figure(figsize=(6, 7), layout="constrained")
    ax, counts_ax = figure.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    ax.bar(
        [entry["lower"] for entry in filled],
        [entry["accuracy"] for entry in filled],
        width=[entry["upper"] - entry["lower"] for entry in filled],
        align="edge",
        edgecolor="black",
        label="accuracy",
    )
    ax.plot(
        [entry["confidence"] for entry in filled],
        [entry["confidence"] for entry in filled],
        "o",
        color="tab:red",
        label="mean confidence",
    )
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="accuracy")
    ax.set_title(f"reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    counts = [entry["count"] for entry in reliability]
    counts_ax.bar(lower, counts, width=width, align="edge", color="grey", edgecolor="black")
    counts_ax.set(xlabel="top-1 confidence", ylabel="images")
    counts_ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    _save(figure, path)
