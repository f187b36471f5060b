"""Slide readers: both layouts through both backends, resolution rules and bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.wsi import reader as reader_module
from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.synthetic import SyntheticSlideInfo, write_synthetic_slide

BACKENDS = ["openslide", "tiffslide"]


def _expected_levels(size: tuple[int, int]) -> list[tuple[int, int]]:
    levels = [size]
    while min(levels[-1]) // 2 >= 128:
        levels.append((levels[-1][0] // 2, levels[-1][1] // 2))
    return levels


def _level0(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tif:
        return tif.pages[0].asarray()


@pytest.mark.parametrize("backend", BACKENDS)
def test_geometry_and_mpp(any_slide: SyntheticSlideInfo, backend: str) -> None:
    with open_slide(any_slide.path, backend=backend) as reader:
        assert reader.backend == backend
        expected = _expected_levels(any_slide.size)
        assert reader.level_dimensions == expected
        assert reader.level_count == len(expected)
        assert reader.level_downsamples == pytest.approx([2.0**k for k in range(len(expected))])
        assert reader.mpp == pytest.approx((any_slide.mpp, any_slide.mpp))


def test_auto_prefers_openslide(svs_slide: SyntheticSlideInfo) -> None:
    with open_slide(svs_slide.path) as reader:
        assert reader.backend == "openslide"


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_region_matches_level0_pixels(any_slide: SyntheticSlideInfo, backend: str) -> None:
    level0 = _level0(any_slide.path)
    x, y, w, h = 301, 517, 300, 200  # crosses TIFF tile borders
    with open_slide(any_slide.path, backend=backend) as reader:
        region = reader.read_region((x, y), 0, (w, h))
    assert region.shape == (h, w, 3) and region.dtype == np.uint8
    difference = np.abs(region.astype(int) - level0[y:y + h, x:x + w].astype(int))
    # Lossless tiles decode identically; JPEG decoders may differ by a grey level or two.
    assert difference.max() <= (0 if any_slide.path.suffix == ".tif" else 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_read_region_lower_level_and_outside_is_white(tiff_slide: SyntheticSlideInfo, backend: str) -> None:
    with tifffile.TiffFile(tiff_slide.path) as tif:
        level1 = tif.pages[1].asarray()
    with open_slide(tiff_slide.path, backend=backend) as reader:
        region = reader.read_region((200, 400), 1, (64, 32))
        np.testing.assert_array_equal(region, level1[200:232, 100:164])
        width, height = reader.level_dimensions[0]
        corner = reader.read_region((width - 10, height - 10), 0, (20, 20))
    assert np.all(corner[10:, :] == 255) and np.all(corner[:, 10:] == 255)


@pytest.mark.parametrize("backend", BACKENDS)
def test_thumbnail_and_best_level(svs_slide: SyntheticSlideInfo, backend: str) -> None:
    with open_slide(svs_slide.path, backend=backend) as reader:
        thumbnail = reader.get_thumbnail(500)
        assert max(thumbnail.shape[:2]) == 500 and thumbnail.shape[2] == 3
        assert thumbnail.shape[0] == round(500 * 1536 / 2048)
        assert reader.best_level_for_downsample(1.0) == 0
        assert reader.best_level_for_downsample(3.9) == 1
        assert reader.best_level_for_downsample(4.0) == 2
        assert reader.best_level_for_downsample(1000.0) == reader.level_count - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_whole_slide_read_in_blocks_matches_one_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     backend: str) -> None:
    """A flat (single-level) slide shrunk block by block looks like the same slide shrunk at once."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (30, 40, 3)), np.ones((40, 40, 1))).astype(np.uint8)  # 1200x1600
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, smooth, tile=(256, 256), photometric="rgb", compression="zlib",
                     resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    with open_slide(path, backend=backend) as slide:
        assert slide.level_count == 1
        whole = slide.read_whole_slide(8.0)
        monkeypatch.setattr(reader_module, "WHOLE_SLIDE_BLOCK", 384)
        blocks = slide.read_whole_slide(8.0)
    assert whole.shape == blocks.shape == (150, 200, 3)
    assert np.abs(whole.astype(int) - blocks.astype(int)).mean() < 2.0
    np.testing.assert_allclose(whole.reshape(30, 5, 40, 5, 3).mean(axis=(1, 3)), smooth[::40, ::40], atol=40)


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_missing_mpp_is_refused_unless_given(slide_without_mpp: SyntheticSlideInfo, backend: str) -> None:
    with pytest.raises(UserInputError, match="pass --mpp") as error:
        open_slide(slide_without_mpp.path, backend=backend)
    assert slide_without_mpp.path.name in str(error.value)
    with open_slide(slide_without_mpp.path, backend=backend, mpp=0.42) as reader:
        assert reader.mpp == (0.42, 0.42)


@pytest.mark.parametrize("backend", BACKENDS)
def test_svs_without_mpp_is_refused(tmp_path: Path, backend: str) -> None:
    info = write_synthetic_slide(tmp_path / "nompp.svs", subtype="ups", size=(512, 512), layout="svs",
                                 write_resolution=False)
    with pytest.raises(UserInputError, match="pass --mpp"):
        open_slide(info.path, backend=backend)
    with open_slide(info.path, backend=backend, mpp=0.5) as reader:
        assert reader.level_count == 3 and reader.mpp == (0.5, 0.5)


def test_mpp_argument_overrides_metadata(tiff_slide: SyntheticSlideInfo) -> None:
    with open_slide(tiff_slide.path, mpp=0.25) as reader:
        assert reader.mpp == (0.25, 0.25)
    with pytest.raises(UserInputError, match="positive"):
        open_slide(tiff_slide.path, mpp=-1.0)


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_corrupt_and_missing_files(tmp_path: Path, svs_slide: SyntheticSlideInfo, backend: str) -> None:
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(svs_slide.path.read_bytes()[:2000])
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"this is not a slide" * 100)
    for bad in (truncated, garbage):
        with pytest.raises(UserInputError, match="cannot read the slide") as error:
            reader = open_slide(bad, backend=backend)
            reader.read_region((0, 0), 0, (512, 512))
        assert bad.name in str(error.value)
    with pytest.raises(UserInputError, match="not found"):
        open_slide(tmp_path / "absent.svs", backend=backend)


def test_unknown_backend(svs_slide: SyntheticSlideInfo) -> None:
    with pytest.raises(UserInputError, match="unknown slide backend"):
        open_slide(svs_slide.path, backend="bioformats")
