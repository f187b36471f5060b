"""Tissue detection against the known masks of synthetic slides."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.synthetic import SyntheticSlideInfo, write_synthetic_slide
from sarcomakit.pathology.wsi.tissue import detect_tissue, pen_mask


def _on_grid(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(mask).resize((shape[1], shape[0]), Image.Resampling.NEAREST))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("backend", ["openslide", "tiffslide"])
def test_finds_tissue_and_excludes_pen_and_background(any_slide: SyntheticSlideInfo, backend: str) -> None:
    with open_slide(any_slide.path, backend=backend) as reader:
        tissue = detect_tissue(reader, target_mpp=4.0)
        width0 = reader.level_dimensions[0][0]
    assert tissue.downsample == pytest.approx(width0 / tissue.mask.shape[1])
    assert tissue.downsample * any_slide.mpp == pytest.approx(4.0, rel=0.3)
    truth = _on_grid(any_slide.tissue_mask_lowres, tissue.mask.shape)
    pen = _on_grid(any_slide.pen_mask_lowres, tissue.mask.shape)
    assert _iou(tissue.mask, truth) > 0.8
    assert (tissue.mask & pen).sum() < 0.05 * pen.sum()  # pen strokes are not tissue
    background = ~truth & ~pen
    assert (tissue.mask & background).sum() < 0.05 * background.sum()


def test_default_resolution_uses_a_low_level(tiff_slide: SyntheticSlideInfo) -> None:
    with open_slide(tiff_slide.path) as reader:
        tissue = detect_tissue(reader)  # 8 µm/px = downsample 16 at 0.5 µm/px: the last level
        assert tissue.level == reader.level_count - 1
    assert tissue.mask.shape == (2048 // 16, 3072 // 16)
    truth = _on_grid(tiff_slide.tissue_mask_lowres, tissue.mask.shape)
    assert _iou(tissue.mask, truth) > 0.75


def test_pen_colours() -> None:
    pixels = np.array([[[52, 84, 168], [48, 138, 92], [38, 38, 44], [230, 150, 220], [120, 70, 170],
                        [243, 242, 245]]], np.uint8)
    np.testing.assert_array_equal(pen_mask(pixels)[0], [True, True, True, False, False, False])


def test_blank_slide_gives_an_empty_mask(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    glass = np.clip(243 + rng.normal(0, 2, (1024, 1024, 3)), 0, 255).astype(np.uint8)
    path = tmp_path / "blank.tif"
    with tifffile.TiffWriter(path) as writer:
        writer.write(glass, tile=(256, 256), photometric="rgb", resolution=(2e4, 2e4),
                     resolutionunit="CENTIMETER", compression="jpeg")
    with open_slide(path) as reader:
        tissue = detect_tissue(reader)
    assert tissue.is_empty and tissue.tissue_fraction == 0.0


def test_pen_kept_when_not_excluded(tmp_path: Path) -> None:
    info = write_synthetic_slide(tmp_path / "s.tif", subtype="ups", size=(2048, 1536), layout="tiff", seed=4,
                                 compression="zlib")
    with open_slide(info.path) as reader:
        with_pen = detect_tissue(reader, target_mpp=4.0, exclude_pen=False)
        without_pen = detect_tissue(reader, target_mpp=4.0)
    pen = _on_grid(info.pen_mask_lowres, with_pen.mask.shape)
    assert (with_pen.mask & pen).sum() > 0.5 * pen.sum()
    assert (without_pen.mask & pen).sum() < 0.05 * pen.sum()
