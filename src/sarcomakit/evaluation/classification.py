"""Classification metrics shared by every classifier of the toolkit (grade, slide subtype): ROC AUC
(binary, one-vs-rest and macro), ROC points, confusion matrix, balanced accuracy and calibration.

Labels are class indices ``0..K-1``; :data:`MISSING_LABEL` (-1) marks a case whose class is unknown,
which every function here leaves out. Predictions are class probabilities of shape (N, K) (the
predicted class is their arg-max) or predicted class indices.

The metrics are written in vectorised numpy rather than by calling scikit-learn, because bootstraps
evaluate them thousands of times and need NaN (not an exception) when a resample lacks a class; the
tests check them against scikit-learn.

- ROC AUC of a score for a binary outcome: the Mann-Whitney statistic
  ``AUC = (R_pos - n_pos (n_pos + 1) / 2) / (n_pos n_neg)``, ``R_pos`` the sum of the (tie-averaged)
  ranks of the positive scores, so a tie counts one half.
- Macro one-vs-rest AUC: the unweighted mean of the AUCs of ``p_k`` for class k against the others, over
  the classes whose AUC is defined (scikit-learn's ``multi_class="ovr", average="macro"``); with two
  classes, the AUC of ``p_1`` (scikit-learn's binary convention).
- Balanced accuracy: the mean recall over the classes present, ``mean_c TP_c / (TP_c + FN_c)``.
- Expected calibration error over equal-width bins of [0, 1] (Naeini et al., 2015):
  ``ECE = sum_b (n_b / N) * |mean outcome in b - mean confidence in b|``.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

MISSING_LABEL = -1


def binary_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC of ``score`` for a binary outcome, ties counted one half (module docstring).

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
    """AUC of ``proba[:, k]`` for class k vs the others, for each class (NaN for a class absent or alone)."""
    y, p = labelled(y_true, proba)
    return np.array([binary_auc(y == k, p[:, k]) for k in range(p.shape[1])])


def mean_of_defined(aucs: np.ndarray) -> float:
    """Unweighted mean of the finite AUCs (NaN when none is): the macro average of one-vs-rest AUCs."""
    aucs = np.asarray(aucs, dtype=float)
    return float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan")


def macro_ovr_auc(y_true: np.ndarray, proba: np.ndarray) -> float:
    """Macro one-vs-rest AUC (module docstring); the AUC of ``p_1`` for two classes.

    With three or more classes, at least two AUCs are defined as soon as two classes are present, so
    the macro AUC is NaN only when a single class is present.
    """
    y, p = labelled(y_true, proba)
    if p.shape[1] == 2:
        return binary_auc(y == 1, p[:, 1])
    return mean_of_defined(np.array([binary_auc(y == k, p[:, k]) for k in range(p.shape[1])]))


def roc_points(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates of the ROC curve, one point per distinct score, from (0, 0) to (1, 1)."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    score, positive = score[order], positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(score)), score.size - 1]
    tp = np.cumsum(positive)[last_of_tie]
    fp = np.cumsum(~positive)[last_of_tie]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``C[i, j]`` of cases of true class i predicted as class j, shape (K, K).

    Args:
        y_true: true class indices (:data:`MISSING_LABEL` for unknown: left out).
        y_pred: predicted class indices (e.g. ``proba.argmax(axis=1)``).
        n_classes: K.
    """
    y, pred = _label_pairs(y_true, y_pred, n_classes)
    return np.bincount(y * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int | None = None) -> float:
    """Mean recall over the classes present in ``y_true``: ``mean_c TP_c / (TP_c + FN_c)``.

    Args:
        y_true: true class indices (:data:`MISSING_LABEL` for unknown: left out).
        y_pred: predicted class indices.
        n_classes: K (default: one more than the largest label seen).

    Returns:
        The balanced accuracy, or NaN when no case has a known label.
    """
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if n_classes is None:
        n_classes = int(max(y_true.max(initial=0), y_pred.max(initial=0))) + 1
    matrix = confusion_matrix(y_true, y_pred, n_classes)
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
    """ECE of the top-label confidence ``max_k p_k`` against the arg-max class being right."""
    y, p = labelled(y_true, proba)
    return expected_calibration_error(p.max(axis=1), p.argmax(axis=1) == y, n_bins)


def labelled(y_true: np.ndarray, proba: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities of the cases with a known label, checked against each other.

    Raises:
        ValueError: ``proba`` is not (N, K) for N labels, or a label lies outside ``0..K-1`` and is not
            :data:`MISSING_LABEL`.
    """
    y = np.asarray(y_true, dtype=np.int64).ravel()
    p = np.asarray(proba, dtype=float)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"probabilities must have shape (N, K) with N = {y.size}, got {p.shape}")
    keep = y != MISSING_LABEL
    if np.any((y[keep] < 0) | (y[keep] >= p.shape[1])):
        raise ValueError(f"labels must lie in 0..{p.shape[1] - 1} (or {MISSING_LABEL} for unknown)")
    return y[keep], p[keep]


def _label_pairs(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.int64).ravel()
    pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y.shape != pred.shape:
        raise ValueError(f"true and predicted labels differ in length ({y.size} and {pred.size})")
    keep = y != MISSING_LABEL
    y, pred = y[keep], pred[keep]
    if np.any((y < 0) | (y >= n_classes) | (pred < 0) | (pred >= n_classes)):
        raise ValueError(f"labels must lie in 0..{n_classes - 1} (or {MISSING_LABEL} for an unknown true label)")
    return y, pred
