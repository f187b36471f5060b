"""Tiling geometry in level-0 pixels: sizes, levels, strides and tissue fractions are exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.synthetic import SyntheticSlideInfo
from sarcomakit.pathology.wsi.tiling import (
    TileGrid,
    save_thumbnail_with_grid,
    tile_fractions,
    tile_size_level0,
    tile_slide,
)
from sarcomakit.pathology.wsi.tissue import TissueMask, detect_tissue


def _full_mask(shape: tuple[int, int]) -> TissueMask:
    return TissueMask(mask=np.ones(shape, bool), downsample=16.0, level=0)


def test_half_resolution_reads_level_one_without_resize(svs_slide: SyntheticSlideInfo) -> None:
    """0.25 µm/px slide, 0.5 µm/px tiles of 256 px: 512 level-0 px, read 256 px at level 1."""
    with open_slide(svs_slide.path) as reader:
        tissue = detect_tissue(reader)
        grid = tile_slide(reader, target_mpp=0.5, tile_size=256, tissue=tissue)
    assert (grid.size_level0, grid.level, grid.read_size, grid.stride_level0) == (512, 1, 256, 512)
    assert grid.effective_mpp == pytest.approx(0.5)
    assert len(grid) > 0 and grid.coords.dtype == np.int64
    assert np.all(grid.coords % 512 == 0)
    assert np.all(grid.coords[:, 0] + 512 <= 2048) and np.all(grid.coords[:, 1] + 512 <= 1536)
    assert np.all(grid.tissue_fraction >= 0.5)
    # Each kept tile's fraction is the mean of the mask over the tile (mask px = 32 level-0 px here).
    cell = round(tissue.downsample)
    for (x, y), fraction in zip(grid.coords, grid.tissue_fraction, strict=True):
        window = tissue.mask[y // cell:(y + 512) // cell, x // cell:(x + 512) // cell]
        assert fraction == pytest.approx(window.mean(), abs=1e-6)


def test_all_tiles_when_min_tissue_is_zero(svs_slide: SyntheticSlideInfo) -> None:
    with open_slide(svs_slide.path) as reader:
        grid = tile_slide(reader, target_mpp=0.5, tile_size=256, min_tissue=0.0,
                          tissue=_full_mask((96, 128)))
    xs, ys = np.unique(grid.coords[:, 0]), np.unique(grid.coords[:, 1])
    np.testing.assert_array_equal(xs, [0, 512, 1024, 1536])
    np.testing.assert_array_equal(ys, [0, 512, 1024])  # 1536 + 512 > 1536 px: not a whole tile
    np.testing.assert_array_equal(grid.coords[:4], [[0, 0], [512, 0], [1024, 0], [1536, 0]])  # row-major
    assert np.all(grid.tissue_fraction == 1.0)


def test_same_resolution_level0(tiff_slide: SyntheticSlideInfo) -> None:
    with open_slide(tiff_slide.path) as reader:
        grid = tile_slide(reader, target_mpp=0.5, tile_size=224, min_tissue=0.0, tissue=_full_mask((128, 192)))
    assert (grid.size_level0, grid.level, grid.read_size) == (224, 0, 224)
    assert len(grid) == (3072 // 224) * (2048 // 224)


def test_target_between_levels_reads_finer_level_and_resizes(tiff_slide: SyntheticSlideInfo) -> None:
    """1.5 µm/px from 0.5 µm/px: 768 level-0 px per tile, level 1 (x2), 384 px read -> 256 px."""
    with open_slide(tiff_slide.path) as reader:
        grid = tile_slide(reader, target_mpp=1.5, tile_size=256, min_tissue=0.0, tissue=_full_mask((128, 192)))
    assert (grid.size_level0, grid.level, grid.read_size) == (768, 1, 384)
    assert np.all(grid.coords % 768 == 0)


def test_non_integer_ratio_is_rounded_and_reported(tiff_slide: SyntheticSlideInfo) -> None:
    assert tile_size_level0(0.5, 256, 0.253) == 506  # 505.93 -> 506
    assert tile_size_level0(0.5, 256, 0.2524) == 507  # 507.13 -> 507
    with open_slide(tiff_slide.path, mpp=0.253) as reader:
        grid = tile_slide(reader, target_mpp=0.5, tile_size=256, min_tissue=0.0, tissue=_full_mask((128, 192)))
    assert grid.size_level0 == 506 and grid.level == 0 and grid.read_size == 506
    assert np.all(grid.coords % 506 == 0)
    assert grid.effective_mpp == pytest.approx(506 * 0.253 / 256)
    assert abs(grid.effective_mpp - 0.5) < 0.5 * 0.253 / 256 + 1e-12


def test_overlap_stride(svs_slide: SyntheticSlideInfo) -> None:
    with open_slide(svs_slide.path) as reader:
        grid = tile_slide(reader, target_mpp=0.5, tile_size=256, overlap=0.5, min_tissue=0.0,
                          tissue=_full_mask((96, 128)))
    assert grid.stride_level0 == 256
    np.testing.assert_array_equal(np.unique(grid.coords[:, 0]), np.arange(0, 2048 - 512 + 1, 256))
    with pytest.raises(ValueError, match="overlap"):
        tile_slide(reader, overlap=1.0)


def test_fractions_exact_for_boxes_inside_mask_pixels() -> None:
    """Boxes whose edges fall inside mask pixels: compare with the mask upsampled to level 0."""
    rng = np.random.default_rng(0)
    mask = rng.random((12, 16)) > 0.5
    tissue = TissueMask(mask=mask, downsample=8.0, level=0)
    coords = np.array([[3, 5], [17, 30], [100, 70], [0, 0]], np.int64)
    fractions = tile_fractions(coords, 21, tissue, (128, 96))
    level0 = np.kron(mask, np.ones((8, 8), bool))
    expected = [level0[y:y + 21, x:x + 21].mean() for x, y in coords]
    np.testing.assert_allclose(fractions, expected, atol=1e-6)


def test_empty_mask_gives_empty_grid(tiff_slide: SyntheticSlideInfo) -> None:
    with open_slide(tiff_slide.path) as reader:
        grid = tile_slide(reader, tissue=TissueMask(mask=np.zeros((128, 192), bool), downsample=16.0, level=4))
    assert len(grid) == 0 and grid.coords.shape == (0, 2)


def test_thumbnail_with_grid(tmp_path: Path, svs_slide: SyntheticSlideInfo) -> None:
    with open_slide(svs_slide.path) as reader:
        tissue = detect_tissue(reader)
        grid = tile_slide(reader, tissue=tissue)
        path = save_thumbnail_with_grid(reader, grid, tmp_path / "out" / "grid.png", max_size=512, tissue=tissue)
    image = np.asarray(Image.open(path))
    assert image.shape == (384, 512, 3)
    x, y = grid.coords[0] * 512 // 2048  # a tile's top-left corner is drawn in green
    assert tuple(image[y, x]) == (0, 200, 0)


def test_subset_keeps_geometry() -> None:
    grid = TileGrid(coords=np.arange(10).reshape(5, 2), tile_size=256, target_mpp=0.5, level=1, read_size=256,
                    size_level0=512, tissue_fraction=np.linspace(0, 1, 5), slide_mpp=0.25)
    part = grid.subset(np.array([1, 3]))
    np.testing.assert_array_equal(part.coords, [[2, 3], [6, 7]])
    assert part.size_level0 == 512 and part.stride_level0 == 512 and len(part) == 2
