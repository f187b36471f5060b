"""Overlay and metric-distribution figures: decoded back, with contours, dots and panels where they belong."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from figure_checks import centroid, figure_shape, near_colour, read_png
from sarcomakit.reporting.figures import (
    PREDICTION_COLOUR,
    REFERENCE_COLOUR,
    _choose_slices,
    metric_distribution_figure,
    overlay_figure,
)

DOT_ON_WHITE = "#62a0cb"  # the case dots, #1f77b4 at alpha 0.7 over the white background


def _volume_with_tumour():
    z, y, x = np.meshgrid(np.arange(20), np.arange(48), np.arange(64), indexing="ij")
    tumour = ((z - 10) / 6) ** 2 + ((y - 24) / 10) ** 2 + ((x - 30) / 12) ** 2 <= 1
    image = 100.0 * tumour + np.random.default_rng(0).normal(0, 10, tumour.shape)
    return image, tumour


def test_overlay_figure_draws_both_contours_in_every_panel(tmp_path):
    image, reference = _volume_with_tumour()
    prediction = np.roll(reference, 3, axis=2)  # the prediction is the reference moved 3 voxels right
    path = overlay_figure(image, reference, prediction, tmp_path / "overlay.png", title="case 1",
                          spacing=(3.0, 0.8, 0.8), n_slices=3)
    pixels = read_png(path)
    assert pixels.shape[1] == figure_shape(3 * 3.4, 1, 120)[1]  # three panels of 3.4 inches
    green = near_colour(pixels, REFERENCE_COLOUR, 60)
    red = near_colour(pixels, PREDICTION_COLOUR, 60)
    third = pixels.shape[1] // 3
    for panel in range(3):
        columns = slice(panel * third, (panel + 1) * third)
        assert green[:, columns].sum() > 20 and red[:, columns].sum() > 20
        # the red contour lies to the right of the green one within the panel
        assert centroid(red[:, columns])[1] > centroid(green[:, columns])[1] + 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_overlay_contours_are_drawn_where_the_masks_are(tmp_path):
    image = np.random.default_rng(1).normal(100, 10, (10, 48, 64))
    reference = np.zeros(image.shape, bool)
    reference[3:7, 4:14, 40:60] = True  # top right of the slice
    prediction = np.zeros(image.shape, bool)
    prediction[3:7, 32:44, 4:20] = True  # bottom left
    pixels = read_png(overlay_figure(image, reference, prediction, tmp_path / "o.png", n_slices=1,
                                     crop_to_mask=False))
    legend_free = pixels[: int(pixels.shape[0] * 0.85)]  # the legend below the panel repeats both colours
    green = centroid(near_colour(legend_free, REFERENCE_COLOUR, 60))
    red = centroid(near_colour(legend_free, PREDICTION_COLOUR, 60))
    assert green[0] < red[0] and green[1] > red[1]  # reference above and to the right of the prediction


def test_overlay_aspect_follows_the_spacing(tmp_path):
    image, reference = _volume_with_tumour()
    square = mpimg.imread(overlay_figure(image, reference, None, tmp_path / "a.png", n_slices=1,
                                         crop_to_mask=False))
    tall = mpimg.imread(overlay_figure(image, reference, None, tmp_path / "b.png", spacing=(1.0, 2.0, 1.0),
                                       n_slices=1, crop_to_mask=False))
    # Doubling the row spacing doubles the physical height of the slice: the figure grows taller.
    assert tall.shape[0] / tall.shape[1] > 1.4 * square.shape[0] / square.shape[1]


def test_overlay_without_masks_and_shape_errors(tmp_path):
    image, reference = _volume_with_tumour()
    pixels = read_png(overlay_figure(image, None, None, tmp_path / "plain.png"))
    assert not near_colour(pixels, REFERENCE_COLOUR, 60).any() and not near_colour(pixels, PREDICTION_COLOUR, 60).any()
    grey = pixels[(pixels.max(axis=-1) - pixels.min(axis=-1)) < 5, 0]
    assert len(np.unique(grey)) > 50  # the slices themselves are drawn (a range of grey levels)
    with pytest.raises(ValueError, match="reference mask shape"):
        overlay_figure(image, reference[:5], None, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="volume"):
        overlay_figure(image[0], None, None, tmp_path / "bad.png")


def test_slices_go_through_the_tumour_and_include_its_largest_section():
    mask = np.zeros((30, 10, 10), bool)
    mask[8:20, 2:5, 2:5] = True
    mask[13, :, :] = True  # largest area
    slices = _choose_slices(mask, 3)
    assert len(slices) == 3 and 13 in slices
    assert all(8 <= z < 20 for z in slices)
    assert _choose_slices(np.zeros((30, 4, 4), bool), 2) == sorted(_choose_slices(np.zeros((30, 4, 4), bool), 2))


def test_metric_distribution_figure(tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"label": ["tumour"] * 6 + ["oedema"] * 6, "dice": rng.uniform(0.6, 0.9, 12),
                          "hd95": np.r_[rng.uniform(1, 9, 11), np.nan]})
    path = metric_distribution_figure(table, tmp_path / "m.png", {"dice": "Dice", "hd95": "HD95 (mm)"},
                                      group="label", title="metrics", limits={"dice": (0, 1)})
    pixels = read_png(path)
    assert pixels.shape[:2] == figure_shape(6.0, 3.8, 120)  # two panels of 3 inches
    half = pixels.shape[1] // 2
    for panel in (pixels[:, :half], pixels[:, half:]):
        assert near_colour(panel, DOT_ON_WHITE, 30).sum() > 30  # the case dots
        assert near_colour(panel, "#d62728", 30).sum() > 20  # the mean diamonds
    empty = read_png(metric_distribution_figure(table.iloc[:0], tmp_path / "e.png", {"dice": "Dice"}, group="label"))
    assert empty.shape[:2] == figure_shape(4.0, 3.8, 120)
    assert not near_colour(empty, DOT_ON_WHITE, 30).any() and not near_colour(empty, "#d62728", 30).any()
