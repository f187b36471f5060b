"""Histological grade metrics: discrimination, balanced accuracy, calibration, with bootstrap intervals.

Grades are the three ordered classes of :data:`sarcomakit.data.manifest.GRADES` (low, intermediate,
high), encoded 0, 1, 2; a case without a grade is encoded -1 and ignored. Predictions are class
probabilities of shape (N, 3) whose rows sum to one. The metrics themselves are those of
:mod:`sarcomakit.evaluation.classification`.

Metrics (``grade_metrics`` returns each with a bootstrap 95% interval):

- ``auc_high_vs_rest``: ROC AUC of ``p(high)`` for high vs low/intermediate, the clinically decisive
  split (high-grade sarcomas get peri-operative chemotherapy).
- ``auc_macro_ovr``: mean of the three one-vs-rest AUCs (scikit-learn's ``multi_class="ovr",
  average="macro"``); ``auc_<class>`` each one-vs-rest AUC.
- ``balanced_accuracy``: mean recall over the classes present, of the arg-max prediction.
- ``ece_top_label``: expected calibration error of the top-label confidence ``max_k p_k`` against
  whether the arg-max class is right; ``ece_high``: the same for ``p(high)`` against "is high".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sarcomakit.data.manifest import GRADES
from sarcomakit.evaluation.bootstrap import resampled_intervals
from sarcomakit.evaluation.classification import (
    MISSING_LABEL,
    balanced_accuracy,
    binary_auc,
    expected_calibration_error,
    labelled,
    mean_of_defined,
)

MISSING_GRADE = MISSING_LABEL
HIGH = GRADES.index("high")
GRADE_METRIC_NAMES: tuple[str, ...] = ("auc_high_vs_rest", "auc_macro_ovr", *(f"auc_{g}" for g in GRADES),
                                        "balanced_accuracy", "ece_top_label", "ece_high")


def encode_grades(grades: Sequence[str | int | None] | np.ndarray) -> np.ndarray:
    """Grade labels as class indices: names from :data:`GRADES` or integers 0-2; None/-1/NaN become -1.

    Raises:
        ValueError: for a name or integer that is not a grade.
    """
    encoded = np.empty(len(grades), dtype=np.int64)
    for i, grade in enumerate(grades):
        if grade is None or (isinstance(grade, float) and np.isnan(grade)):
            encoded[i] = MISSING_GRADE
        elif isinstance(grade, str):
            name = grade.strip().lower()
            if name not in GRADES:
                raise ValueError(f"unknown grade {grade!r}; expected one of {GRADES}")
            encoded[i] = GRADES.index(name)
        else:
            value = int(grade)
            if value not in (MISSING_GRADE, *range(len(GRADES))):
                raise ValueError(f"grade index {grade!r} is not in -1..{len(GRADES) - 1}")
            encoded[i] = value
    return encoded


def high_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """AUC of ``p(high)`` for high grade vs low or intermediate grade."""
    y, p = labelled(y_true, proba)
    return binary_auc(y == HIGH, p[:, HIGH])


def high_grade_ece(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """ECE of ``p(high)`` against the case being high grade."""
    y, p = labelled(y_true, proba)
    return expected_calibration_error(p[:, HIGH], y == HIGH, n_bins)


def grade_values(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`GRADE_METRIC_NAMES` on labelled cases (one-vs-rest AUCs computed once).

    Args:
        y: grade indices 0-2 (no unknown grade).
        p: class probabilities, shape (N, 3).
    """
    aucs = [binary_auc(y == k, p[:, k]) for k in range(p.shape[1])]
    values = {"auc_high_vs_rest": aucs[HIGH], "auc_macro_ovr": mean_of_defined(np.array(aucs))}
    values.update({f"auc_{name}": aucs[k] for k, name in enumerate(GRADES)})
    predicted = p.argmax(axis=1)
    values["balanced_accuracy"] = balanced_accuracy(y, predicted, p.shape[1])
    values["ece_top_label"] = expected_calibration_error(p.max(axis=1), predicted == y)
    values["ece_high"] = expected_calibration_error(p[:, HIGH], y == HIGH)
    return values


def grade_metrics(y_true: Sequence[str | int | None] | np.ndarray, proba: np.ndarray, n_bootstrap: int = 1000,
                  seed: int = 0, confidence: float = 0.95) -> dict[str, dict[str, float]]:
    """Every grade metric of :data:`GRADE_METRIC_NAMES` with a percentile bootstrap interval.

    Cases are resampled jointly (label and probabilities together); resamples where a metric is
    undefined (e.g. no high-grade case drawn) are left out of its interval.

    Args:
        y_true: grades as names or indices; None or -1 for unknown (those cases are dropped).
        proba: class probabilities, shape (N, 3).
        n_bootstrap: number of bootstrap resamples (0 for point estimates only).
        seed: seed of the resampling.
        confidence: coverage of the intervals.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high"}}`` plus ``{"n": {"value": cases used, ...}}``.
    """
    y, p = labelled(encode_grades(y_true), proba)
    results = resampled_intervals(grade_values(y, p), lambda idx: grade_values(y[idx], p[idx]),
                                  n=len(y), n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
    results["n"] = {"value": float(len(y)), "ci_low": float("nan"), "ci_high": float("nan")}
    return results
