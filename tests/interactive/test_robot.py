"""The simulated annotator: prompts lie in their intended region; corrections land on the largest error."""

from __future__ import annotations

import numpy as np
import pytest
from interactive_volumes import c_shape, ellipsoid
from scipy import ndimage

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.prompts import Click, Scribble
from sarcomakit.interactive.robot import (
    RobotConfig,
    RobotUser,
    eroded_contour,
    largest_error_component,
    medial_line,
    random_line,
)

SHAPE = (24, 36, 40)


def lumpy_tumour() -> np.ndarray:
    """Two overlapping ellipsoids: an irregular, non-symmetric object."""
    return ellipsoid(SHAPE, (12, 16, 18), (6, 9, 11)) | ellipsoid(SHAPE, (15, 22, 25), (5, 6, 6))


def inside(prompt, region: np.ndarray) -> bool:
    return bool(region[tuple(prompt.covered_voxels().T)].all())


# ---------------------------------------------------------------------- initial prompts
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal", "random"])
@pytest.mark.parametrize("jitter", [0, 2])
@pytest.mark.parametrize("reference", [lumpy_tumour(), c_shape()], ids=["lumpy", "c-shape"])
def test_initial_scribbles_lie_inside_tumour_and_background_on_its_largest_slice(plane, jitter, reference):
    for seed in range(4):
        prompts = RobotUser(RobotConfig(plane=plane, jitter=jitter), seed=seed).initial_prompts(reference)
        assert [type(p) for p in prompts] == [Scribble, Scribble]
        tumour_scribble, background_scribble = prompts
        assert tumour_scribble.positive and not background_scribble.positive
        assert inside(tumour_scribble, reference)
        assert inside(background_scribble, ~reference)
        axis = tumour_scribble.axis
        areas = reference.sum(axis=tuple(a for a in range(3) if a != axis))
        assert areas[tumour_scribble.slice_index] == areas.max()
        assert (background_scribble.axis, background_scribble.slice_index) == (axis, tumour_scribble.slice_index)
        if plane != "random":
            assert axis == {"axial": 0, "coronal": 1, "sagittal": 2}[plane]


def test_background_scribble_surrounds_the_tumour_at_the_margin():
    reference = lumpy_tumour()
    tumour, background = RobotUser(RobotConfig(plane="axial", jitter=0, background_margin=3)).initial_prompts(reference)
    tumour_slice = reference[tumour.slice_index]
    distance = ndimage.distance_transform_edt(~tumour_slice)
    loop = background.voxels[:, 1:]
    assert np.all(distance[tuple(loop.T)] >= 2.0) and np.all(distance[tuple(loop.T)] <= 4.5)
    # A loop around the tumour: it spans the tumour's extent on both in-plane axes.
    ys, xs = np.nonzero(tumour_slice)
    assert loop[:, 0].min() < ys.min() and loop[:, 0].max() > ys.max()
    assert loop[:, 1].min() < xs.min() and loop[:, 1].max() > xs.max()


def test_medial_line_runs_along_the_long_axis_of_an_elongated_region():
    region = np.zeros((20, 60), bool)
    region[6:14, 5:55] = True
    line = medial_line(region)
    assert region[tuple(line.T)].all()
    assert np.ptp(line[:, 1]) >= 35 and np.ptp(line[:, 0]) <= 4
    # A connected stroke: consecutive path pixels are 8-neighbours.
    assert np.abs(np.diff(line, axis=0)).max() <= 1


def test_stroke_shapes_stay_inside_a_non_convex_region():
    region = c_shape()[6]
    rng = np.random.default_rng(0)
    for points in [medial_line(region), eroded_contour(region), *[random_line(region, rng) for _ in range(20)]]:
        assert len(points) > 0
        assert region[tuple(points.T)].all()


def test_click_protocol_puts_positive_click_deep_inside_and_negatives_outside():
    reference = lumpy_tumour()
    prompts = RobotUser(RobotConfig(initial="clicks", n_negative_clicks=3), seed=1).initial_prompts(reference)
    assert all(isinstance(p, Click) for p in prompts)
    positive = [p for p in prompts if p.positive]
    negative = [p for p in prompts if not p.positive]
    assert len(positive) == 1 and len(negative) == 3
    depth = ndimage.distance_transform_edt(reference)
    assert depth[positive[0].voxel] == depth.max()
    assert all(not reference[p.voxel] for p in negative)


@pytest.mark.parametrize("jitter", [0, 2])
def test_extreme_points_are_six_tumour_voxels_at_or_near_the_extremes(jitter):
    reference = lumpy_tumour()
    prompts = RobotUser(RobotConfig(initial="extreme_points", jitter=jitter), seed=3).initial_prompts(reference)
    assert len(prompts) == 6 and all(isinstance(p, Click) and p.positive for p in prompts)
    assert all(reference[p.voxel] for p in prompts)
    voxels = np.argwhere(reference)
    for k, prompt in enumerate(prompts):
        axis, extreme = divmod(k, 2)
        target = voxels[:, axis].max() if extreme else voxels[:, axis].min()
        assert abs(prompt.voxel[axis] - target) <= jitter


# ---------------------------------------------------------------------- corrective prompts
def prediction_with_two_errors(larger: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A prediction missing one lobe and over-segmenting elsewhere; ``larger`` says which error is bigger."""
    reference = ellipsoid(SHAPE, (12, 18, 20), (8, 12, 14))
    missed = reference & ellipsoid(SHAPE, (12, 18, 30), (6, 6, 6) if larger == "missed" else (3, 3, 3))
    extra = ellipsoid(SHAPE, (12, 3, 20), (6, 4, 8) if larger == "extra" else (2, 2, 2)) & ~reference
    prediction = (reference & ~missed) | extra
    return reference, prediction, missed if larger == "missed" else extra


@pytest.mark.parametrize("larger", ["missed", "extra"])
@pytest.mark.parametrize("shape", ["medial_line", "random_line", "eroded_contour"])
def test_corrective_scribble_lands_on_the_largest_error_component_with_its_sign(larger, shape):
    reference, prediction, target = prediction_with_two_errors(larger)
    for seed in range(3):
        robot = RobotUser(RobotConfig(shapes=(shape,), jitter=1), seed=seed)
        (scribble,) = robot.corrective_prompts(reference, prediction)
        assert isinstance(scribble, Scribble)
        assert scribble.positive is (larger == "missed")
        assert inside(scribble, target)
        error_slice = np.take(target, scribble.slice_index, axis=scribble.axis)
        areas = target.sum(axis=tuple(a for a in range(3) if a != scribble.axis))
        assert error_slice.sum() == areas.max()


def test_largest_error_component_is_found_and_signed():
    reference, prediction, target = prediction_with_two_errors("extra")
    component = largest_error_component(reference, prediction)
    assert component is not None and not component.positive
    assert np.array_equal(component.mask, target)
    assert largest_error_component(reference, reference) is None


def test_corrective_click_is_in_the_largest_error_component():
    reference, prediction, target = prediction_with_two_errors("missed")
    (click,) = RobotUser(RobotConfig(corrective="click")).corrective_prompts(reference, prediction)
    assert isinstance(click, Click) and click.positive and target[click.voxel]


def test_no_correction_for_a_perfect_or_nearly_perfect_prediction():
    reference = lumpy_tumour()
    assert RobotUser().corrective_prompts(reference, reference) == []
    nearly = reference.copy()
    nearly[tuple(np.argwhere(reference)[0])] = False
    assert RobotUser(RobotConfig(min_error_voxels=2)).corrective_prompts(reference, nearly) == []
    assert len(RobotUser().corrective_prompts(reference, nearly)) == 1


def test_robot_replays_with_its_seed():
    reference = lumpy_tumour()
    def voxels(seed):
        return [p.covered_voxels() for p in RobotUser(RobotConfig(jitter=2), seed=seed).initial_prompts(reference)]
    assert all(np.array_equal(a, b) for a, b in zip(voxels(5), voxels(5), strict=True))
    assert any(not np.array_equal(a, b) for seed in range(6, 10) for a, b in zip(voxels(5), voxels(seed), strict=True))


def test_bad_reference_or_configuration_is_a_user_error():
    with pytest.raises(UserInputError, match="empty"):
        RobotUser().initial_prompts(np.zeros(SHAPE, bool))
    with pytest.raises(UserInputError, match="3D"):
        RobotUser().initial_prompts(np.ones((4, 4), bool))
    with pytest.raises(UserInputError, match="plane"):
        RobotConfig(plane="oblique")  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="shapes"):
        RobotConfig(shapes=("zigzag",))  # type: ignore[arg-type]
