"""Slide-level classification metrics with bootstrap confidence intervals over patients.

Balanced accuracy, one-vs-rest AUC per class and its macro average, and the confusion matrix, computed
from true labels ``y`` (n,) in ``0..C-1`` and predicted probabilities ``p`` (n, C) by the shared metrics of
:mod:`sarcomakit.evaluation.classification`. What is particular to slides: a patient often has several
slides, which are not independent, so intervals are percentile bootstrap intervals over patients
(:func:`~sarcomakit.evaluation.bootstrap.bootstrap_metric` with ``groups``): resample the patients with
replacement, keep each patient's slides together, recompute the metrics, and take the 2.5th and 97.5th
percentiles. Resamples where a metric is undefined (a class absent) are dropped for that metric.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sarcomakit.evaluation.bootstrap import bootstrap_metric
from sarcomakit.evaluation.classification import (
    balanced_accuracy,
    confusion_matrix,
    macro_ovr_auc,
    one_vs_rest_aucs,
)
from sarcomakit.evaluation.formatting import format_estimate


@dataclass
class Estimate:
    """A point estimate with its bootstrap 95% interval (NaN bounds when undefined)."""

    value: float
    low: float
    high: float

    def __str__(self) -> str:
        return format_estimate(self.value, self.low, self.high)

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


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

    def metrics_of(idx: np.ndarray) -> np.ndarray:
        """Every metric on the slides at ``idx``, packed in one vector so that all share the resamples."""
        return np.concatenate([[balanced_accuracy(y[idx], pred[idx], n_classes), macro_ovr_auc(y[idx], p[idx])],
                               one_vs_rest_aucs(y[idx], p[idx]),
                               confusion_matrix(y[idx], pred[idx], n_classes).ravel()])

    value, low, high = bootstrap_metric(metrics_of, y.size, n_resamples=n_boot, seed=seed, groups=groups)
    estimates = [Estimate(float(v), float(lo), float(hi)) for v, lo, hi in zip(value, low, high, strict=True)]
    matrix = slice(2 + n_classes, None)
    return {"n": int(y.size), "classes": list(classes),
            "balanced_accuracy": estimates[0], "macro_auc": estimates[1],
            "per_class_auc": dict(zip(classes, estimates[2:2 + n_classes], strict=True)),
            "confusion_matrix": value[matrix].reshape(n_classes, n_classes).astype(int),
            "confusion_matrix_ci_low": low[matrix].reshape(n_classes, n_classes),
            "confusion_matrix_ci_high": high[matrix].reshape(n_classes, n_classes)}


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
