"""Figures for reports: segmentation overlays and per-case metric distributions, written as PNG.

Figures are drawn on ``matplotlib.figure.Figure`` objects with the Agg canvas, never through
``pyplot``: nothing opens a window, no global backend is switched in the user's session, and
figures are freed as soon as they are saved. Every file is written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sarcomakit.core.io.atomic import atomic_path

REFERENCE_COLOUR = "#00d000"
PREDICTION_COLOUR = "#ff2020"
DPI = 120


def overlay_figure(image: np.ndarray, reference: np.ndarray | None, prediction: np.ndarray | None,
                   path: str | Path, *, title: str = "", spacing: Sequence[float] | None = None,
                   n_slices: int = 3, crop_to_mask: bool = True,
                   window: tuple[float, float] | None = None) -> Path:
    """Axial slices of a volume with the reference (green) and predicted (red) contours.

    Slices are spread over the axial extent of the masks (reference and prediction together) and
    always include the slice of largest mask area; without any mask, they are spread over the
    middle half of the volume. Pixels are drawn with their physical aspect ratio, and intensities
    are windowed to the 0.5-99.5th percentiles of the pixels shown unless ``window`` is given.

    Args:
        image: the volume, array order (z, y, x).
        reference: reference mask (z, y, x) or None.
        prediction: predicted mask (z, y, x) or None.
        path: where to write the PNG.
        title: figure title (e.g. the case id and its Dice).
        spacing: voxel size in mm in array order (z, y, x); None means isotropic.
        n_slices: number of axial slices shown side by side.
        crop_to_mask: zoom on the masks (their in-plane bounding box plus a margin of half its size,
            at least 15 mm) rather than showing whole slices.
        window: display range ``(low, high)`` of the intensities, e.g. ``(-1000, 400)`` for lung CT.

    Returns:
        ``path``.
    """
    volume = np.asarray(image, dtype=float)
    if volume.ndim != 3:
        raise ValueError(f"image must be a (z, y, x) volume, got shape {volume.shape}")
    masks = {"reference": _mask(reference, volume.shape, "reference"),
             "prediction": _mask(prediction, volume.shape, "prediction")}
    spacing_zyx = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
    union = np.zeros(volume.shape, bool)
    for mask in masks.values():
        if mask is not None:
            union |= mask
    slices = _choose_slices(union, max(int(n_slices), 1))
    rows, cols = _in_plane_window(union, spacing_zyx) if crop_to_mask and union.any() else (
        slice(None), slice(None))
    if window is None:
        shown = volume[slices][:, rows, cols]
        finite = shown[np.isfinite(shown)]
        low, high = np.percentile(finite, [0.5, 99.5]) if finite.size else (0.0, 1.0)
    else:
        low, high = window

    height_mm = (volume[0, rows, cols].shape[0]) * spacing_zyx[1]
    width_mm = (volume[0, rows, cols].shape[1]) * spacing_zyx[2]
    panel_width = 3.4
    panel_height = float(np.clip(panel_width * height_mm / width_mm, 1.5, 6.0))
    figure = Figure(figsize=(panel_width * len(slices), panel_height + 0.9), dpi=DPI)
    axes = figure.subplots(1, len(slices), squeeze=False)[0]
    for ax, z in zip(axes, slices, strict=True):
        ax.imshow(volume[z, rows, cols], cmap="gray", vmin=low, vmax=high, interpolation="nearest",
                  aspect=spacing_zyx[1] / spacing_zyx[2])
        # The reference is drawn wider underneath, so it stays visible where the contours coincide.
        for name, colour, width in (("reference", REFERENCE_COLOUR, 2.2), ("prediction", PREDICTION_COLOUR, 1.2)):
            mask = masks[name]
            if mask is not None and mask[z, rows, cols].any():
                ax.contour(mask[z, rows, cols].astype(float), levels=[0.5], colors=colour, linewidths=width)
        ax.set_title(f"axial slice {z + 1}/{volume.shape[0]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], color=colour, linewidth=2, label=name)
               for name, colour in (("reference", REFERENCE_COLOUR), ("prediction", PREDICTION_COLOUR))
               if masks[name] is not None]
    if handles:
        figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False, fontsize=9)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return save_png(figure, path)


def metric_distribution_figure(table: pd.DataFrame, path: str | Path, columns: Mapping[str, str], *,
                               group: str | None = None, title: str = "",
                               limits: Mapping[str, tuple[float, float]] | None = None) -> Path:
    """Box plots with every case as a dot, one panel per metric column (one box per group).

    Args:
        table: one row per case (and group).
        path: where to write the PNG.
        columns: metric column -> axis label with its unit, e.g. ``{"hd95": "HD95 (mm)"}``.
        group: a column whose values get one box each (e.g. the label name); None for one box.
        title: figure title.
        limits: fixed y-axis limits per column (e.g. ``(0, 1)`` for Dice).

    Returns:
        ``path``.
    """
    limits = dict(limits or {})
    groups = [None] if group is None or table.empty else list(dict.fromkeys(table[group]))
    figure = Figure(figsize=(max(3.0 * len(columns), 4.0), 3.8), dpi=DPI)
    axes = figure.subplots(1, len(columns), squeeze=False)[0]
    rng = np.random.default_rng(0)  # fixed jitter: the same table gives the same picture
    for ax, (column, label) in zip(axes, columns.items(), strict=True):
        data = []
        for value in groups:
            rows = table if value is None else table[table[group] == value]
            values = (pd.to_numeric(rows[column], errors="coerce").to_numpy(dtype=float) if column in rows
                      else np.empty(0))
            data.append(values[np.isfinite(values)])
        positions = np.arange(1, len(groups) + 1)
        if any(d.size for d in data):
            ax.boxplot([d if d.size else [np.nan] for d in data], positions=positions, widths=0.5,
                       whis=(0, 100), showfliers=False, medianprops={"color": "black"})
            for position, values in zip(positions, data, strict=True):
                jitter = rng.uniform(-0.12, 0.12, size=values.size)
                ax.scatter(position + jitter, values, s=14, alpha=0.7, color="#1f77b4", zorder=3)
                if values.size:
                    ax.scatter([position], [values.mean()], marker="D", s=28, color="#d62728", zorder=4,
                               label="mean" if position == positions[0] else None)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes, color="grey")
        names = ["all" if value is None else str(value) for value in groups]
        ax.set_xticks(positions, [f"{name}\n(n={d.size})" for name, d in zip(names, data, strict=True)],
                      fontsize=8)
        ax.set_xlim(0.4, len(groups) + 0.6)
        ax.set_title(label, fontsize=10)
        if column in limits:
            ax.set_ylim(*limits[column])
        ax.grid(axis="y", alpha=0.3)
    if title:
        figure.suptitle(title, fontsize=11)
    figure.text(0.5, 0.01, "box: median and quartiles, whiskers: range; dots: cases; red diamond: mean",
                ha="center", va="bottom", fontsize=8, color="dimgrey")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return save_png(figure, path)


def save_png(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` as a PNG atomically and return the path."""
    target = Path(path)
    with atomic_path(target) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI)
    return target


# ---------------------------------------------------------------------- internals
def _mask(mask: np.ndarray | None, shape: tuple[int, ...], name: str) -> np.ndarray | None:
    if mask is None:
        return None
    array = np.asarray(mask).astype(bool, copy=False)
    if array.shape != shape:
        raise ValueError(f"{name} mask shape {array.shape} differs from image shape {shape}")
    return array


def _choose_slices(union: np.ndarray, n_slices: int) -> list[int]:
    depth = union.shape[0]
    areas = union.reshape(depth, -1).sum(axis=1)
    if areas.any():
        occupied = np.flatnonzero(areas)
        first, last = int(occupied[0]), int(occupied[-1])
        largest = int(np.argmax(areas))
    else:
        first, last = depth // 4, max(depth // 4, (3 * depth) // 4 - 1)
        largest = depth // 2
    # Spread over the extent, keep away from its very ends (thin caps) when there is room.
    inset = (last - first) / (2 * n_slices)
    chosen = {int(round(z)) for z in np.linspace(first + inset, last - inset, n_slices)}
    closest = min(chosen, key=lambda z: abs(z - largest))
    chosen.discard(closest)
    chosen.add(largest)
    return sorted(chosen)


def _in_plane_window(union: np.ndarray, spacing_zyx: np.ndarray) -> tuple[slice, slice]:
    projection = union.any(axis=0)
    windows = []
    for axis, size_mm in ((0, spacing_zyx[1]), (1, spacing_zyx[2])):
        occupied = np.flatnonzero(np.any(projection, axis=1 - axis))
        extent = occupied[-1] - occupied[0] + 1
        margin = max(int(np.ceil(extent / 2)), int(np.ceil(15.0 / size_mm)))
        windows.append(slice(max(int(occupied[0]) - margin, 0), int(occupied[-1]) + margin + 1))
    return windows[0], windows[1]
