"""ROI growth: it grows on the clipped faces until the object fits, stops at image borders and at its cap."""

from __future__ import annotations

import numpy as np
import pytest
from interactive_volumes import ellipsoid

from sarcomakit.interactive.roi import Roi, clipped_faces, grow_roi

SHAPE = (40, 60, 60)


class ObjectPredictor:
    """Stands for a model: returns the part of a known object inside the ROI it is asked about."""

    def __init__(self, obj: np.ndarray) -> None:
        self.obj = obj
        self.calls: list[Roi] = []

    def __call__(self, roi: Roi) -> np.ndarray:
        self.calls.append(roi)
        return self.obj[roi.slices]


def test_roi_helpers():
    roi = Roi.around([(3, 4, 5), (6, 2, 9)])
    assert (roi.start, roi.stop, roi.shape, roi.size) == ((3, 2, 5), (7, 5, 10), (4, 3, 5), 60)
    assert roi.expand((1, 2, 3), (5, 6, 12)) == Roi((2, 0, 2), (5, 6, 12))
    assert roi.union(Roi((0, 0, 0), (1, 1, 1))) == Roi((0, 0, 0), (7, 5, 10))
    mask = np.zeros(SHAPE, bool)
    mask[4:9, 10:12, 30] = True
    assert Roi.around_mask(mask) == Roi((4, 10, 30), (9, 12, 31))
    assert Roi.around_mask(np.zeros(SHAPE, bool)) is None
    with pytest.raises(ValueError):
        Roi((0, 5, 0), (1, 5, 1))


def test_roi_grows_until_the_object_is_not_clipped():
    obj = ellipsoid(SHAPE, (20, 30, 30), (12, 18, 16))
    predictor = ObjectPredictor(obj)
    seed_box = Roi((19, 29, 29), (21, 31, 31))  # a click near the centre
    result = grow_roi(predictor, seed_box, SHAPE, margin=3, growth=0.5, max_iterations=10)
    assert result.iterations > 1 and not result.clipped
    box = Roi.around_mask(obj)
    assert all(a < b for a, b in zip(result.roi.start, box.start, strict=True))  # a free margin on every side
    assert all(a > b for a, b in zip(result.roi.stop, box.stop, strict=True))
    assert np.array_equal(result.mask, obj[result.roi.slices])
    assert result.mask.sum() == obj.sum()
    assert result.history[-1] == result.roi and len(predictor.calls) == result.iterations
    assert result.roi.size < np.prod(SHAPE)  # it did not simply take the whole image


def test_roi_does_not_grow_when_the_first_box_holds_the_object():
    obj = ellipsoid(SHAPE, (20, 30, 30), (4, 4, 4))
    result = grow_roi(ObjectPredictor(obj), Roi.around_mask(obj), SHAPE, margin=2)
    assert result.iterations == 1 and not result.clipped
    assert result.roi == Roi.around_mask(obj).expand(2, SHAPE)


def test_only_the_faces_the_object_touches_move():
    obj = np.zeros(SHAPE, bool)
    obj[20, 30, 30:50] = True  # extends towards high x only
    initial = Roi((20, 30, 30), (21, 31, 31))
    result = grow_roi(ObjectPredictor(obj), initial, SHAPE, margin=2, max_iterations=10)
    assert not result.clipped
    assert result.roi.start == (18, 28, 28) and result.roi.stop[:2] == (23, 33)
    assert result.roi.stop[2] > 50


def test_an_object_touching_the_image_border_stops_the_growth_at_the_border():
    obj = np.zeros(SHAPE, bool)
    obj[0:10, 25:35, 45:60] = True  # touches z = 0 and x = 59
    predictor = ObjectPredictor(obj)
    result = grow_roi(predictor, Roi((5, 29, 50), (6, 31, 52)), SHAPE, margin=3, max_iterations=10)
    assert not result.clipped
    assert result.roi.start[0] == 0 and result.roi.stop[2] == SHAPE[2]
    assert all(0 <= a < b <= s for a, b, s in zip(result.roi.start, result.roi.stop, SHAPE, strict=True))
    assert result.mask.sum() == obj.sum()
    assert clipped_faces(result.mask, result.roi, SHAPE) == ()
    # The mask touches the image faces, which do not count as clipping.
    assert result.mask[0].any() and result.mask[:, :, -1].any()


def test_growth_stops_at_the_iteration_cap_and_reports_clipping():
    obj = np.ones(SHAPE, bool)
    result = grow_roi(ObjectPredictor(obj), Roi((20, 30, 30), (21, 31, 31)), SHAPE, margin=2, growth=0.1,
                      max_iterations=2)
    assert result.iterations == 2 and result.clipped
    assert result.roi.size < np.prod(SHAPE)


def test_growth_stops_before_exceeding_the_voxel_cap():
    obj = np.ones(SHAPE, bool)
    result = grow_roi(ObjectPredictor(obj), Roi((20, 30, 30), (21, 31, 31)), SHAPE, margin=4, max_iterations=10,
                      max_voxels=20**3)
    assert result.roi.size <= 20**3 and result.clipped


def test_whole_image_object_ends_with_the_whole_image():
    obj = np.ones(SHAPE, bool)
    result = grow_roi(ObjectPredictor(obj), Roi((20, 30, 30), (21, 31, 31)), SHAPE, margin=4, max_iterations=20)
    assert result.roi == Roi.of_image(SHAPE) and not result.clipped


def test_wrong_mask_shape_from_predict_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        grow_roi(lambda roi: np.zeros((2, 2, 2), bool), Roi((5, 5, 5), (9, 9, 9)), SHAPE)
