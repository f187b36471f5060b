"""Slide-level classification metrics with bootstrap confidence intervals.

Balanced accuracy, one-vs-rest AUC per class and its macro average, and the confusion matrix, computed
from true labels ``y`` (n,) in ``0..C-1`` and predicted probabilities ``p`` (n, C). The point estimates are
written here in vectorised numpy (rank formula for the AUC) so that thousands of bootstrap resamples stay
fast; the tests check them against scikit-learn.

Confidence intervals are percentile bootstrap intervals: resample the slides (or, given ``groups``, the
patients, keeping each patient's slides together) with replacement ``n_boot`` times, recompute the metric,
and take the 2.5th and 97.5th percentiles. Resamples where a metric is undefined (a class absent) are
dropped for that metric.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import rankdata


def binary_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney rank formula.

    ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)`` with ``R_pos`` the sum of the (tie-averaged)
    ranks of the positive scores. Returns NaN when one class is absent.
    """
    y_true = np.asarray(y_true, dtype=bool)
    n_pos = int(y_true.sum())
    n_neg = y_true.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y_true].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_class_auc(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """One-vs-rest AUC of each class (C,); NaN for a class absent or present alone."""
    y_true = np.asarray(y_true)
    proba = np.asarray(proba)
    return np.array([binary_auc(y_true == c, proba[:, c]) for c in range(proba.shape[1])])


def macro_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Unweighted mean of the one-vs-rest AUCs (for two classes, the AUC of class 1).

    Classes absent from ``y_true`` are ignored; NaN if fewer than two classes are present.
    """
    proba = np.asarray(proba)
    if proba.shape[1] == 2:
        return binary_auc(np.asarray(y_true) == 1, proba[:, 1])
    aucs = per_class_auc(y_true, proba)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).sum() >= 2 else float("nan")


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts (C, C): rows are true classes, columns predicted classes."""
    matrix = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true``: ``mean_c TP_c / (TP_c + FN_c)``."""
    y_true = np.asarray(y_true, dtype=int)
    y_pred = np.asarray(y_pred, dtype=int)
    n_classes = n_classes or int(max(y_true.max(), y_pred.max())) + 1
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    support = matrix.sum(axis=1)
    present = support > 0
    return float((np.diag(matrix)[present] / support[present]).mean())


@dataclass
class Estimate:
    """A point estimate with its bootstrap 95% interval (NaN bounds when undefined)."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.value:.3f} (95% CI {self.low:.3f}-{self.high:.3f})"

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def _bootstrap_indices(n: int, groups: np.ndarray | None, n_boot: int,
                       rng: np.random.Generator) -> list[np.ndarray]:
    if groups is None:
        return [rng.integers(0, n, n) for _ in range(n_boot)]
    unique, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(unique))]
    return [np.concatenate([members[g] for g in rng.integers(0, len(unique), len(unique))])
            for _ in range(n_boot)]


def bootstrap_ci(metric: Callable[[np.ndarray], Any], n: int, n_boot: int = 1000, seed: int = 0,
                 groups: Sequence[Any] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Percentile bootstrap of a metric of the sample indices.

    Args:
        metric: ``fn(indices) -> float or array`` computed on the resampled rows.
        n: number of rows.
        n_boot: number of resamples.
        seed: random seed.
        groups: optional cluster id per row (patient); whole clusters are resampled.

    Returns:
        (point estimate, 2.5th percentile, 97.5th percentile), elementwise for array metrics.
    """
    rng = np.random.default_rng(seed)
    point = np.asarray(metric(np.arange(n)), dtype=float)
    group_array = None if groups is None else np.asarray(groups)
    samples = np.array([np.asarray(metric(idx), dtype=float)
                        for idx in _bootstrap_indices(n, group_array, n_boot, rng)])
    with np.errstate(all="ignore"):
        finite = np.isfinite(samples)
        low = np.full(point.shape, np.nan)
        high = np.full(point.shape, np.nan)
        flat_samples = samples.reshape(n_boot, -1)
        flat_finite = finite.reshape(n_boot, -1)
        for j in range(flat_samples.shape[1]):
            values = flat_samples[flat_finite[:, j], j]
            if values.size:
                low.reshape(-1)[j], high.reshape(-1)[j] = np.percentile(values, [2.5, 97.5])
    return point, low, high


def classification_metrics(y_true: Sequence[int], proba: np.ndarray, classes: Sequence[str],
                           n_boot: int = 1000, seed: int = 0,
                           groups: Sequence[Any] | None = None) -> dict[str, Any]:
    """Slide-level metrics with bootstrap 95% intervals.

    Args:
        y_true: true class index per slide (n,).
        proba: predicted class probabilities (n, C); the prediction is the arg-max.
        classes: class names (C,).
        n_boot: bootstrap resamples.
        seed: random seed of the bootstrap.
        groups: patient id per slide, to resample patients rather than slides.

    Returns:
        ``{"n", "balanced_accuracy", "macro_auc", "per_class_auc": {class: ...}, "confusion_matrix",
        "confusion_matrix_ci_low", "confusion_matrix_ci_high", "classes"}`` where each metric is an
        :class:`Estimate` and the confusion matrix holds counts (its intervals are of the counts).
    """
    y = np.asarray(y_true, dtype=int)
    p = np.asarray(proba, dtype=float)
    n_classes = len(classes)
    pred = p.argmax(axis=1)
    out: dict[str, Any] = {"n": int(y.size), "classes": list(classes)}
    for key, fn in (("balanced_accuracy", lambda i: balanced_accuracy(y[i], pred[i], n_classes)),
                    ("macro_auc", lambda i: macro_auc(y[i], p[i]))):
        value, low, high = bootstrap_ci(fn, y.size, n_boot, seed, groups)
        out[key] = Estimate(float(value), float(low), float(high))
    value, low, high = bootstrap_ci(lambda i: per_class_auc(y[i], p[i]), y.size, n_boot, seed, groups)
    out["per_class_auc"] = {c: Estimate(float(value[k]), float(low[k]), float(high[k]))
                            for k, c in enumerate(classes)}
    value, low, high = bootstrap_ci(lambda i: confusion_matrix(y[i], pred[i], n_classes), y.size, n_boot, seed,
                                    groups)
    out["confusion_matrix"] = value.astype(int)
    out["confusion_matrix_ci_low"] = low
    out["confusion_matrix_ci_high"] = high
    return out


def metrics_to_json(metrics: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of :func:`classification_metrics`'s output."""
    def convert(value: Any) -> Any:
        if isinstance(value, Estimate):
            return value.as_dict()
        if isinstance(value, dict):
            return {k: convert(v) for k, v in value.items()}
        if isinstance(value, np.ndarray):
            return value.tolist()
        return value

    return convert(metrics)
