"""Overlay and metric-distribution figures are valid PNGs with the expected layout."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib import image as mpimg

from sarcomakit.reporting.figures import _choose_slices, metric_distribution_figure, overlay_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _volume_with_tumour():
    z, y, x = np.meshgrid(np.arange(20), np.arange(48), np.arange(64), indexing="ij")
    tumour = ((z - 10) / 6) ** 2 + ((y - 24) / 10) ** 2 + ((x - 30) / 12) ** 2 <= 1
    image = 100.0 * tumour + np.random.default_rng(0).normal(0, 10, tumour.shape)
    return image, tumour


def test_overlay_figure_writes_a_png_with_both_contour_colours(tmp_path):
    image, reference = _volume_with_tumour()
    prediction = np.roll(reference, 3, axis=2)
    path = overlay_figure(image, reference, prediction, tmp_path / "overlay.png", title="case 1",
                          spacing=(3.0, 0.8, 0.8), n_slices=3)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)[..., :3]
    greenish = (pixels[..., 1] > 0.6) & (pixels[..., 0] < 0.3) & (pixels[..., 2] < 0.3)
    reddish = (pixels[..., 0] > 0.8) & (pixels[..., 1] < 0.3) & (pixels[..., 2] < 0.3)
    assert greenish.sum() > 50 and reddish.sum() > 50
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


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
    assert overlay_figure(image, None, None, tmp_path / "plain.png").read_bytes()[:8] == PNG_SIGNATURE
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
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    empty = metric_distribution_figure(table.iloc[:0], tmp_path / "e.png", {"dice": "Dice"}, group="label")
    assert empty.read_bytes()[:8] == PNG_SIGNATURE
