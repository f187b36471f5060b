"""InteractiveSession: undo/reset, masks on the original grid, ROI use, errors that never break the session."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import SimpleITK as sitk
from interactive_volumes import ellipsoid

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.classical import GeodesicModel
from sarcomakit.interactive.protocol import InteractiveModel
from sarcomakit.interactive.roi import Roi
from sarcomakit.interactive.session import InteractiveSession

SHAPE = (20, 40, 44)


class BoxAroundPositives:
    """A transparent model: the bounding box of the positive prompt voxels, recorded calls."""

    name = "box"

    def __init__(self, n_channels: int | None = None) -> None:
        self.n_channels = n_channels
        self.calls: list[dict] = []

    def predict(self, image, prompts, previous_mask, roi, *, spacing=None):
        self.calls.append({"roi": roi, "spacing": spacing, "n_prompts": len(prompts), "image_shape": image.shape,
                           "previous": None if previous_mask is None else previous_mask.copy()})
        full = np.zeros(image.shape[1:], bool)
        positives = [p.covered_voxels() for p in prompts if p.positive]
        if positives:
            box = Roi.around(np.concatenate(positives))
            full[box.slices] = True
        return full[roi.slices]


def image() -> np.ndarray:
    return np.random.default_rng(0).normal(size=SHAPE).astype(np.float32)


def test_models_satisfy_the_protocol():
    assert isinstance(BoxAroundPositives(), InteractiveModel)
    assert isinstance(GeodesicModel(), InteractiveModel)


def test_predict_returns_a_mask_on_the_original_grid_from_a_roi():
    model = BoxAroundPositives()
    session = InteractiveSession(model, image())
    session.add_click((10, 20, 20))
    session.add_scribble([(10, 22, x) for x in range(18, 25)])
    mask = session.predict()
    assert mask.shape == SHAPE and mask.dtype == bool
    assert np.array_equal(np.argwhere(mask).min(axis=0), (10, 20, 18))
    assert np.array_equal(np.argwhere(mask).max(axis=0), (10, 22, 24))
    roi = model.calls[-1]["roi"]
    assert roi.size < np.prod(SHAPE)  # a region around the prompts, not the scan
    assert model.calls[-1]["image_shape"] == (1, *SHAPE)


def test_undo_restores_prompts_and_mask_of_the_previous_state():
    session = InteractiveSession(BoxAroundPositives(), image())
    session.add_click((10, 20, 20))
    first = session.predict()
    session.add_click((12, 25, 30))
    second = session.predict()
    assert second.sum() > first.sum()
    assert session.undo()
    assert len(session.prompts) == 1
    assert np.array_equal(session.mask, first)
    assert session.undo()
    assert session.prompts == () and not session.mask.any()
    assert not session.undo()  # nothing left: a no-op, not an error


def test_reset_clears_everything_and_can_be_undone():
    session = InteractiveSession(BoxAroundPositives(), image())
    session.add_click((10, 20, 20))
    session.add_click((11, 21, 22))
    before = session.predict()
    session.reset()
    assert session.prompts == () and not session.mask.any()
    assert session.undo()
    assert len(session.prompts) == 2 and np.array_equal(session.mask, before)


def test_previous_mask_reaches_the_model_and_roi_covers_it():
    model = BoxAroundPositives()
    session = InteractiveSession(model, image(), roi_margin_mm=2.0)
    session.add_click((3, 3, 3))
    session.predict()
    session.add_click((16, 35, 40), positive=False)
    session.predict()
    last = model.calls[-1]
    assert last["previous"][3, 3, 3]
    roi = last["roi"]  # both prompts (and the mask) inside
    assert all(a <= 3 for a in roi.start) and all(b > c for b, c in zip(roi.stop, (16, 35, 40), strict=True))


@pytest.mark.parametrize(("call", "message"), [
    (lambda s: s.add_click((20, 0, 0)), "outside the image"),
    (lambda s: s.add_click((-1, 0, 0)), "outside the image"),
    (lambda s: s.add_click((1, 2)), r"shape \(N, 3\)"),
    (lambda s: s.add_scribble([]), "no voxels"),
    (lambda s: s.add_scribble([(1, 2), (3, 4)]), "shape"),
    (lambda s: s.add_scribble([(1, 2, 3), (2, 3, 4)]), "one slice"),
    (lambda s: s.add_scribble([(5, 5, x) for x in range(40, 50)]), "outside the image"),
    (lambda s: s.add_box((1, 1, 1), (2, 2, 2)), "not on one slice"),
    (lambda s: s.add_prompt("a click"), "not a prompt"),
])
def test_bad_prompts_are_user_errors_and_leave_the_session_unchanged(call, message):
    session = InteractiveSession(BoxAroundPositives(), image())
    session.add_click((10, 20, 20))
    mask = session.predict()
    with pytest.raises(UserInputError, match=message):
        call(session)
    assert len(session.prompts) == 1 and np.array_equal(session.mask, mask)
    assert session.undo() and session.prompts == ()


def test_predict_without_prompts_is_a_user_error():
    with pytest.raises(UserInputError, match="no prompts"):
        InteractiveSession(BoxAroundPositives(), image()).predict()


@pytest.mark.parametrize(("array", "message"), [
    (np.zeros((10, 10)), "got 2 dimensions"),
    (np.zeros((1, 2, 10, 10, 10)), "got 5 dimensions"),
    (np.zeros((0, 10, 10)), "empty"),
    (np.full((4, 4, 4), np.nan), "NaN"),
    (np.full((4, 4, 4), "a"), "real numbers"),
])
def test_bad_images_are_user_errors(array, message):
    with pytest.raises(UserInputError, match=message):
        InteractiveSession(BoxAroundPositives(), array)


def test_wrong_channel_count_and_non_models_are_user_errors():
    with pytest.raises(UserInputError, match="takes 2 image channel"):
        InteractiveSession(BoxAroundPositives(n_channels=2), image())
    InteractiveSession(BoxAroundPositives(n_channels=2), np.stack([image(), image()]))
    with pytest.raises(UserInputError, match="no predict method"):
        InteractiveSession(object(), image())  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="spacing"):
        InteractiveSession(BoxAroundPositives(), image(), spacing=(1.0, 0.0, 1.0))


def test_a_failing_or_misbehaving_model_gives_a_user_error_and_the_session_carries_on():
    class Broken(BoxAroundPositives):
        fail = "raise"

        def predict(self, image, prompts, previous_mask, roi, *, spacing=None):
            if self.fail == "raise":
                raise RuntimeError("out of memory")
            if self.fail == "shape":
                return np.zeros((1, 1, 1), bool)
            return super().predict(image, prompts, previous_mask, roi, spacing=spacing)

    model = Broken()
    session = InteractiveSession(model, image())
    session.add_click((10, 20, 20))
    with pytest.raises(UserInputError, match="failed on this image: RuntimeError: out of memory"):
        session.predict()
    model.fail = "shape"
    with pytest.raises(UserInputError, match="returned a mask of shape"):
        session.predict()
    assert not session.mask.any() and len(session.prompts) == 1
    model.fail = "no"
    assert session.predict().sum() == 1


def test_the_callers_image_is_not_modified():
    array = image()
    copy = array.copy()
    session = InteractiveSession(GeodesicModel(), array)
    session.add_click((10, 20, 20))
    session.add_click((10, 2, 2), positive=False)
    session.predict()
    assert np.array_equal(array, copy)


def test_anisotropic_oblique_sitk_image_keeps_its_grid_and_spacing():
    reference = ellipsoid(SHAPE, (10, 20, 22), (4, 9, 10))
    array = (reference + np.random.default_rng(1).normal(0, 0.2, SHAPE)).astype(np.float32)
    itk = sitk.GetImageFromArray(array)
    itk.SetSpacing((0.7, 0.9, 4.0))
    angle = np.deg2rad(20)
    itk.SetDirection((np.cos(angle), -np.sin(angle), 0, np.sin(angle), np.cos(angle), 0, 0, 0, 1))
    itk.SetOrigin((-12.0, 40.0, 7.5))
    model = BoxAroundPositives()
    session = InteractiveSession(model, itk)
    assert session.spacing == (4.0, 0.9, 0.7)
    session.add_scribble([(10, 20, x) for x in range(14, 30)])
    mask = session.predict()
    assert mask.shape == SHAPE
    assert model.calls[-1]["spacing"] == (4.0, 0.9, 0.7)
    # The margin is in mm: fewer voxels along the 4 mm axis than along the 0.7 mm axis.
    roi = model.calls[0]["roi"]
    assert 10 - roi.start[0] < 20 - roi.start[1] < 14 - roi.start[2]
    out = session.mask_image()
    assert out.GetSize() == itk.GetSize()
    assert np.allclose(out.GetSpacing(), itk.GetSpacing())
    assert np.allclose(out.GetDirection(), itk.GetDirection())
    assert np.allclose(out.GetOrigin(), itk.GetOrigin())
    assert np.array_equal(sitk.GetArrayFromImage(out).astype(bool), mask)


def test_vector_sitk_image_components_become_channels():
    channels = [sitk.GetImageFromArray(image()), sitk.GetImageFromArray(2 * image())]
    vector = sitk.Compose(channels)
    session = InteractiveSession(BoxAroundPositives(n_channels=2), vector)
    assert session.image.shape == (2, *SHAPE)
    assert np.allclose(session.image[1], 2 * session.image[0])


def test_calls_on_one_session_from_several_threads_are_serialised():
    class Slow(BoxAroundPositives):
        def __init__(self) -> None:
            super().__init__()
            self.active = 0
            self.most_active = 0

        def predict(self, image, prompts, previous_mask, roi, *, spacing=None):
            self.active += 1
            self.most_active = max(self.most_active, self.active)
            time.sleep(0.01)
            out = super().predict(image, prompts, previous_mask, roi, spacing=spacing)
            self.active -= 1
            return out

    model = Slow()
    session = InteractiveSession(model, image())
    session.add_click((10, 20, 20))
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(3):
                session.add_click((k, 5 + i, 5 + i))
                session.predict()
        except BaseException as error:  # noqa: BLE001 - the test reports any failure
            errors.append(error)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert model.most_active == 1
    assert len(session.prompts) == 1 + 4 * 3


class PreparingBox(BoxAroundPositives):
    """BoxAroundPositives with a once-per-image step that records its calls."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.prepared: list[dict] = []
        self.fail = fail

    def prepare(self, image, *, spacing=None, geometry=None):
        if self.fail:
            raise RuntimeError("cannot resample")
        self.prepared.append({"spacing": spacing, "geometry": geometry})
        return image * 2.0


def test_a_model_with_a_prepare_step_prepares_the_image_once_and_gets_it_back():
    model = PreparingBox()
    session = InteractiveSession(model, image(), spacing=(3.0, 1.0, 0.5))
    session.add_click((10, 20, 20))
    session.predict()
    session.add_click((10, 21, 20))
    session.predict()
    assert len(model.prepared) == 1 and len(model.calls) >= 2
    assert model.prepared[0]["spacing"] == (3.0, 1.0, 0.5)
    assert model.prepared[0]["geometry"].array_shape == SHAPE
    assert model.prepared[0]["geometry"].array_spacing == (3.0, 1.0, 0.5)
    with pytest.raises(UserInputError, match="could not prepare this image: RuntimeError: cannot resample"):
        InteractiveSession(PreparingBox(fail=True), image())
