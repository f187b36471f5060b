"""Tiny NIfTI cohorts for the evaluation tests."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.evaluation.metrics import segmentation_metrics

SPACING_XYZ = (0.9, 0.8, 3.0)
ORIGIN = (-10.0, 5.0, 20.0)
SHAPE_ZYX = (12, 24, 28)


def _make_image(array: np.ndarray, spacing=SPACING_XYZ, origin=ORIGIN) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def _ellipsoid(centre_zyx, radii_mm) -> np.ndarray:
    spacing_zyx = SPACING_XYZ[::-1]
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE_ZYX, spacing_zyx, strict=True)], indexing="ij")
    return sum(((g - c * s) / r) ** 2 for g, c, s, r in zip(grids, centre_zyx, spacing_zyx, radii_mm,
                                                           strict=True)) <= 1


@pytest.fixture
def make_image():
    """Wrap a (z, y, x) array as an image on the test grid (anisotropic spacing, non-zero origin)."""
    return _make_image


@pytest.fixture
def grid_shape():
    """Array shape (z, y, x) of the test grid."""
    return SHAPE_ZYX


@pytest.fixture
def cohort(tmp_path):
    """Five cases: three good predictions, one on the wrong grid, one without prediction."""
    images, labels, predictions = tmp_path / "images", tmp_path / "labels", tmp_path / "predictions"
    for folder in (images, labels, predictions):
        folder.mkdir()
    rng = np.random.default_rng(0)
    cases, expected = [], {}
    for i in range(5):
        case_id = f"case_{i:02d}"
        reference = _ellipsoid((6, 12, 14), (9.0, 6.0, 7.0 + i)).astype(np.uint8)
        prediction = np.roll(reference, i % 3, axis=2)
        sitk.WriteImage(_make_image(rng.normal(size=SHAPE_ZYX).astype(np.float32)), str(images / f"{case_id}.nii.gz"))
        sitk.WriteImage(_make_image(reference), str(labels / f"{case_id}.nii.gz"))
        if i == 3:
            sitk.WriteImage(_make_image(prediction, spacing=(0.9, 0.8, 2.0)), str(predictions / f"{case_id}.nii.gz"))
        elif i != 4:
            sitk.WriteImage(_make_image(prediction), str(predictions / f"{case_id}.nii.gz"))
            expected[case_id] = segmentation_metrics(prediction > 0, reference > 0, SPACING_XYZ[::-1])
        cases.append(Case(case_id=case_id, images={"T1": images / f"{case_id}.nii.gz"},
                          label=labels / f"{case_id}.nii.gz", site="A" if i % 2 else "B"))
    manifest_path = Manifest(channels=["T1"], cases=cases).save(tmp_path / "manifest.csv")
    return {"root": tmp_path, "manifest": manifest_path, "predictions": predictions, "expected": expected}
