"""Resampling grids, anisotropic handling, label resampling and reorientation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from planning_data import ellipsoid, make_image

from sarcomakit.core.io.image import Geometry
from sarcomakit.planning.resample import (
    cropped_geometry,
    nonzero_bbox,
    orientation_of,
    reorient,
    resample_label,
    resample_to_spacing,
    separate_axis,
    target_grid,
)


def test_target_grid_covers_the_field_of_view():
    geometry = Geometry(size=(100, 81, 10), spacing=(0.5, 0.5, 5.0), origin=(10.0, -20.0, 3.0),
                        direction=(0, 1, 0, -1, 0, 0, 0, 0, 1))
    grid = target_grid(geometry, [2.0, 1.0, 1.0])
    assert grid.size == (50, 40, 25)  # round(extent / target): 50 mm, 40.5 mm, 50 mm
    assert grid.spacing == pytest.approx((1.0, 40.5 / 40, 2.0))  # the extent is kept exactly
    assert grid.direction == geometry.direction

    def corner(g, sign):  # outer edge of the first (sign -1) or last (sign +1) voxel, physical
        index = [-0.5 if sign < 0 else n - 0.5 for n in g.size]
        d = np.asarray(g.direction).reshape(3, 3)
        return np.asarray(g.origin) + d @ (np.asarray(index) * np.asarray(g.spacing))

    for sign in (-1, 1):
        np.testing.assert_allclose(corner(grid, sign), corner(geometry, sign), atol=1e-9)
    same = target_grid(geometry, geometry.array_spacing)
    assert same == geometry


def test_resampled_image_geometry_follows_direction():
    direction = (0, 1, 0, -1, 0, 0, 0, 0, 1)  # rotated in-plane
    image = make_image(np.zeros((10, 20, 30), np.float32), (0.5, 0.5, 4.0), (1.0, 2.0, 3.0), direction)
    out = resample_to_spacing(image, [2.0, 1.0, 1.0])
    assert out.GetSize() == (15, 10, 20)
    assert out.GetSpacing() == pytest.approx((1.0, 1.0, 2.0))
    assert out.GetDirection() == pytest.approx(direction)
    in_centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    out_centre = out.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in out.GetSize()])
    assert out_centre == pytest.approx(in_centre)


def test_separate_axis_rule():
    assert separate_axis([5.0, 1.0, 1.0], [5.0, 1.0, 1.0]) == 0
    assert separate_axis([1.0, 1.0, 1.0], [4.0, 1.0, 1.0]) == 0  # the target decides when the input does not
    assert separate_axis([2.0, 1.0, 1.0], [2.0, 1.0, 1.0]) is None
    assert separate_axis([0.2, 1.0, 1.0], [0.2, 1.0, 1.0]) is None  # two axes share the largest spacing


def test_thick_slices_are_not_blended():
    # Slices of constant values 0, 10, 20, ...: nearest across slices copies them, never mixes them.
    array = np.repeat(np.arange(8, dtype=np.float32)[:, None, None] * 10, 32, axis=1).repeat(32, axis=2)
    image = make_image(array, (1.0, 1.0, 5.0))
    out = sitk.GetArrayFromImage(resample_to_spacing(image, [2.0, 0.5, 0.5]))
    assert set(np.unique(out)) <= set(np.unique(array))
    blended = sitk.GetArrayFromImage(resample_to_spacing(image, [2.0, 0.5, 0.5], across_slices="linear"))
    assert len(set(np.unique(blended)) - set(np.unique(array))) > 0


def test_in_plane_interpolation_is_linear():
    ramp = np.tile(np.arange(16, dtype=np.float32), (4, 16, 1))  # x ramp, 1 mm voxels
    out = sitk.GetArrayFromImage(resample_to_spacing(make_image(ramp), [1.0, 1.0, 0.5]))
    interior = out[:, :, 2:-2]
    assert np.allclose(np.diff(interior, axis=2), 0.5, atol=1e-4)


def test_label_resampling_keeps_classes_and_agrees_with_nearest():
    shape = (20, 60, 60)
    label = np.zeros(shape, np.uint8)
    label[ellipsoid(shape, (10, 30, 30), (8, 20, 20))] = 1
    label[ellipsoid(shape, (10, 30, 30), (4, 8, 8))] = 2
    label[2:4, 2:4, 2:4] = 3  # a small class, 2 voxels wide
    geometry = Geometry.of(make_image(label, (0.8, 0.8, 2.0)))
    for spacing in ([1.0, 1.0, 1.0], [2.5, 1.6, 1.6], [6.5, 0.8, 0.8]):
        linear = resample_label(label, geometry, spacing)
        nearest = resample_label(label, geometry, spacing, method="nearest")
        assert linear.shape == nearest.shape == tuple(target_grid(geometry, spacing).array_shape)
        assert linear.dtype == np.uint8
        for c in (1, 2):
            a, b = linear == c, nearest == c
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
            volume_in = (label == c).sum() * 0.8 * 0.8 * 2.0
            volume_out = a.sum() * np.prod(spacing)
            assert volume_out == pytest.approx(volume_in, rel=0.15)
    upsampled = resample_label(label, geometry, [1.0, 0.4, 0.4])
    assert set(np.unique(upsampled)) == {0, 1, 2, 3}


def test_empty_label_resamples_to_background():
    geometry = Geometry.of(make_image(np.zeros((4, 8, 8), np.uint8)))
    out = resample_label(np.zeros((4, 8, 8), np.uint8), geometry, [2.0, 2.0, 2.0])
    assert out.shape == (2, 4, 4) and not out.any()


def test_nonzero_bbox_and_cropped_geometry():
    data = np.zeros((2, 10, 12, 14), np.float32)
    data[0, 2:5, 3:7, 4:9] = 1.0
    data[1, 6, 1, 10] = -3.0
    bbox = nonzero_bbox(data)
    assert bbox == [[2, 7], [1, 7], [4, 11]]
    assert nonzero_bbox(np.zeros((1, 3, 4, 5))) == [[0, 3], [0, 4], [0, 5]]
    image = make_image(data[0], (0.5, 0.7, 2.0), (1.0, 2.0, 3.0), (0, 1, 0, -1, 0, 0, 0, 0, 1))
    crop = cropped_geometry(Geometry.of(image), bbox)
    assert crop.size == (7, 6, 5)
    assert crop.origin == pytest.approx(image.TransformIndexToPhysicalPoint([4, 1, 2]))


def test_reorientation_is_a_permutation_with_identical_positions():
    array = np.arange(3 * 4 * 5, dtype=np.float32).reshape(3, 4, 5)
    image = make_image(array, (0.5, 0.7, 2.0), (1.0, 2.0, 3.0), (-1, 0, 0, 0, 0, 1, 0, -1, 0))
    assert orientation_of(image) != "LPS"
    out = reorient(image, "LPS")
    assert orientation_of(out) == "LPS"
    assert np.allclose(np.asarray(out.GetDirection()).reshape(3, 3), np.eye(3))
    assert sorted(out.GetSize()) == sorted(image.GetSize())
    corner = out.TransformIndexToPhysicalPoint([0, 0, 0])
    index = image.TransformPhysicalPointToIndex(corner)
    assert image[index] == out[0, 0, 0]
    assert reorient(out, "LPS") is out


def test_slice_copy_positions_match_nnunet_including_ties():
    # 40 slices of 4.5 mm onto 44 slices: output slice j samples input index (j + 0.5) * 40 / 44 - 0.5,
    # which is exactly k + 0.5 for j = 5, 16, 27, 38; ties go to the upper slice, as in scipy's order 0.
    from fractions import Fraction

    array = np.repeat(np.arange(40, dtype=np.float32)[:, None, None], 8, axis=1).repeat(8, axis=2)
    image = make_image(array, (1.0, 1.0, 4.5))
    out = sitk.GetArrayFromImage(resample_to_spacing(image, [4.5 * 40 / 44, 1.0, 1.0]))
    expected = [int(np.floor(Fraction(2 * j + 1, 2) * Fraction(40, 44) - Fraction(1, 2) + Fraction(1, 2)))
                for j in range(44)]
    assert out.shape[0] == 44
    assert out[:, 0, 0].astype(int).tolist() == expected
