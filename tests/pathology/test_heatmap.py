"""Attention heatmaps: table percentiles, footprints on the thumbnail, PNG outputs, mask agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from figure_checks import centroid, near_colour, read_png
from sarcomakit.pathology.analysis.heatmap import (
    attention_mask_agreement,
    attention_table,
    render_heatmap,
    tile_mask_fraction,
    tile_score_map,
    top_tiles_grid,
)


class FakeReader:
    """A two-level slide 400 x 200 px whose pixel value encodes the x position."""

    level_downsamples = [1.0, 4.0]
    level_dimensions = [(400, 200), (100, 50)]
    dimensions = (400, 200)

    def __init__(self) -> None:
        self.reads: list[tuple] = []

    def best_level_for_downsample(self, downsample: float) -> int:
        return 1 if downsample >= 4 else 0

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        self.reads.append((location, level, size))
        return np.full((size[1], size[0], 3), min(location[0] // 2, 255), dtype=np.uint8)


def test_attention_table_columns_and_percentiles() -> None:
    coords = np.array([[0, 0], [100, 0], [200, 0], [300, 100]])
    table = attention_table("s1", coords, 100, np.array([0.1, 0.4, 0.2, 0.3]))
    assert list(table.columns) == ["slide_id", "x", "y", "size_level0", "attention", "attention_percentile"]
    np.testing.assert_allclose(table["attention_percentile"], [0, 100, 100 / 3, 200 / 3])
    assert attention_table("s", coords[:1], 100, np.array([1.0]))["attention_percentile"].item() == 100
    with pytest.raises(ValueError):
        attention_table("s", coords, 100, np.ones(3))


def test_tile_footprint_in_thumbnail_coordinates() -> None:
    # Slide 400 x 200 at level 0, thumbnail 100 x 50 (downsample 4): tile (100, 40) of side 80 covers
    # thumbnail columns 25..44 and rows 10..29.
    values, count = tile_score_map((50, 100), 4.0, np.array([[100, 40]]), 80.0, np.array([7.0]))
    expected = np.zeros((50, 100), bool)
    expected[10:30, 25:45] = True
    np.testing.assert_array_equal(count > 0, expected)
    assert np.all(values[expected] == 7.0) and np.all(np.isnan(values[~expected]))
    # Overlapping tiles are averaged.
    values, count = tile_score_map((50, 100), 4.0, np.array([[0, 0], [40, 0]]), 80.0, np.array([1.0, 3.0]))
    assert count[0, 12] == 2 and values[0, 12] == 2.0 and values[0, 2] == 1.0


def test_render_heatmap_and_top_tiles_write_pngs(tmp_path: Path) -> None:
    reader = FakeReader()
    thumbnail = np.full((50, 100, 3), 240, dtype=np.uint8)
    coords = np.array([[0, 0], [100, 0], [200, 100], [300, 100]])
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    png = render_heatmap(thumbnail, reader.dimensions, coords, 100, scores, tmp_path / "h.png", title="t")
    pixels = read_png(png)
    # The thumbnail is drawn where it shows: the rows and columns full of its grey (240) are the image's box
    # (a few anti-aliased title pixels may have that grey too).
    grey = near_colour(pixels, "#f0f0f0", 3)
    rows, cols = np.flatnonzero(grey.sum(axis=1) > 50), np.flatnonzero(grey.sum(axis=0) > 50)
    box = pixels[rows.min():rows.max() + 1, cols.min():cols.max() + 1].astype(int)
    height, width = box.shape[:2]
    assert width == pytest.approx(2 * height, rel=0.05)  # the 100 x 50 thumbnail keeps its aspect
    # Tile (0, 0) has the lowest score (blue on the jet map), tile (300, 100) the highest (red); the
    # thumbnail's lower-left quarter has no tile and keeps its grey.
    top_left = box[height // 8, width // 8]
    bottom_right = box[height * 7 // 8, width * 7 // 8]
    bottom_left = box[height * 7 // 8, width // 8]
    assert top_left[2] - top_left[0] > 60
    assert bottom_right[0] - bottom_right[2] > 60
    assert np.abs(bottom_left - 240).max() <= 3
    table = attention_table("s1", coords, 100, scores)
    grid = read_png(top_tiles_grid(reader, table, tmp_path / "top.png", k=2, out_px=20))
    # The fake slide's pixel value is x // 2: the most attended tile (x=300) is drawn first, in grey 150,
    # then the second (x=200) in grey 100.
    first, second = centroid(near_colour(grid, "#969696", 2)), centroid(near_colour(grid, "#646464", 2))
    assert first[1] < second[1]
    # The two most attended tiles were read, from level 1 (100 px tile -> 20 px allows downsample 5).
    assert [r[0] for r in reader.reads] == [(300, 100), (200, 100)]
    assert all(r[1] == 1 and r[2] == (25, 25) for r in reader.reads)


def test_mask_fraction_and_agreement() -> None:
    mask = np.zeros((50, 100), bool)  # downsample 4 of a 400 x 200 slide; tumour on the left half
    mask[:, :50] = True
    coords = np.array([[0, 0], [100, 100], [200, 0], [300, 100], [160, 0]])
    fractions = tile_mask_fraction(mask, 4.0, coords, 80.0)
    np.testing.assert_allclose(fractions, [1, 1, 0, 0, 0.5])
    attention = np.array([0.3, 0.3, 0.1, 0.1, 0.2])
    agreement = attention_mask_agreement(attention, fractions)
    assert agreement["n_inside"] == 3 and agreement["auc"] == 1.0
    assert agreement["mean_inside"] == pytest.approx(0.8 / 3)
    assert agreement["ratio"] == pytest.approx((0.8 / 3) / 0.1)
    assert agreement["share_inside"] == pytest.approx(0.8)
