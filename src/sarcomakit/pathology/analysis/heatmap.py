"""Attention heatmaps: tile-level tables, overlays on the slide thumbnail, grids of the most attended tiles.

Tiles are given by their top-left corner ``coords`` (N, 2) and side ``size_level0`` in level-0 pixels, as
stored by tiling. A tile's footprint on a thumbnail of downsample ``s`` (level-0 pixels per thumbnail
pixel) is ``[x / s, (x + size) / s)``; overlapping tiles are averaged. Figures are drawn on
``matplotlib.figure.Figure`` with the Agg canvas (no pyplot, no global backend switch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from PIL import Image
from scipy.stats import rankdata

from sarcomakit.core.io.atomic import atomic_path
from sarcomakit.evaluation.classification import binary_auc


def attention_table(slide_id: str, coords: np.ndarray, size_level0: float, attention: np.ndarray) -> pd.DataFrame:
    """Tile-level attention: slide_id, x, y, size_level0, attention, attention_percentile (0-100).

    The percentile of a tile is ``100 * (rank - 1) / (N - 1)`` with ties averaged (100 for a single tile).
    """
    coords = np.asarray(coords)
    attention = np.asarray(attention, dtype=float)
    if coords.shape[0] != attention.shape[0]:
        raise ValueError(f"{coords.shape[0]} tiles but {attention.shape[0]} attention values")
    n = attention.size
    percentile = 100.0 * (rankdata(attention) - 1) / (n - 1) if n > 1 else np.full(n, 100.0)
    return pd.DataFrame({"slide_id": slide_id, "x": coords[:, 0].astype(int), "y": coords[:, 1].astype(int),
                         "size_level0": float(size_level0), "attention": attention,
                         "attention_percentile": percentile})


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write a table as CSV atomically."""
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return Path(path)


def tile_score_map(shape_hw: tuple[int, int], downsample: float, coords: np.ndarray, size_level0: float,
                   scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean score per thumbnail pixel over the tiles covering it, and the coverage count.

    Args:
        shape_hw: thumbnail (height, width).
        downsample: level-0 pixels per thumbnail pixel.
        coords: tile top-left corners (N, 2) as (x, y) in level-0 pixels.
        size_level0: tile side in level-0 pixels.
        scores: value per tile (N,).
    """
    total = np.zeros(shape_hw, dtype=np.float64)
    count = np.zeros(shape_hw, dtype=np.int32)
    h, w = shape_hw
    for (x, y), value in zip(np.asarray(coords, dtype=float), np.asarray(scores, dtype=float), strict=True):
        x0, y0 = int(math.floor(x / downsample)), int(math.floor(y / downsample))
        x1 = max(x0 + 1, int(math.ceil((x + size_level0) / downsample)))
        y1 = max(y0 + 1, int(math.ceil((y + size_level0) / downsample)))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        total[y0:y1, x0:x1] += value
        count[y0:y1, x0:x1] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean, count


def render_heatmap(thumbnail: np.ndarray, slide_size: tuple[int, int], coords: np.ndarray, size_level0: float,
                   scores: np.ndarray, out_png: str | Path, cmap: str = "jet", alpha: float = 0.5,
                   title: str | None = None) -> Path:
    """Overlay tile scores on the slide thumbnail and save a PNG (with a colour bar).

    Args:
        thumbnail: RGB thumbnail (h, w, 3) of the whole slide.
        slide_size: (width, height) of level 0.
        coords, size_level0: tile corners and side in level-0 pixels.
        scores: value per tile; shown as given (use percentiles for comparable maps across slides).
        out_png: output file.
        cmap: matplotlib colormap.
        alpha: opacity of the colours over tissue tiles (the thumbnail shows through elsewhere).
        title: figure title.
    """
    h, w = thumbnail.shape[:2]
    downsample = slide_size[0] / w
    values, count = tile_score_map((h, w), downsample, coords, size_level0, scores)
    finite = values[count > 0]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm = Normalize(vmin=vmin, vmax=vmax if vmax > vmin else vmin + 1e-12)
    colours = matplotlib.colormaps[cmap](norm(np.nan_to_num(values, nan=vmin)))[..., :3]
    base = thumbnail[..., :3].astype(float) / 255.0
    weight = np.where(count > 0, alpha, 0.0)[..., None]
    blended = base * (1 - weight) + colours * weight
    figure = Figure(figsize=(6.4, 6.4 * h / w + 0.6), dpi=110)
    axis = figure.subplots()
    axis.imshow(blended)
    axis.set_axis_off()
    if title:
        axis.set_title(title, fontsize=9)
    figure.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axis, fraction=0.035, pad=0.02)
    return _save_figure(figure, out_png)


def read_tile_images(reader: Any, coords: np.ndarray, size_level0: float, out_px: int = 128) -> list[np.ndarray]:
    """RGB images (out_px, out_px, 3) of tiles read from the pyramid level closest above the needed detail."""
    level = reader.best_level_for_downsample(size_level0 / out_px)
    read = max(1, int(round(size_level0 / reader.level_downsamples[level])))
    images = []
    for x, y in np.asarray(coords, dtype=int):
        region = reader.read_region((int(x), int(y)), level, (read, read))
        images.append(np.asarray(Image.fromarray(region[..., :3]).resize((out_px, out_px),
                                                                           Image.Resampling.BILINEAR)))
    return images


def save_tile_grid(images: Sequence[np.ndarray], titles: Sequence[str], out_png: str | Path, n_cols: int = 4,
                   suptitle: str | None = None) -> Path:
    """Save tile images as a captioned grid PNG."""
    n = max(len(images), 1)
    n_cols = min(n_cols, n)
    n_rows = math.ceil(n / n_cols)
    figure = Figure(figsize=(1.9 * n_cols, 2.0 * n_rows + 0.3), dpi=100)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for ax, image, text in zip(axes.ravel(), images, titles, strict=False):
        ax.imshow(image)
        ax.set_title(text, fontsize=7)
    if suptitle:
        figure.suptitle(suptitle, fontsize=9)
    return _save_figure(figure, out_png)


def top_tiles_grid(reader: Any, table: pd.DataFrame, out_png: str | Path, k: int = 8, out_px: int = 128) -> Path:
    """Grid of the ``k`` most attended tiles of a slide (from :func:`attention_table`)."""
    top = table.nlargest(k, "attention")
    images = read_tile_images(reader, top[["x", "y"]].to_numpy(), float(top["size_level0"].iloc[0]), out_px)
    titles = [f"#{i + 1} p{row.attention_percentile:.0f} ({row.x},{row.y})"
              for i, row in enumerate(top.itertuples())]
    return save_tile_grid(images, titles, out_png, suptitle=f"{table['slide_id'].iloc[0]}: top {len(top)} tiles")


def tile_mask_fraction(mask: np.ndarray, mask_downsample: float, coords: np.ndarray,
                       size_level0: float) -> np.ndarray:
    """Fraction of each tile's footprint inside a binary mask stored at ``mask_downsample``."""
    mask = np.asarray(mask, dtype=bool)
    fractions = np.zeros(len(coords))
    for i, (x, y) in enumerate(np.asarray(coords, dtype=float)):
        x0, y0 = int(x / mask_downsample), int(y / mask_downsample)
        x1 = max(x0 + 1, int(math.ceil((x + size_level0) / mask_downsample)))
        y1 = max(y0 + 1, int(math.ceil((y + size_level0) / mask_downsample)))
        window = mask[max(y0, 0):y1, max(x0, 0):x1]
        fractions[i] = window.mean() if window.size else 0.0
    return fractions


def attention_mask_agreement(attention: np.ndarray, inside_fraction: np.ndarray,
                             threshold: float = 0.5) -> dict[str, float]:
    """How much attention falls on a reference region (e.g. the tumour).

    Tiles with at least ``threshold`` of their area inside the region are positives. Returns the mean
    attention inside and outside, their ratio, the AUC of attention for separating inside from outside tiles
    (0.5 = no preference) and the share of total attention inside.
    """
    attention = np.asarray(attention, dtype=float)
    inside = np.asarray(inside_fraction) >= threshold
    mean_in = float(attention[inside].mean()) if inside.any() else float("nan")
    mean_out = float(attention[~inside].mean()) if (~inside).any() else float("nan")
    return {"n_tiles": int(attention.size), "n_inside": int(inside.sum()), "mean_inside": mean_in,
            "mean_outside": mean_out, "ratio": mean_in / mean_out if mean_out > 0 else float("nan"),
            "auc": binary_auc(inside, attention),
            "share_inside": float(attention[inside].sum() / attention.sum()) if attention.sum() > 0 else 0.0}


def _save_figure(figure: Figure, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)
