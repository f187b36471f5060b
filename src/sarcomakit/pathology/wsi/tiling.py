"""A grid of tiles at a requested physical resolution (microns per pixel), in level-0 pixels.

Geometry. With ``mpp0`` the slide's µm/px at level 0, a tile of ``tile_size`` output pixels at
``target_mpp`` covers ``target_mpp * tile_size / mpp0`` level-0 pixels. That side is rounded to the
nearest integer (half up), ``size_level0``, so that every tile covers exactly the same whole number
of level-0 pixels and tile positions are exact integers. When the ratio is not an integer (e.g.
0.253 µm/px to 0.5 µm/px with 256-px tiles: 505.93 -> 506) the tiles' effective resolution is
``size_level0 * mpp0 / tile_size`` (0.50008 µm/px here), off the request by at most half a level-0
pixel per tile side; :attr:`TileGrid.effective_mpp` reports it.

Tiles are read from the coarsest level whose downsample does not exceed ``size_level0 / tile_size``
(never upsampling more than needed) as ``read_size = round(size_level0 / level_downsample)`` pixels
and resized to ``tile_size``. The stride is ``round(size_level0 * (1 - overlap))`` level-0 pixels,
the grid starts at (0, 0) and only tiles lying wholly inside the slide are kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from sarcomakit.core.io.atomic import atomic_path
from sarcomakit.pathology.wsi.reader import SlideReader
from sarcomakit.pathology.wsi.tissue import TissueMask, detect_tissue


@dataclass
class TileGrid:
    """Tile positions and the geometry needed to read them.

    Attributes:
        coords: ``(N, 2)`` int64, level-0 ``(x, y)`` of each tile's top-left corner (row-major order).
        tile_size: side of a tile as given to a model, in pixels.
        target_mpp: requested µm/px of the tiles.
        level: pyramid level the tiles are read from.
        read_size: side of the region read at ``level``, in that level's pixels (then resized).
        size_level0: side of a tile in level-0 pixels (exact integer).
        tissue_fraction: ``(N,)`` fraction of each tile covered by the tissue mask.
        slide_mpp: µm/px of the slide at level 0 (x).
        level_downsample: downsample of ``level``.
        slide_dimensions: ``(width, height)`` of level 0.
        stride_level0: distance between neighbouring tiles in level-0 pixels.
    """

    coords: np.ndarray
    tile_size: int
    target_mpp: float
    level: int
    read_size: int
    size_level0: int
    tissue_fraction: np.ndarray
    slide_mpp: float
    level_downsample: float = 1.0
    slide_dimensions: tuple[int, int] = (0, 0)
    stride_level0: int = field(default=0)

    def __post_init__(self) -> None:
        self.coords = np.asarray(self.coords, dtype=np.int64).reshape(-1, 2)
        self.tissue_fraction = np.asarray(self.tissue_fraction, dtype=np.float32).reshape(-1)
        if len(self.tissue_fraction) != len(self.coords):
            raise ValueError(f"{len(self.coords)} coords but {len(self.tissue_fraction)} tissue fractions")
        if self.stride_level0 == 0:
            self.stride_level0 = self.size_level0

    def __len__(self) -> int:
        return len(self.coords)

    @property
    def effective_mpp(self) -> float:
        """µm/px of the tiles after resizing (``target_mpp`` up to the rounding of ``size_level0``)."""
        return self.size_level0 * self.slide_mpp / self.tile_size

    def subset(self, indices: np.ndarray) -> TileGrid:
        """A grid with only the tiles at ``indices`` (same geometry)."""
        return TileGrid(coords=self.coords[indices], tile_size=self.tile_size, target_mpp=self.target_mpp,
                        level=self.level, read_size=self.read_size, size_level0=self.size_level0,
                        tissue_fraction=self.tissue_fraction[indices], slide_mpp=self.slide_mpp,
                        level_downsample=self.level_downsample, slide_dimensions=self.slide_dimensions,
                        stride_level0=self.stride_level0)


def tile_size_level0(target_mpp: float, tile_size: int, slide_mpp: float) -> int:
    """Side of a tile in level-0 pixels: ``target_mpp * tile_size / slide_mpp`` rounded half up."""
    return max(1, math.floor(target_mpp * tile_size / slide_mpp + 0.5))


def tile_fractions(coords: np.ndarray, size_level0: int, tissue: TissueMask,
                   slide_dimensions: tuple[int, int]) -> np.ndarray:
    """Exact fraction of each square tile covered by the (piecewise-constant) tissue mask.

    The integral of a piecewise-constant image over ``[0, u] x [0, v]`` is the bilinear interpolation
    of its summed-area table at the integer corners, so the tissue area inside any box, even one
    whose edges fall inside mask pixels, is four bilinear look-ups in that table.
    """
    mask = tissue.mask.astype(np.float64)
    if len(coords) == 0:
        return np.zeros(0, np.float32)
    height, width = mask.shape
    scale_x = width / slide_dimensions[0]
    scale_y = height / slide_dimensions[1]
    table = np.zeros((height + 1, width + 1))
    table[1:, 1:] = mask.cumsum(axis=0).cumsum(axis=1)
    x0 = np.clip(coords[:, 0] * scale_x, 0, width)
    y0 = np.clip(coords[:, 1] * scale_y, 0, height)
    x1 = np.clip((coords[:, 0] + size_level0) * scale_x, 0, width)
    y1 = np.clip((coords[:, 1] + size_level0) * scale_y, 0, height)

    def integral(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(table, [rows, cols], order=1, mode="nearest")

    area = integral(y1, x1) - integral(y0, x1) - integral(y1, x0) + integral(y0, x0)
    box = (size_level0 * scale_x) * (size_level0 * scale_y)
    return np.clip(area / box, 0.0, 1.0).astype(np.float32)


def tile_slide(reader: SlideReader, *, target_mpp: float = 0.5, tile_size: int = 256, overlap: float = 0.0,
               min_tissue: float = 0.5, tissue: TissueMask | None = None) -> TileGrid:
    """Lay a grid of tiles over the slide and keep those on tissue.

    Args:
        reader: an open slide.
        target_mpp: µm/px of the tiles.
        tile_size: side of the tiles in output pixels.
        overlap: fraction of a tile shared with its neighbour, in ``[0, 1)``.
        min_tissue: keep tiles whose tissue fraction is at least this (0 keeps every tile).
        tissue: a tissue mask; computed with :func:`detect_tissue` when not given.

    Returns:
        A :class:`TileGrid` (possibly empty; the caller reports a slide without tissue).
    """
    if target_mpp <= 0 or tile_size <= 0:
        raise ValueError(f"target_mpp and tile_size must be positive, got {target_mpp} and {tile_size}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap}")
    slide_mpp = reader.mpp[0]
    size_level0 = tile_size_level0(target_mpp, tile_size, slide_mpp)
    level = reader.best_level_for_downsample(size_level0 / tile_size)
    level_downsample = reader.level_downsamples[level]
    read_size = max(1, round(size_level0 / level_downsample))
    stride = max(1, math.floor(size_level0 * (1.0 - overlap) + 0.5))
    width, height = reader.level_dimensions[0]
    xs = np.arange(0, width - size_level0 + 1, stride, dtype=np.int64)
    ys = np.arange(0, height - size_level0 + 1, stride, dtype=np.int64)
    grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
    coords = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
    if tissue is None:
        tissue = detect_tissue(reader)
    fractions = tile_fractions(coords, size_level0, tissue, (width, height))
    keep = fractions >= min_tissue
    return TileGrid(coords=coords[keep], tile_size=tile_size, target_mpp=target_mpp, level=level,
                    read_size=read_size, size_level0=size_level0, tissue_fraction=fractions[keep],
                    slide_mpp=slide_mpp, level_downsample=level_downsample, slide_dimensions=(width, height),
                    stride_level0=stride)


def save_thumbnail_with_grid(reader: SlideReader, grid: TileGrid, path: str | Path, max_size: int = 2048,
                             tissue: TissueMask | None = None) -> Path:
    """Save a PNG thumbnail with the kept tiles outlined (and the tissue outline when given).

    Returns:
        ``path``.
    """
    thumbnail = reader.get_thumbnail(max_size)
    scale = thumbnail.shape[1] / reader.level_dimensions[0][0]
    image = Image.fromarray(thumbnail)
    if tissue is not None and tissue.mask.any():
        mask = np.asarray(Image.fromarray(tissue.mask).resize(image.size, Image.Resampling.NEAREST))
        edge = mask & ~ndimage.binary_erosion(mask)
        pixels = np.asarray(image).copy()
        pixels[edge] = (0, 160, 255)
        image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    side = grid.size_level0 * scale
    for x, y in grid.coords:
        left, top = x * scale, y * scale
        draw.rectangle([left, top, left + side, top + side], outline=(0, 200, 0), width=1)
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
