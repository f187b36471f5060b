"""Clinical figures as PNG: one-vs-rest ROC curves, a reliability diagram, Kaplan-Meier curves by risk group.

Figures are drawn on matplotlib's Agg canvas directly (no global backend switch, no display needed)
and written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sarcomakit.data.manifest import GRADES
from sarcomakit.evaluation.classification import (
    binary_auc,
    expected_calibration_error,
    reliability_curve,
    roc_points,
)
from sarcomakit.evaluation.formatting import format_number, p_value_phrase
from sarcomakit.evaluation.grade import HIGH, encode_grades
from sarcomakit.evaluation.survival import kaplan_meier, logrank_test, risk_groups
from sarcomakit.reporting.figures import save_png

GROUP_COLOURS = {"low risk": "#1f77b4", "high risk": "#d62728"}


def plot_roc_curves(y_true: np.ndarray, proba: np.ndarray, path: str | Path, title: str = "Grade: ROC curves") -> Path:
    """One-vs-rest ROC curve of each grade (AUC in the legend), with the chance diagonal.

    Args:
        y_true: grades (names or indices; unknown -1/None are left out).
        proba: class probabilities (N, 3).
        path: PNG to write.
    """
    y = encode_grades(y_true)
    p = np.asarray(proba, dtype=float)[y >= 0]
    y = y[y >= 0]
    figure, axes = _figure((4.8, 4.6))
    axes.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for k, name in enumerate(GRADES):
        positive = y == k
        if positive.all() or not positive.any():
            continue
        fpr, tpr = roc_points(positive, p[:, k])
        axes.plot(fpr, tpr, linewidth=2 if k == HIGH else 1.4,
                  label=f"{name} vs rest (AUC {format_number(binary_auc(positive, p[:, k]))}, n={int(positive.sum())})")
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize=8, frameon=False)
    return _save(figure, path)


def plot_reliability_diagram(y_true: np.ndarray, proba: np.ndarray, path: str | Path, n_bins: int = 10,
                             title: str = "Grade: calibration") -> Path:
    """Reliability diagram of ``p(high)`` and of the top-label confidence, with case counts per bin.

    Each point is a bin of equal width: its mean predicted probability against the observed frequency;
    the ECE of each curve is in the legend. Points lie on the diagonal for a calibrated model.
    """
    y = encode_grades(y_true)
    p = np.asarray(proba, dtype=float)[y >= 0]
    y = y[y >= 0]
    curves = {"p(high) vs high grade": (p[:, HIGH], y == HIGH),
              "top-label confidence vs correct": (p.max(axis=1), p.argmax(axis=1) == y)}
    figure = Figure(figsize=(4.8, 5.6))
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfect calibration")
    width = 1.0 / n_bins
    for shift, (label, (confidence, outcome)) in zip((-0.25, 0.25), curves.items(), strict=True):
        curve = reliability_curve(confidence, outcome, n_bins)
        filled = curve["count"] > 0
        ece = expected_calibration_error(confidence, outcome, n_bins)
        top.plot(curve["mean_confidence"][filled], curve["observed_frequency"][filled], marker="o",
                 label=f"{label} (ECE {format_number(ece)})")
        centres = curve["edges"][:-1] + width / 2
        bottom.bar(centres + shift * width, curve["count"], width=width / 2, label=label)
    top.set(xlim=(0, 1), ylim=(0, 1), ylabel="observed frequency", title=title)
    top.legend(loc="upper left", fontsize=8, frameon=False)
    bottom.set(xlabel="predicted probability", ylabel="cases")
    figure.tight_layout()
    return _save(figure, path)


def plot_kaplan_meier(time: np.ndarray, event: np.ndarray, risk: np.ndarray, path: str | Path,
                      cutoff: float | None = None, time_unit: str = "days",
                      title: str = "Survival by predicted risk group") -> Path:
    """Kaplan-Meier curves of the predicted low- and high-risk groups, censoring ticks, log-rank p-value.

    Args:
        time, event, risk: follow-up, event (1 died) and predicted risk (higher = worse) per case.
        path: PNG to write.
        cutoff: risk separating the groups (``risk > cutoff`` is high); default the median risk. Give
            the training set's median for an honest split of held-out cases.
        time_unit: label of the time axis.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event, dtype=float)
    risk = np.asarray(risk, dtype=float)
    threshold = float(np.median(risk)) if cutoff is None else float(cutoff)
    high = risk_groups(risk, threshold)
    p_value = logrank_test(time, event, high)["p_value"]
    figure = Figure(figsize=(5.6, 5.0))
    FigureCanvasAgg(figure)
    axes, table = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [5, 1]})
    groups = [(name, members) for name, members in (("low risk", ~high), ("high risk", high)) if members.any()]
    for name, members in groups:
        curve = kaplan_meier(time[members], event[members])
        colour = GROUP_COLOURS[name]
        axes.step(np.r_[0.0, curve.times], np.r_[1.0, curve.survival], where="post", color=colour, linewidth=2,
                  label=f"{name} (n={int(members.sum())}, deaths={int(event[members].sum())})")
        censored_times = np.unique(time[members][event[members] == 0])
        axes.plot(censored_times, curve(censored_times), linestyle="none", marker="|", markersize=9,
                  markeredgewidth=1.5, color=colour)
    axes.plot([], [], linestyle="none", marker="|", color="0.3", label="censored")
    axes.plot([], [], linestyle="none", label=f"log-rank {p_value_phrase(p_value)}")
    axes.set(xlim=(-0.03 * float(time.max()), float(time.max()) * 1.03), ylim=(0, 1.02),
             ylabel="survival probability", title=title)
    axes.legend(loc="best", fontsize=8, frameon=True, framealpha=0.9)
    axes.grid(alpha=0.3)
    # numbers at risk under the curves, at the time axis ticks (the table clinicians read with a KM plot)
    ticks = [t for t in axes.get_xticks() if 0 <= t <= time.max()]
    for row, (name, members) in enumerate(reversed(groups)):
        for t in ticks:
            table.text(t, row, str(int(np.sum(time[members] >= t))), ha="center", va="center", fontsize=8,
                       color=GROUP_COLOURS[name])
    table.set(ylim=(-0.6, len(groups) - 0.4), yticks=range(len(groups)),
              yticklabels=[name for name, _ in reversed(groups)], xlabel=f"time ({time_unit})")
    table.set_title("number at risk", fontsize=8, loc="left")
    table.tick_params(axis="y", length=0, labelsize=8, pad=14)
    for side in ("top", "right", "left"):
        table.spines[side].set_visible(False)
    return _save(figure, path)


def _figure(size: tuple[float, float]) -> tuple[Figure, Any]:
    figure = Figure(figsize=size)
    FigureCanvasAgg(figure)
    return figure, figure.add_subplot()


def _save(figure: Figure, path: str | Path) -> Path:
    figure.tight_layout()
    return save_png(figure, path)
