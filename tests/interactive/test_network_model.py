"""The network model's geometry: plan preprocessing inside, prompts and masks mapped between grids exactly.

The network is replaced by a transparent stand-in (the object is where the preprocessed image exceeds
0.5, and it records what it is given), so that these tests check the mapping, not a training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from interactive_volumes import ellipsoid

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry
from sarcomakit.evaluation.metrics import dice
from sarcomakit.interactive.network_model import (
    NetworkInteractiveModel,
    PlanGridModel,
    PreparedImage,
    index_mapping,
    input_divisor,
    network_input,
)
from sarcomakit.interactive.prompts import Scribble, encode_seeds
from sarcomakit.interactive.roi import Roi
from sarcomakit.interactive.session import InteractiveSession
from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.plan import Plan

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "radiology"


class ThresholdGrid:
    """Stands in for the network on the plan's grid: foreground where the image exceeds 0.5; records its inputs."""

    n_channels = 1
    threshold = 0.5

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def window(self, box, image_shape):  # noqa: ANN001, ANN201
        return tuple(slice(a, b) for a, b in box)

    def foreground_probability(self, image, previous, positive, negative, spacing):  # noqa: ANN001, ANN201
        self.calls.append({"image": image.copy(), "previous": None if previous is None else previous.copy(),
                           "positive": positive.copy(), "negative": negative.copy(), "spacing": spacing})
        return (image[0] > 0.5).astype(np.float32)


def make_plan(target_spacing=(1.5, 1.5, 1.5), scheme: str = "none") -> Plan:  # noqa: ANN001
    return Plan(channels=["MR"], labels={"background": 0, "tumour": 1}, target_spacing=list(target_spacing),
                anisotropic=False, low_res_axis=None, normalization=[ChannelNormalization(channel="MR", scheme=scheme)],
                median_shape=[32, 32, 32], patch_size=[16, 32, 32], batch_size=2, memory_budget_mb=1000.0)


def oblique_image(background: float = 0.1) -> tuple[sitk.Image, np.ndarray]:
    """A 3 mm-slice, rotated and flipped image of an ellipsoid (about 1, background ``background``)."""
    shape = (16, 48, 52)
    reference = ellipsoid(shape, (8, 22, 27), (4.2, 14, 12))
    array = np.where(reference, 1.0, background).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.9, 3.0))
    angle = np.deg2rad(25)
    image.SetDirection((-np.cos(angle), -np.sin(angle), 0, -np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    image.SetOrigin((30.0, -12.0, 4.0))
    return image, reference


def test_index_mapping_agrees_with_simpleitk_physical_points() -> None:
    image, _ = oblique_image()
    source = Geometry.of(image)
    target = Geometry(size=(30, 40, 50), spacing=(1.5, 1.2, 2.0), origin=(3.0, -1.0, 2.0),
                      direction=image.GetDirection())
    matrix, offset = index_mapping(source, target)
    target_image = target.reference_image()
    for index in ([0, 0, 0], [3, 10, 7], [15, 47, 51]):
        physical = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in reversed(index)])
        expected = target_image.TransformPhysicalPointToContinuousIndex(physical)[::-1]
        np.testing.assert_allclose(matrix @ np.asarray(index, float) + offset, expected, atol=1e-9)


def test_mask_comes_back_on_the_original_oblique_anisotropic_grid() -> None:
    image, reference = oblique_image()
    stand_in = ThresholdGrid()
    model = NetworkInteractiveModel(stand_in, make_plan())  # type: ignore[arg-type]
    session = InteractiveSession(model, image)
    prepared = session._model_image
    assert isinstance(prepared, PreparedImage)
    assert prepared.grid.spacing == pytest.approx((1.5, 1.5, 1.5), rel=0.05)  # the plan's grid, reoriented
    session.add_scribble([(8, 22, x) for x in range(20, 35)])
    mask = session.predict()
    assert mask.shape == reference.shape
    assert dice(mask, reference) > 0.93
    assert not session.last_roi.clipped  # the ROI grew until the object fitted
    out = session.mask_image()
    assert Geometry.of(out).matches(Geometry.of(image), atol=1e-6)
    assert stand_in.calls[-1]["spacing"] == pytest.approx(prepared.grid.array_spacing)


def test_a_scribble_on_one_thick_slice_covers_the_grid_slices_inside_it() -> None:
    image, _ = oblique_image()
    stand_in = ThresholdGrid()
    model = NetworkInteractiveModel(stand_in, make_plan())  # type: ignore[arg-type]
    session = InteractiveSession(model, image)
    session.add_scribble([(8, 22, x) for x in range(20, 35)])
    session.predict()
    positive = stand_in.calls[0]["positive"]
    prepared: PreparedImage = session._model_image  # type: ignore[assignment]
    slice_axis = int(np.argmax(np.abs(prepared.matrix[:, 0])))  # the grid axis along the original slices
    covered = np.unique(np.argwhere(positive)[:, slice_axis])
    assert len(covered) == 2  # a 3 mm slice holds two 1.5 mm grid slices
    # every positive grid voxel maps back into the scribble's slice, and is inside the object
    assert (stand_in.calls[0]["image"][0][positive] > 0.5).all()
    # the stroke stays connected on the coarser in-plane grid (0.8-0.9 mm -> 1.5 mm)
    from scipy import ndimage

    assert ndimage.label(positive, structure=np.ones((3, 3, 3)))[1] == 1


def test_the_previous_mask_reaches_the_network_on_its_grid() -> None:
    image, reference = oblique_image()
    stand_in = ThresholdGrid()
    session = InteractiveSession(NetworkInteractiveModel(stand_in, make_plan()), image)  # type: ignore[arg-type]
    session.add_scribble([(8, 22, x) for x in range(20, 35)])
    session.predict()
    session.add_click((8, 40, 27), positive=False)
    session.predict()
    last = stand_in.calls[-1]
    assert last["previous"] is not None and last["negative"].any()
    assert dice(last["previous"], last["image"][0] > 0.5) > 0.9


def test_a_roi_outside_the_plans_crop_predicts_nothing() -> None:
    image, reference = oblique_image(background=0.0)  # zero background: the plan crops to the object
    stand_in = ThresholdGrid()
    model = NetworkInteractiveModel(stand_in, make_plan())  # type: ignore[arg-type]
    prepared = model.prepare(sitk.GetArrayFromImage(image)[None], geometry=Geometry.of(image))
    assert prepared.data.shape[1:] != prepared.reference.array_shape
    far = Roi((0, 0, 0), (3, 4, 4))
    prompt = Scribble.from_voxels([(1, 1, 1), (1, 1, 2)], positive=True)
    assert not model.predict(prepared, [prompt], None, far).any()
    inside = Roi((4, 10, 14), (13, 36, 42))
    mask = model.predict(prepared, [Scribble.from_voxels([(8, 22, x) for x in range(20, 35)], True)], None, inside)
    assert mask.shape == inside.shape and dice(mask, reference[inside.slices]) > 0.9


def test_a_one_channel_model_takes_the_normalisation_of_the_named_channel() -> None:
    plan = make_plan(scheme="zscore")
    plan = plan.model_copy(update={"channels": ["T1", "CT"], "normalization": [
        ChannelNormalization(channel="T1", scheme="zscore"),
        ChannelNormalization(channel="CT", scheme="ct", clip_low=-100, clip_high=200, mean=50.0, std=25.0)]})
    ct = NetworkInteractiveModel(ThresholdGrid(), plan, channel="CT")  # type: ignore[arg-type]
    assert ct.input_plan.channels == ["CT"] and ct.input_plan.normalization[0].scheme == "ct"
    first = NetworkInteractiveModel(ThresholdGrid(), plan)  # type: ignore[arg-type]
    assert first.input_plan.normalization[0].scheme == "zscore"
    other = NetworkInteractiveModel(ThresholdGrid(), plan, channel="PET")  # type: ignore[arg-type]
    assert other.input_plan.channels == ["PET"] and other.input_plan.normalization[0].scheme == "zscore"
    prepared = ct.prepare(np.full((1, 8, 16, 16), 100.0, np.float32), spacing=(1.5, 1.5, 1.5))
    np.testing.assert_allclose(prepared.data, 2.0)  # (100 - 50) / 25
    with pytest.raises(UserInputError, match="1 image channel"):
        ct.prepare(np.zeros((2, 8, 16, 16), np.float32))


def test_plan_grid_model_pads_to_the_network_divisor_and_crops_back() -> None:
    seen: list[tuple[int, ...]] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(x.shape))
            logits = torch.full((x.shape[0], 2, *x.shape[2:]), 0.5)
            logits[:, 1] = x[:, 2] - x[:, 3]  # foreground where the positive prompt outweighs the negative
            return logits

    model = PlanGridModel(Recorder(), n_channels=1, encoding="binary", divisor=(4, 16, 16))
    image = np.zeros((1, 10, 20, 30), np.float32)
    roi = Roi((1, 2, 3), (8, 19, 29))
    prompt = Scribble.from_voxels([(4, 10, x) for x in range(10, 15)], positive=True)
    mask = model.predict(image, [prompt], None, roi)
    assert seen[-1] == (1, 4, 8, 32, 32) and mask.shape == roi.shape
    assert np.array_equal(np.argwhere(mask), np.array([[3, 8, x] for x in range(7, 12)]))


def test_network_input_stacks_image_previous_mask_and_prompt_channels() -> None:
    image = np.random.default_rng(0).normal(size=(2, 6, 8, 8)).astype(np.float32)
    positive, negative = np.zeros((6, 8, 8), bool), np.zeros((6, 8, 8), bool)
    positive[3, 4, 4] = negative[0, 0, 0] = True
    previous = np.zeros((6, 8, 8), bool)
    previous[2:4] = True
    inputs = network_input(image, previous, positive, negative, encoding="edt", scale_mm=5.0, spacing=(2, 1, 1))
    assert inputs.shape == (5, 6, 8, 8) and inputs.dtype == np.float32
    np.testing.assert_array_equal(inputs[:2], image)
    np.testing.assert_array_equal(inputs[2], previous)
    np.testing.assert_allclose(inputs[3:], encode_seeds(positive, negative, encoding="edt", spacing=(2, 1, 1),
                                                         scale_mm=5.0))
    assert np.array_equal(network_input(image, None, positive, negative, encoding="binary", scale_mm=1,
                                        spacing=None)[2], np.zeros((6, 8, 8)))


def test_input_divisor_follows_the_networks_strides() -> None:
    # two poolings; an axis is halved while the patch side is at least 16: 16 -> 8 (then kept), 32 -> 16 -> 8
    assert input_divisor("resunet", {"channels": [8, 16, 32]}, (16, 32, 32)) == (2, 4, 4)
    # four poolings: a thin patch keeps its z resolution, 64 -> 32 -> 16 -> 8 (then kept)
    assert input_divisor("resunet", {}, (8, 64, 64)) == (1, 8, 8)
    assert input_divisor("segresnet", {}, (32, 32, 32)) == (8, 8, 8)


@pytest.mark.skipif(not (REAL / "brain1_label.nrrd").is_file(), reason="real sample scans absent")
def test_on_the_real_brain_mri_grid_the_mask_comes_back_where_the_tumour_is() -> None:
    label = sitk.ReadImage(str(REAL / "brain1_label.nrrd"))
    reference = sitk.GetArrayFromImage(label) > 0
    # the stand-in thresholds its input, so give it the mask as the image, on the scan's real header
    image = sitk.Cast(label > 0, sitk.sitkFloat32)
    model = NetworkInteractiveModel(ThresholdGrid(), make_plan((3.0, 1.0, 1.0)))  # type: ignore[arg-type]
    session = InteractiveSession(model, image)
    z = int(np.argmax(reference.sum(axis=(1, 2))))
    voxels = np.argwhere(reference[z])
    session.add_scribble([(z, y, x) for y, x in voxels[:: max(1, len(voxels) // 20)]])
    mask = session.predict()
    assert mask.shape == reference.shape and dice(mask, reference) > 0.9


def test_the_network_sees_a_patch_sized_window_normalised_by_its_own_statistics() -> None:
    seen: list[torch.Tensor] = []

    class Recorder(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.clone())
            logits = torch.full((x.shape[0], 2, *x.shape[2:]), 0.5)
            logits[:, 1] = x[:, 1 + 1]  # foreground on the positive prompt
            return logits

    image = np.random.default_rng(0).normal(size=(1, 16, 40, 40)).astype(np.float32)
    roi = Roi((6, 14, 16), (10, 22, 24))
    inside = Scribble.from_voxels([(8, 18, x) for x in range(18, 22)], positive=True)
    outside = Scribble.from_voxels([(8, 28, x) for x in range(18, 22)], positive=True)  # in the window, not the ROI
    for local in (True, False):
        seen.clear()
        model = PlanGridModel(Recorder(), n_channels=1, encoding="binary", divisor=(1, 1, 1),
                              local_normalisation=local, context_shape=(8, 24, 24))
        mask = model.predict(image, [inside, outside], None, roi)
        model.predict(3.0 * image + 100.0, [inside, outside], None, roi)
        assert seen[0].shape == (1, 4, 8, 24, 24)  # the ROI grown to the patch size about its centre
        assert torch.allclose(seen[0][:, 0], seen[1][:, 0], atol=1e-4) == local
        assert seen[0][0, 2].sum() == 8  # both strokes reach the network
        assert mask.shape == roi.shape and mask.sum() == 4  # the answer is cut back to the ROI
    from sarcomakit.interactive.network_model import robust_statistics

    window = image[:, 4:12, 6:30, 8:32]
    median, scale = robust_statistics(window)
    model = PlanGridModel(Recorder(), n_channels=1, divisor=(1, 1, 1), local_normalisation=True,
                          context_shape=(8, 24, 24))
    seen.clear()
    model.predict(image, [inside], None, roi)
    np.testing.assert_allclose(seen[0][0, 0].numpy(), ((window - median) / scale)[0], atol=1e-5)


def test_context_box_grows_a_region_to_the_patch_size_inside_the_image() -> None:
    from sarcomakit.interactive.network_model import context_box

    assert context_box([(10, 14), (0, 5), (30, 60)], (8, 16, 16), (40, 40, 64)) == \
        (slice(8, 16), slice(0, 16), slice(30, 60))
    assert context_box([(0, 4), (0, 4), (0, 4)], (8, 16, 16), (6, 40, 40)) == (slice(0, 6), slice(0, 16),
                                                                               slice(0, 16))
    assert context_box([(3, 5), (3, 5), (3, 5)], None, (8, 8, 8)) == (slice(3, 5),) * 3
