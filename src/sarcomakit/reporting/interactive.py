"""Figures of interactive segmentation: Dice against rounds per method, and annotation campaigns per strategy.

Drawn on a ``matplotlib.figure.Figure`` with the Agg canvas (never ``pyplot``), like every figure of
:mod:`sarcomakit.reporting`, and written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sarcomakit.reporting.figures import DPI, save_png


def dice_rounds_figure(curve: pd.DataFrame, path: str | Path, *, title: str = "",
                       thresholds: Sequence[float] = (0.85, 0.90)) -> Path:
    """Mean Dice per round for each method, its confidence band, and the NoC thresholds as dotted lines.

    Args:
        curve: :meth:`~sarcomakit.interactive.evaluate.InteractiveEvaluation.curve_frame` (columns
            ``method``, ``round``, ``mean_dice``, ``ci_low``, ``ci_high``, ``n_cases``).
        path: where to write the PNG.
        title: the figure title.
        thresholds: Dice levels drawn as horizontal reference lines.

    Returns:
        ``path``.
    """
    missing = {"method", "round", "mean_dice", "ci_low", "ci_high"} - set(curve.columns)
    if missing:
        raise ValueError(f"the curve table lacks column(s) {sorted(missing)}")
    figure = Figure(figsize=(6.0, 4.0), dpi=DPI)
    axes = figure.subplots()
    for method, rows in curve.groupby("method", sort=False):
        rows = rows.sort_values("round")
        n_cases = int(rows["n_cases"].iloc[0]) if "n_cases" in rows else None
        label = f"{method} (n={n_cases})" if n_cases is not None else str(method)
        line = axes.plot(rows["round"], rows["mean_dice"], marker="o", markersize=3, label=label)[0]
        axes.fill_between(rows["round"], rows["ci_low"], rows["ci_high"], color=line.get_color(), alpha=0.2,
                          linewidth=0)
    for threshold in thresholds:
        axes.axhline(threshold, color="0.6", linestyle=":", linewidth=1)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("interaction round")
    axes.set_ylabel("Dice (mean, 95% bootstrap interval)")
    axes.set_ylim(0.0, 1.0)
    if len(curve):
        axes.set_xlim(1, max(int(curve["round"].max()), 2))
    return _finish(figure, axes, path, title)


def campaign_figure(summary: pd.DataFrame, path: str | Path, *, title: str = "") -> Path:
    """Held-out Dice against cumulative annotation interactions, one line per strategy, the band spanning the seeds.

    Args:
        summary: :func:`~sarcomakit.interactive.campaign.campaign_summary` (columns ``strategy``,
            ``cumulative_interactions``, ``heldout_dice``, ``dice_min``, ``dice_max``, ``n_seeds``).
        path: where to write the PNG.
        title: the figure title.
    """
    missing = {"strategy", "cumulative_interactions", "heldout_dice", "dice_min", "dice_max"} - set(summary.columns)
    if missing:
        raise ValueError(f"the campaign summary lacks column(s) {sorted(missing)}")
    figure = Figure(figsize=(6.0, 4.0), dpi=DPI)
    axes = figure.subplots()
    for strategy, rows in summary.groupby("strategy", sort=False):
        rows = rows.sort_values("cumulative_interactions")
        seeds = int(rows["n_seeds"].iloc[0]) if "n_seeds" in rows else None
        label = f"{strategy} ({seeds} seeds)" if seeds else str(strategy)
        line = axes.plot(rows["cumulative_interactions"], rows["heldout_dice"], marker="o", markersize=3,
                         label=label)[0]
        axes.fill_between(rows["cumulative_interactions"], rows["dice_min"], rows["dice_max"],
                          color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xlabel("annotation effort (cumulative interactions)")
    axes.set_ylabel("held-out Dice (mean, range over seeds)")
    axes.set_ylim(0.0, 1.0)
    return _finish(figure, axes, path, title)


def _finish(figure: Figure, axes: Axes, path: str | Path, title: str) -> Path:
    """Grid, legend and title of a Dice plot, then the PNG written atomically."""
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    return save_png(figure, path)
