"""Planning, preprocessing and restoring on two real scans (brain MRI, lung CT; thick slices).

The scans are pyradiomics' test data, kept in the shared data folder beside the repository; the
tests skip when it is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from sarcomakit.core.io.image import Geometry
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.planning import compute_fingerprint, make_plan, preprocess_case, restore_to_input_geometry

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "radiology"

pytestmark = pytest.mark.skipif(not (DATA / "brain1_image.nrrd").is_file(), reason="shared radiology data absent")


@pytest.mark.slow
@pytest.mark.parametrize("name, channel, target", [
    ("brain1", "MR", None),            # MR, y axis flipped in the file (direction diag(1, -1, 1))
    ("brain1", "MR", [3.0, 0.8, 0.8]),  # 6.5 mm slices upsampled to 3 mm
    ("lung1", "CT", [5.0, 0.8, 0.8]),  # CT, 0.57 mm in-plane downsampled to 0.8 mm (tumour of 837 voxels)
])
def test_plan_preprocess_restore(name, channel, target):
    image_path, label_path = DATA / f"{name}_image.nrrd", DATA / f"{name}_label.nrrd"
    manifest = Manifest(channels=[channel], cases=[Case(case_id=name, images={channel: image_path},
                                                        label=label_path)])
    fingerprint = compute_fingerprint(manifest, show_progress=False)
    plan = make_plan(fingerprint, target_spacing=target)
    assert plan.anisotropic and plan.low_res_axis == 0  # thick slices
    assert plan.normalization[0].scheme == ("ct" if channel == "CT" else "zscore")
    case = preprocess_case(manifest.cases[0], plan)
    assert case.geometry.array_spacing == pytest.approx(plan.target_spacing, rel=0.02)
    assert np.isfinite(case.data).all()
    one_hot = np.stack([case.label == 0, case.label == 1]).astype(np.float32)
    restored = restore_to_input_geometry(one_hot, case).argmax(0)
    original = sitk.ReadImage(str(label_path))
    truth = sitk.GetArrayFromImage(original) > 0
    dice = 2 * (truth & (restored == 1)).sum() / (truth.sum() + (restored == 1).sum())
    assert dice > 0.95
    mask = sitk.GetImageFromArray(restored.astype(np.uint8))
    case.reference.apply(mask)
    assert Geometry.of(mask) == Geometry.of(original)
