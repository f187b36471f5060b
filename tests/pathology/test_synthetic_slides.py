"""Synthetic slides: layouts, masks, textures per subtype and the cohort folder."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile

from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.synthetic import SUBTYPES, make_synthetic_wsi_cohort, write_synthetic_slide


def test_svs_layout_pages(svs_slide) -> None:
    with tifffile.TiffFile(svs_slide.path) as tif:
        pages = tif.pages
        assert pages[0].description.startswith("Aperio Image Library")
        assert "|AppMag = 40|" in pages[0].description and "MPP = 0.2500" in pages[0].description
        assert pages[0].is_tiled and pages[0].shape[:2] == (1536, 2048)
        assert not pages[1].is_tiled and max(pages[1].shape[:2]) <= 1024  # stripped thumbnail second
        assert all(page.is_tiled for page in pages[2:])
        assert [page.shape[1] for page in pages[2:]] == [1024, 512, 256]
        assert pages[0].compression == tifffile.COMPRESSION.JPEG


def test_tiff_layout_resolution_tags(tiff_slide) -> None:
    with tifffile.TiffFile(tiff_slide.path) as tif:
        first = tif.pages[0]
        assert first.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        numerator, denominator = first.tags["XResolution"].value
        assert numerator / denominator == pytest.approx(1e4 / 0.5)
        assert all(page.subfiletype == 1 for page in tif.pages[1:])


def test_masks_and_texture_are_where_the_layout_says(tiff_slide) -> None:
    tumour, tissue, pen = tiff_slide.tumour_mask_lowres, tiff_slide.tissue_mask_lowres, tiff_slide.pen_mask_lowres
    assert tumour.shape == tissue.shape == (2048 // 4, 3072 // 4) and tiff_slide.mask_downsample == 4
    assert not np.any(tumour & ~tissue) and not np.any(tissue & pen)
    assert 0.2 < tumour.sum() / tissue.sum() < 0.8  # default tumour_fraction 0.5, minus pen strokes
    with open_slide(tiff_slide.path) as reader:
        level = 2  # downsample 4 = one pixel per mask cell
        image = reader.read_region((0, 0), level, reader.level_dimensions[level]).astype(float)
    background = ~tissue & ~pen
    assert image[background].mean() > 235  # white glass
    assert image[tissue].mean() < 215  # stained tissue
    # Spindle-cell tumour is more haematoxylin-rich (darker red channel) than normal stroma.
    assert image[tumour, 0].mean() < image[tissue & ~tumour, 0].mean() - 10


def test_deterministic_and_validated(tmp_path: Path) -> None:
    first = write_synthetic_slide(tmp_path / "a.tif", subtype="ups", size=(512, 384), layout="tiff",
                                  compression="zlib", seed=5)
    second = write_synthetic_slide(tmp_path / "b.tif", subtype="ups", size=(512, 384), layout="tiff",
                                   compression="zlib", seed=5)
    with tifffile.TiffFile(first.path) as a, tifffile.TiffFile(second.path) as b:
        np.testing.assert_array_equal(a.pages[0].asarray(), b.pages[0].asarray())
    np.testing.assert_array_equal(first.tumour_mask_lowres, second.tumour_mask_lowres)
    with pytest.raises(ValueError, match="subtype"):
        write_synthetic_slide(tmp_path / "c.svs", subtype="osteosarcoma")
    with pytest.raises(ValueError, match="layout"):
        write_synthetic_slide(tmp_path / "c.svs", subtype="ups", layout="ndpi")


def test_subtype_textures_differ(tmp_path: Path) -> None:
    """Each subtype's tumour has its own colour statistics (fat is pale, UPS nuclei are dark)."""
    means = {}
    for subtype in SUBTYPES:
        info = write_synthetic_slide(tmp_path / f"{subtype}.tif", subtype=subtype, size=(1024, 768),
                                     layout="tiff", compression="zlib", tumour_fraction=1.0, seed=0)
        with tifffile.TiffFile(info.path) as tif:
            level0 = tif.pages[0].asarray()
        tumour = np.kron(info.tumour_mask_lowres, np.ones((4, 4), bool))[:768, :1024]
        means[subtype] = level0[tumour].astype(float).mean(axis=0)
    assert means["liposarcoma"].mean() > means["leiomyosarcoma"].mean() + 10
    assert means["ups"][0] < means["liposarcoma"][0] - 20


def test_cohort(tmp_path: Path) -> None:
    csv_path = make_synthetic_wsi_cohort(tmp_path / "cohort", n_slides=4, size=(768, 512), seed=1)
    with csv_path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    assert sorted(row["label"] for row in rows) == sorted([*SUBTYPES, SUBTYPES[0]])
    assert len({row["slide_id"] for row in rows}) == 4
    for patient in {row["patient_id"] for row in rows}:
        slides = [row for row in rows if row["patient_id"] == patient]
        assert 1 <= len(slides) <= 2 and len({row["label"] for row in slides}) == 1
    for row in rows:
        mask = np.load(csv_path.parent / row["tumour_mask"])
        assert mask.dtype == bool and mask.any()
        with open_slide(csv_path.parent / row["path"]) as reader:
            assert reader.level_dimensions[0] == (768, 512)
            assert mask.shape == (512 // float(row["mask_downsample"]), 768 // float(row["mask_downsample"]))
    assert {Path(row["path"]).suffix for row in rows} == {".svs", ".tif"}
