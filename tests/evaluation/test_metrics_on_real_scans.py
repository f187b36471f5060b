"""Evaluation and overlays on two real scans with anisotropic slices (skipped without ../shared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.metrics import compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from figure_checks import near_colour, read_png
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.evaluation.segmentation import evaluate_predictions
from sarcomakit.reporting.figures import PREDICTION_COLOUR, REFERENCE_COLOUR, overlay_figure

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "radiology"
pytestmark = pytest.mark.skipif(not (REAL / "lung1_label.nrrd").is_file(), reason="real sample scans absent")


def _perturbed(label: np.ndarray) -> np.ndarray:
    """A plausible prediction: one in-plane dilation, minus the label's last slice."""
    prediction = ndimage.binary_dilation(label > 0, structure=np.array([[[0, 1, 0], [1, 1, 1], [0, 1, 0]]], bool))
    prediction[np.flatnonzero(label.any(axis=(1, 2)))[-1]] = False
    return prediction.astype(np.uint8)


def test_evaluation_on_real_geometry_matches_monai(tmp_path):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    cases, expected = [], {}
    for name in ("brain1", "lung1"):
        label_image = sitk.ReadImage(str(REAL / f"{name}_label.nrrd"))
        label = sitk.GetArrayFromImage(label_image)
        prediction = _perturbed(label)
        image = sitk.GetImageFromArray(prediction)
        image.CopyInformation(label_image)
        sitk.WriteImage(image, str(predictions / f"{name}.nrrd"))
        spacing = list(label_image.GetSpacing()[::-1])
        # MONAI is given the region around the masks only (it crops there itself), to keep the test fast.
        box = ndimage.find_objects(((prediction > 0) | (label > 0)).astype(np.uint8))[0]
        box = tuple(slice(max(b.start - 2, 0), b.stop + 2) for b in box)
        one_hot = [torch.from_numpy(np.stack([m[box] == 0, m[box] > 0]).astype(np.float32))[None]
                   for m in (prediction, label)]
        expected[name] = {
            "hd95": float(compute_hausdorff_distance(*one_hot, percentile=95, spacing=spacing)[0, 0]),
            "surface_dice": float(compute_surface_dice(*one_hot, class_thresholds=[2.0], spacing=spacing)[0, 0]),
            "volume_ref_ml": (label > 0).sum() * np.prod(spacing) / 1000,
        }
        cases.append(Case(name, {"image": REAL / f"{name}_image.nrrd"}, REAL / f"{name}_label.nrrd"))
    result = evaluate_predictions(predictions, Manifest(["image"], cases), tmp_path / "out", show_progress=False,
                                  n_resamples=200)
    assert not result.failures
    rows = result.per_case.set_index("case_id")
    for name, reference in expected.items():
        assert rows.loc[name, "hd95"] == pytest.approx(reference["hd95"], rel=1e-4)
        assert rows.loc[name, "surface_dice"] == pytest.approx(reference["surface_dice"], abs=1e-6)
        assert rows.loc[name, "volume_ref_ml"] == pytest.approx(reference["volume_ref_ml"])
    # A missing slice of 5-6.5 mm dominates the surface error: HD95 is at least one slice thickness.
    assert rows.loc["lung1", "hd95"] >= 5.0


def test_overlay_on_a_real_ct(tmp_path):
    image = sitk.ReadImage(str(REAL / "lung1_image.nrrd"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL / "lung1_label.nrrd"))) > 0
    path = overlay_figure(sitk.GetArrayFromImage(image), label, _perturbed(label.astype(np.uint8)),
                          tmp_path / "lung1.png", title="lung1", spacing=image.GetSpacing()[::-1])
    pixels = read_png(path)
    assert near_colour(pixels, REFERENCE_COLOUR, 60).sum() > 100
    assert near_colour(pixels, PREDICTION_COLOUR, 60).sum() > 100
    grey = pixels[(pixels.max(axis=-1) - pixels.min(axis=-1)) < 5, 0]
    assert len(np.unique(grey)) > 100  # CT intensities shown over a window, not saturated to black and white
