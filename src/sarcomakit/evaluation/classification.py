"""Histological grade metrics: discrimination, balanced accuracy, calibration, with bootstrap intervals.

Grades are the three ordered classes of :data:`sarcomakit.data.manifest.GRADES` (low, intermediate,
high), encoded 0, 1, 2; a case without a grade is encoded -1 and ignored. Predictions are class
probabilities of shape (N, 3) whose rows sum to one.

Metrics (``grade_metrics`` returns each with a bootstrap 95% interval):

- ``auc_high_vs_rest``: ROC AUC of ``p(high)`` for high vs low/intermediate, the clinically decisive
  split (high-grade sarcomas get peri-operative chemotherapy).
- ``auc_macro_ovr``: mean of the three one-vs-rest AUCs (scikit-learn's ``multi_class="ovr",
  average="macro"``); ``auc_<class>`` each one-vs-rest AUC.
- ``balanced_accuracy``: mean recall over the classes present, of the arg-max prediction.
- ``ece_top_label``: expected calibration error of the top-label confidence ``max_k p_k`` against
  whether the arg-max class is right; ``ece_high``: the same for ``p(high)`` against "is high".
  Both use equal-width bins on [0, 1]:
  ``ECE = sum_b (n_b / N) * |mean outcome in b - mean confidence in b|``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from scipy.stats import rankdata

from sarcomakit.data.manifest import GRADES
from sarcomakit.evaluation.bootstrap import bootstrap_indices

MISSING_GRADE = -1
HIGH = GRADES.index("high")


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


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for a binary outcome, ties counted one half (Mann-Whitney U / (n1 n0)).

    Written with ranks rather than calling ``sklearn.metrics.roc_auc_score`` because the bootstrap
    evaluates it thousands of times and needs NaN (not an exception) when a resample has one class.

    Returns:
        The AUC, or NaN when either class is absent.
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)  # average ranks: a tie counts one half
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def one_vs_rest_aucs(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """AUC of ``proba[:, k]`` for class k vs the others, for each class (NaN for an absent class)."""
    y, p = _labelled(y_true, proba)
    return np.array([binary_auc(y == k, p[:, k]) for k in range(p.shape[1])])


def macro_ovr_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Unweighted mean of the one-vs-rest AUCs over the classes present (and absent from no side)."""
    aucs = one_vs_rest_aucs(y_true, proba)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def high_vs_rest_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """AUC of ``p(high)`` for high grade vs low or intermediate grade."""
    y, p = _labelled(y_true, proba)
    return binary_auc(y == HIGH, p[:, HIGH])


def confusion_matrix(y_true: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """Counts ``C[i, j]`` of cases of true class i predicted (arg-max) as class j, shape (K, K)."""
    y, p = _labelled(y_true, proba)
    k = p.shape[1]
    return np.bincount(y * k + p.argmax(axis=1), minlength=k * k).reshape(k, k)


def balanced_accuracy(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Mean recall of the arg-max prediction over the classes present in ``y_true``."""
    matrix = confusion_matrix(y_true, proba)
    support = matrix.sum(axis=1)
    if not support.any():
        return float("nan")
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def reliability_curve(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Per-bin mean confidence, observed frequency and count over equal-width bins of [0, 1].

    Bin b holds ``edges[b] < c <= edges[b+1]`` (the first bin also holds c = 0).

    Args:
        confidence: predicted probabilities of the outcome, shape (N,).
        outcome: whether the outcome happened (0/1), shape (N,).
        n_bins: number of bins.

    Returns:
        ``edges`` (n_bins + 1), ``mean_confidence``, ``observed_frequency`` (NaN in empty bins)
        and ``count`` (n_bins each).
    """
    confidence = np.asarray(confidence, dtype=float)
    outcome = np.asarray(outcome, dtype=float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        observed = np.bincount(bins, weights=outcome, minlength=n_bins) / count
    return {"edges": edges, "mean_confidence": mean_confidence, "observed_frequency": observed, "count": count}


def expected_calibration_error(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = 10) -> float:
    """``sum_b (n_b / N) |observed_b - confidence_b|`` over equal-width bins (Naeini et al., 2015)."""
    curve = reliability_curve(confidence, outcome, n_bins)
    count = curve["count"]
    if count.sum() == 0:
        return float("nan")
    filled = count > 0
    gaps = np.abs(curve["observed_frequency"][filled] - curve["mean_confidence"][filled])
    return float(np.sum(count[filled] * gaps) / count.sum())


def top_label_ece(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """ECE of the top-label confidence ``max_k p_k`` against the arg-max being right."""
    y, p = _labelled(y_true, proba)
    return expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == y, n_bins)


def high_grade_ece(y_true: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> float:
    """ECE of ``p(high)`` against the case being high grade."""
    y, p = _labelled(y_true, proba)
    return expected_calibration_error(p[:, HIGH], y == HIGH, n_bins)


GRADE_METRIC_NAMES: tuple[str, ...] = ("auc_high_vs_rest", "auc_macro_ovr", *(f"auc_{g}" for g in GRADES),
                                        "balanced_accuracy", "ece_top_label", "ece_high")


def _grade_values(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Every metric of :data:`GRADE_METRIC_NAMES` on labelled cases (one-vs-rest AUCs computed once)."""
    aucs = [binary_auc(y == k, p[:, k]) for k in range(p.shape[1])]
    finite = [a for a in aucs if np.isfinite(a)]
    values = {"auc_high_vs_rest": aucs[HIGH], "auc_macro_ovr": float(np.mean(finite)) if finite else float("nan")}
    values.update({f"auc_{name}": aucs[k] for k, name in enumerate(GRADES)})
    values["balanced_accuracy"] = balanced_accuracy(y, p)
    values["ece_top_label"] = expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == y)
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
    y, p = _labelled(encode_grades(y_true), proba)
    results = resampled_intervals(_grade_values(y, p), lambda idx: _grade_values(y[idx], p[idx]),
                                  n=len(y), n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
    results["n"] = {"value": float(len(y)), "ci_low": float("nan"), "ci_high": float("nan")}
    return results


def resampled_intervals(values: dict[str, float], metrics_of: Callable[[np.ndarray], dict[str, float]], n: int,
                        n_bootstrap: int, seed: int, confidence: float) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of several metrics computed on the same case resamples.

    Args:
        values: the point estimates, by metric name.
        metrics_of: computes every metric on the cases at the given indices.
        n: number of cases.
        n_bootstrap: number of resamples (0: intervals are NaN).
        seed, confidence: resampling seed and interval coverage.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high"}}``; NaN bounds when fewer than two resamples
        gave a finite value.
    """
    draws: dict[str, list[float]] = {name: [] for name in values}
    if n_bootstrap > 0 and n > 0:
        for idx in bootstrap_indices(n, n_bootstrap, seed):
            for name, value in metrics_of(idx).items():
                draws[name].append(value)
    alpha = 1.0 - confidence
    results = {}
    for name, value in values.items():
        sample = np.asarray(draws[name], dtype=float)
        sample = sample[np.isfinite(sample)]
        low, high = np.quantile(sample, [alpha / 2, 1 - alpha / 2]) if sample.size >= 2 else (np.nan, np.nan)
        results[name] = {"value": float(value), "ci_low": float(low), "ci_high": float(high)}
    return results


def _labelled(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"probabilities must have shape (N, K) with N = {y.size}, got {p.shape}")
    keep = y != MISSING_GRADE
    if np.any((y[keep] < 0) | (y[keep] >= p.shape[1])):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1} (or -1 for unknown)")
    return y[keep], p[keep]
