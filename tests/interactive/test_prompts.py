"""Prompt validation and encodings: values, distances in mm, monotone decay, regions of interest."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.prompts import (
    Box,
    Click,
    Scribble,
    check_prompt_in_image,
    check_prompts,
    encode_prompts,
    rasterize_prompts,
)
from sarcomakit.interactive.roi import Roi

SHAPE = (10, 20, 30)


# ---------------------------------------------------------------------- validation
def test_scribble_infers_its_slice_and_merges_duplicates():
    scribble = Scribble.from_voxels([(2, 5, 5), (2, 5, 6), (2, 6, 6), (2, 5, 6)], positive=True)
    assert scribble.axis == 0
    assert scribble.slice_index == 2
    assert scribble.voxels.shape == (3, 3)
    sagittal = Scribble.from_voxels([(1, 2, 7), (3, 4, 7)], positive=False)
    assert (sagittal.axis, sagittal.positive) == (2, False)


@pytest.mark.parametrize(("voxels", "message"), [
    ([], "no voxels"),
    ([(1, 2)], "shape (N, 3)"),
    ([[(1, 2, 3)]], "shape (N, 3)"),
    ([(1, 2, 3), (2, 3, 4)], "one slice"),
    ([(1, 2, 3.5)], "integer voxel indices"),
    ([(1, 2, float("nan"))], "NaN"),
    ([("a", 2, 3)], "not numbers"),
])
def test_bad_scribbles_are_user_errors_saying_what_is_wrong(voxels, message):
    with pytest.raises(UserInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Scribble.from_voxels(voxels, positive=True)


def test_scribble_axis_given_must_be_its_plane():
    with pytest.raises(UserInputError, match="one slice"):
        Scribble.from_voxels([(2, 5, 5), (2, 6, 6)], positive=True, axis=1)
    assert Scribble.from_voxels([(2, 5, 5), (2, 5, 6)], positive=True, axis=1).axis == 1


def test_click_and_box_validation():
    assert Click.from_voxel((1, 2, 3), positive=True).voxel == (1, 2, 3)
    assert Click.from_voxel(np.array([1.0, 2.0, 3.0]), positive=False).voxel == (1, 2, 3)
    with pytest.raises(UserInputError):
        Click.from_voxel((1, 2), positive=True)
    box = Box.from_corners((4, 8, 2), (4, 3, 6))
    assert (box.start, box.stop, box.axis) == ((4, 3, 2), (4, 8, 6), 0)
    assert len(box.covered_voxels()) == 6 * 5
    with pytest.raises(UserInputError, match="not on one slice"):
        Box.from_corners((1, 1, 1), (2, 2, 2))


@pytest.mark.parametrize("voxel", [(10, 0, 0), (0, 20, 0), (0, 0, 30), (-1, 0, 0)])
def test_prompts_outside_the_image_are_user_errors_naming_voxel_and_shape(voxel):
    with pytest.raises(UserInputError, match=r"outside the image.*\(10, 20, 30\)"):
        check_prompt_in_image(Click.from_voxel(voxel, positive=True), SHAPE)
    check_prompt_in_image(Click.from_voxel((9, 19, 29), positive=True), SHAPE)


def test_empty_prompt_list_and_non_prompts_are_user_errors():
    with pytest.raises(UserInputError, match="no prompts"):
        check_prompts([], SHAPE)
    with pytest.raises(UserInputError, match="not a prompt"):
        check_prompts([(1, 2, 3)], SHAPE)  # type: ignore[list-item]
    with pytest.raises(UserInputError, match="3D image"):
        check_prompt_in_image(Click.from_voxel((1, 2, 3), positive=True), (10, 20))


# ---------------------------------------------------------------------- rasterisation
def test_later_prompts_override_earlier_ones_on_shared_voxels():
    first = Scribble.from_voxels([(1, 1, x) for x in range(5)], positive=True)
    correction = Click.from_voxel((1, 1, 2), positive=False)
    positive, negative = rasterize_prompts([first, correction], SHAPE)
    assert positive.sum() == 4 and negative.sum() == 1
    assert negative[1, 1, 2] and not positive[1, 1, 2]
    assert not (positive & negative).any()


def test_rasterize_in_a_roi_shifts_and_crops():
    roi = Roi((1, 2, 3), (4, 8, 10))
    inside = Click.from_voxel((1, 2, 3), positive=True)
    outside = Click.from_voxel((5, 5, 5), positive=False)
    positive, negative = rasterize_prompts([inside, outside], SHAPE, roi)
    assert positive.shape == roi.shape == (3, 6, 7)
    assert positive[0, 0, 0] and positive.sum() == 1
    assert not negative.any()


# ---------------------------------------------------------------------- encodings
def test_binary_encoding_marks_prompt_voxels_per_sign():
    prompts = [Scribble.from_voxels([(3, 4, x) for x in range(2, 7)], positive=True),
               Box.from_corners((5, 1, 1), (5, 2, 3), positive=False)]
    channels = encode_prompts(prompts, SHAPE, encoding="binary")
    assert channels.shape == (2, *SHAPE) and channels.dtype == np.float32
    assert set(np.unique(channels)) == {0.0, 1.0}
    assert channels[0].sum() == 5 and channels[0][3, 4, 2:7].all()
    assert channels[1].sum() == 6 and channels[1][5, 1:3, 1:4].all()


def test_channel_without_prompts_is_all_zeros_in_every_encoding():
    prompts = [Click.from_voxel((5, 10, 15), positive=True)]
    for encoding in ("binary", "edt", "gaussian"):
        channels = encode_prompts(prompts, SHAPE, encoding=encoding)
        assert channels[0].max() == 1.0
        assert not channels[1].any()


def test_edt_encoding_is_exponential_decay_of_the_distance_in_mm():
    spacing = (3.0, 1.0, 0.5)
    click = Click.from_voxel((5, 10, 15), positive=False)
    channels = encode_prompts([click], SHAPE, encoding="edt", spacing=spacing, scale_mm=4.0)
    negative = channels[1]
    assert negative[5, 10, 15] == 1.0
    assert negative[6, 10, 15] == pytest.approx(math.exp(-3.0 / 4.0), rel=1e-6)   # one slice: 3 mm
    assert negative[5, 10, 21] == pytest.approx(math.exp(-3.0 / 4.0), rel=1e-6)   # six columns: 3 mm
    assert negative[7, 14, 15] == pytest.approx(math.exp(-math.hypot(6.0, 4.0) / 4.0), rel=1e-6)


@pytest.mark.parametrize("encoding", ["edt", "gaussian"])
def test_distance_encodings_decrease_strictly_away_from_the_prompt(encoding):
    scribble = Scribble.from_voxels([(5, 10, x) for x in range(10, 20)], positive=True)
    positive = encode_prompts([scribble], SHAPE, encoding=encoding, scale_mm=3.0)[0]
    along_y = positive[5, 10:20, 15]
    along_z = positive[5:10, 10, 15]
    for profile in (along_y, along_z):
        assert profile[0] == pytest.approx(1.0)
        assert np.all(np.diff(profile) < 0)
    assert positive.min() >= 0.0 and positive.max() <= 1.0


def test_gaussian_encoding_of_a_click_is_the_normalised_gaussian():
    sigma = 2.0
    click = Click.from_voxel((5, 10, 15), positive=True)
    positive = encode_prompts([click], SHAPE, encoding="gaussian", scale_mm=sigma)[0]
    for offset in (1, 2, 3):
        assert positive[5, 10, 15 + offset] == pytest.approx(math.exp(-offset**2 / (2 * sigma**2)), rel=1e-4)


def test_edt_differs_from_gaussian_between_strokes():
    # Two parallel strokes 8 voxels apart: the Gaussian sums and keeps the gap bright, the EDT
    # decays with the distance to the nearer stroke only.
    strokes = [Scribble.from_voxels([(5, y, x) for x in range(5, 25)], positive=True) for y in (6, 14)]
    edt = encode_prompts(strokes, SHAPE, encoding="edt", scale_mm=2.0)[0]
    gaussian = encode_prompts(strokes, SHAPE, encoding="gaussian", scale_mm=2.0)[0]
    assert edt[5, 10, 15] == pytest.approx(math.exp(-4.0 / 2.0), rel=1e-6)
    assert gaussian[5, 10, 15] != pytest.approx(edt[5, 10, 15], rel=0.05)


def test_encoding_in_a_roi_measures_distances_from_prompts_inside_it():
    roi = Roi((2, 5, 5), (8, 15, 25))
    click = Click.from_voxel((5, 10, 15), positive=True)
    channels = encode_prompts([click], SHAPE, encoding="edt", roi=roi)
    assert channels.shape == (2, 6, 10, 20)
    assert channels[0][3, 5, 10] == 1.0


def test_unknown_encoding_or_scale_is_a_user_error():
    click = [Click.from_voxel((1, 1, 1), positive=True)]
    with pytest.raises(UserInputError, match="unknown prompt encoding"):
        encode_prompts(click, SHAPE, encoding="disk")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="scale_mm"):
        encode_prompts(click, SHAPE, scale_mm=0.0)
