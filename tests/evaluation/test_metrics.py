"""Segmentation metrics against analytic shapes and against MONAI's implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

from sarcomakit.evaluation.metrics import (
    METRIC_NAMES,
    dice,
    hausdorff_distance_95,
    segmentation_metrics,
    surface_dice,
    volume_difference,
)


def cube(shape=(30, 30, 30), start=(10, 10, 10), side=10) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[tuple(slice(s, s + side) for s in start)] = True
    return mask


def sphere(shape, centre, radius, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre, strict=True)) <= radius**2


def random_blob(rng: np.random.Generator, shape=(24, 40, 40), sigma=3.0) -> np.ndarray:
    """Irregular multi-component mask: thresholded smoothed noise."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (field - field.mean()) / field.std() > rng.uniform(0.3, 1.0)


# ---------------------------------------------------------------------- analytic cases
def test_dice_of_shifted_cubes_is_exact():
    a = cube()
    b = cube(start=(12, 10, 10))  # overlap 8 x 10 x 10
    assert dice(a, b) == pytest.approx(2 * 800 / 2000)


def test_dice_of_offset_spheres_matches_lens_volume():
    radius, offset = 12.0, 8.0
    a = sphere((48, 48, 60), (24, 24, 24), radius)
    b = sphere((48, 48, 60), (24, 24, 24 + offset), radius)
    # Intersection of two spheres of radius r at distance d: pi (4r + d)(2r - d)^2 / 12.
    lens = math.pi * (4 * radius + offset) * (2 * radius - offset) ** 2 / 12
    analytic = lens / (4 / 3 * math.pi * radius**3)
    assert dice(a, b) == pytest.approx(analytic, abs=0.01)


@pytest.mark.parametrize(("axis", "spacing", "expected_mm"), [
    (0, (3.0, 0.8, 0.7), 6.0),   # shift of 2 slices of 3 mm
    (1, (3.0, 0.8, 0.7), 1.6),
    (2, (3.0, 0.8, 0.7), 1.4),
])
def test_hd95_of_shifted_cube_in_mm_under_anisotropic_spacing(axis, spacing, expected_mm):
    # Every surface voxel lies within the shift of the other surface, and the shifted faces
    # (20% of the surface) sit exactly at the shift: the 95th percentile equals the shift in mm.
    a = cube()
    start = [10, 10, 10]
    start[axis] += 2
    b = cube(start=tuple(start))
    assert hausdorff_distance_95(a, b, spacing) == pytest.approx(expected_mm)
    assert hausdorff_distance_95(b, a, spacing) == pytest.approx(expected_mm)


def test_surface_dice_is_one_within_tolerance_and_below_one_beyond():
    spacing = (3.0, 1.0, 1.0)
    a = cube()
    b = cube(start=(12, 10, 10))  # faces 6 mm apart along z
    assert surface_dice(a, b, spacing, tolerance_mm=6.0) == pytest.approx(1.0)
    assert surface_dice(a, b, spacing, tolerance_mm=2.0) < 1.0
    assert surface_dice(a, b, spacing, tolerance_mm=5.9) < surface_dice(a, b, spacing, tolerance_mm=6.0)
    assert surface_dice(a, a, spacing, tolerance_mm=0.0) == 1.0


def test_volume_difference_in_ml():
    spacing = (2.0, 0.5, 0.5)  # 0.5 mm^3 per voxel
    a = cube()  # 1000 voxels -> 0.5 ml
    b = cube(side=20)  # 8000 voxels -> 4 ml
    result = volume_difference(a, b, spacing)
    assert result["volume_pred_ml"] == pytest.approx(0.5)
    assert result["volume_ref_ml"] == pytest.approx(4.0)
    assert result["volume_diff_ml"] == pytest.approx(-3.5)
    assert result["volume_diff_rel"] == pytest.approx(-3.5 / 4.0)


def test_mask_touching_the_image_border_keeps_its_border_surface():
    a = np.zeros((10, 10, 10), bool)
    a[:, :5] = True
    b = np.zeros_like(a)
    b[:, :6] = True
    # Without the border surface the distances would come only from the inner face.
    assert hausdorff_distance_95(a, b) == pytest.approx(1.0)
    assert 0.0 < surface_dice(a, b, tolerance_mm=0.5) < 1.0


# ---------------------------------------------------------------------- empty masks
def test_empty_mask_conventions():
    empty = np.zeros((10, 10, 10), bool)
    full = cube((10, 10, 10), (2, 2, 2), 4)
    both = segmentation_metrics(empty, empty, (1, 1, 1))
    assert (both["dice"], both["hd95"], both["surface_dice"]) == (1.0, 0.0, 1.0)
    assert math.isnan(both["volume_diff_rel"])
    for pred, ref in ((empty, full), (full, empty)):
        one = segmentation_metrics(pred, ref, (1, 1, 1))
        assert one["dice"] == 0.0
        assert math.isnan(one["hd95"])
        assert one["surface_dice"] == 0.0
        assert math.isnan(hausdorff_distance_95(pred, ref))
    assert segmentation_metrics(empty, full)["volume_diff_rel"] == -1.0
    assert math.isnan(segmentation_metrics(full, empty)["volume_diff_rel"])


def test_segmentation_metrics_has_all_keys_and_agrees_with_single_functions():
    rng = np.random.default_rng(3)
    pred, ref = random_blob(rng), random_blob(rng)
    spacing = (2.5, 0.9, 0.9)
    result = segmentation_metrics(pred, ref, spacing, tolerance_mm=1.5)
    assert tuple(result) == METRIC_NAMES
    assert result["dice"] == dice(pred, ref)
    assert result["hd95"] == hausdorff_distance_95(pred, ref, spacing)
    assert result["surface_dice"] == surface_dice(pred, ref, spacing, tolerance_mm=1.5)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="shape"):
        dice(np.zeros((3, 3, 3)), np.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="spacing"):
        hausdorff_distance_95(cube(), cube(), spacing=(0, 1, 1))
    with pytest.raises(ValueError, match="tolerance"):
        surface_dice(cube(), cube(), tolerance_mm=-1)


# ---------------------------------------------------------------------- reference library
def _one_hot(mask: np.ndarray) -> torch.Tensor:
    """(1, 2, z, y, x) one-hot tensor, background then foreground, as MONAI's metrics expect."""
    fg = torch.from_numpy(mask.astype(np.float32))
    return torch.stack([1 - fg, fg])[None]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_agreement_with_monai_on_random_blobs(seed):
    rng = np.random.default_rng(seed)
    pred, ref = random_blob(rng), random_blob(rng)
    spacing = tuple(float(s) for s in rng.uniform(0.5, 4.0, size=3))
    tolerance = float(rng.uniform(0.5, 4.0))
    ours = segmentation_metrics(pred, ref, spacing, tolerance_mm=tolerance)

    y_pred, y = _one_hot(pred), _one_hot(ref)
    metric = DiceMetric(include_background=False)
    metric(y_pred, y)
    monai_dice = float(metric.aggregate())
    monai_hd95 = float(compute_hausdorff_distance(y_pred, y, include_background=False, percentile=95,
                                                  spacing=list(spacing))[0, 0])
    monai_nsd = float(compute_surface_dice(y_pred, y, class_thresholds=[tolerance], include_background=False,
                                           spacing=list(spacing))[0, 0])
    assert ours["dice"] == pytest.approx(monai_dice, abs=1e-6)
    assert ours["hd95"] == pytest.approx(monai_hd95, rel=1e-4, abs=1e-4)
    assert ours["surface_dice"] == pytest.approx(monai_nsd, abs=1e-6)


def test_fast_on_a_typical_volume():
    import time

    rng = np.random.default_rng(0)
    ref = np.zeros((100, 160, 160), bool)
    ref[30:70, 40:120, 50:110] = sphere((40, 80, 60), (20, 40, 30), 25, spacing=(1.5, 1, 1))
    pred = ndimage.binary_dilation(ref, iterations=2) & (rng.random(ref.shape) > 0.01)
    start = time.perf_counter()
    segmentation_metrics(pred, ref, (3.0, 0.8, 0.8))
    assert time.perf_counter() - start < 5.0  # about 0.2 s on one core; generous for shared machines
