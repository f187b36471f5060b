"""Preprocessing cases with a plan, saving/loading them, and restoring outputs to the input geometry."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from planning_data import body_case, ellipsoid, make_image, write_cohort

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry
from sarcomakit.planning import (
    Fingerprint,
    PreprocessedCase,
    compute_fingerprint,
    make_plan,
    plan_cohort,
    preprocess_case,
    preprocess_cohort,
    restore_to_input_geometry,
)
from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.plan import Plan


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / (a.sum() + b.sum()))


def simple_plan(channels=("MR",), spacing=(2.0, 1.0, 1.0), **kw) -> Plan:
    values = dict(channels=list(channels), labels={"background": 0, "tumour": 1}, target_spacing=list(spacing),
                  anisotropic=False, low_res_axis=None, crop_to_nonzero=True,
                  normalization=[ChannelNormalization(channel=c, scheme="zscore") for c in channels],
                  median_shape=[16, 32, 32], patch_size=[16, 32, 32], batch_size=2, memory_budget_mb=1000.0)
    values.update(kw)
    return Plan(**values)


def test_crop_to_nonzero_bbox_and_grid():
    mr, _, label = body_case((12, 40, 44))
    image = make_image(mr, (0.9, 0.9, 4.0), (5.0, -3.0, 2.0))
    plan = simple_plan(spacing=(4.0, 0.9, 0.9))
    case = preprocess_case({"MR": image}, plan, make_image(label, (0.9, 0.9, 4.0), (5.0, -3.0, 2.0)))
    nonzero = np.argwhere(mr != 0)
    expected = [[int(lo), int(hi) + 1] for lo, hi in zip(nonzero.min(0), nonzero.max(0), strict=True)]
    assert case.crop_bbox == expected
    assert case.data.shape == (1, *[hi - lo for lo, hi in expected])  # same spacing: crop only
    assert case.geometry.origin == pytest.approx(image.TransformIndexToPhysicalPoint(
        [expected[2][0], expected[1][0], expected[0][0]]))
    assert case.label.dtype == np.uint8 and case.label.sum() == label.sum()
    assert case.data.dtype == np.float32
    assert case.data.mean() == pytest.approx(0.0, abs=1e-4)


def test_masked_zscore_and_ct_in_one_case():
    mr, ct, label = body_case((12, 40, 44))
    spacing = (0.9, 0.9, 4.0)
    norm = [ChannelNormalization(channel="MR", scheme="zscore", use_nonzero_mask=True),
            ChannelNormalization(channel="CT", scheme="ct", clip_low=-50.0, clip_high=100.0, mean=50.0, std=10.0)]
    plan = simple_plan(channels=("MR", "CT"), spacing=(4.0, 0.9, 0.9), normalization=norm)
    case = preprocess_case({"MR": make_image(mr, spacing), "CT": make_image(ct, spacing)}, plan,
                           make_image(label, spacing))
    assert case.crop_bbox == [[0, 12], [0, 40], [0, 44]]  # CT air (-1000) is nonzero: no crop
    assert case.data[1].min() == pytest.approx(-10.0) and case.data[1].max() <= 5.0 + 1e-5
    # the nonzero mask joins all channels (nnU-Net): CT air makes it the whole image
    assert case.data[0].mean() == pytest.approx(0.0, abs=1e-4)
    mr_only = preprocess_case({"MR": make_image(mr, spacing)}, simple_plan(spacing=(4.0, 0.9, 0.9),
                              normalization=norm[:1]), make_image(label, spacing))
    body = mr[tuple(slice(a, b) for a, b in mr_only.crop_bbox)] != 0
    assert mr_only.data[0][body].mean() == pytest.approx(0.0, abs=1e-4)
    assert mr_only.data[0][body].std() == pytest.approx(1.0, abs=1e-3)
    assert np.all(mr_only.data[0][~body] == 0)


def test_missing_channel_and_undeclared_label_values_are_user_errors():
    mr, _, label = body_case((8, 20, 20))
    plan = simple_plan(channels=("MR", "CT"))
    with pytest.raises(UserInputError, match="CT"):
        preprocess_case({"MR": make_image(mr)}, plan)
    with pytest.raises(UserInputError, match="MR, CT"):
        preprocess_case({}, plan, allow_missing_channels=True)
    bad = label.copy()
    bad[0, 0, 0] = 7
    with pytest.raises(UserInputError, match=r"label values \[7\]"):
        preprocess_case({"MR": make_image(mr)}, simple_plan(), make_image(bad))
    with pytest.raises(UserInputError, match="grid"):
        preprocess_case({"MR": make_image(mr)}, simple_plan(), make_image(label, (2.0, 1.0, 1.0)))


# The reoriented grid has spacing (0.9, 0.7, 3.0) (z, y, x): keep it, resample mildly, upsample.
@pytest.mark.parametrize("spacing", [(0.9, 0.7, 3.0), (1.1, 0.9, 2.0), (0.6, 0.5, 1.5)])
def test_restore_round_trip_with_rotated_and_flipped_axes(spacing):
    shape = (14, 36, 40)
    rng = np.random.default_rng(1)
    body = ellipsoid(shape, (7, 18, 20), (9, 15, 17))
    label = (ellipsoid(shape, (7, 17, 21), (5, 11, 13)) & body).astype(np.uint8)
    image = np.where(body, 100 + rng.normal(0, 5, shape), 0).astype(np.float32)
    # axes permuted and flipped: x -> -y, y -> z, z -> -x; oblique by a few degrees
    rotation = np.array([[0, 0, -1], [-1, 0, 0], [0, 1, 0]], dtype=float)
    angle = np.deg2rad(7)
    tilt = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    direction = tuple((tilt @ rotation).ravel())
    spacing_xyz, origin = (0.7, 0.9, 3.0), (12.0, -40.0, 7.5)
    reference_image = make_image(image, spacing_xyz, origin, direction)
    label_image = make_image(label, spacing_xyz, origin, direction)
    case = preprocess_case({"MR": reference_image}, simple_plan(spacing=spacing), label_image)
    assert case.properties["original_orientation"] == "ASR"
    assert case.properties["spacing_before_resampling"] == pytest.approx([0.9, 0.7, 3.0])
    # reoriented to LPS: identity up to the 7 degree tilt
    assert np.allclose(np.asarray(case.geometry.direction).reshape(3, 3), np.eye(3), atol=0.15)
    one_hot = np.stack([case.label == 0, case.label == 1]).astype(np.float32)
    restored = restore_to_input_geometry(one_hot, case)
    assert restored.shape == (2, *label.shape)
    assert np.allclose(restored.sum(axis=0), 1.0, atol=1e-4)
    assert dice(restored.argmax(0) == 1, label == 1) > 0.98
    out = sitk.GetImageFromArray(restored.argmax(0).astype(np.uint8))
    case.reference.apply(out)
    assert Geometry.of(out) == Geometry.of(reference_image)


def test_restore_with_geometry_pair_and_outside_crop_is_background():
    mr, _, label = body_case((12, 40, 44))
    image = make_image(mr, (0.9, 0.9, 4.0))
    case = preprocess_case({"MR": image}, simple_plan(spacing=(4.0, 1.8, 1.8)), make_image(label, (0.9, 0.9, 4.0)))
    probabilities = np.full((2, *case.data.shape[1:]), 0.5, np.float32)
    restored_case = restore_to_input_geometry(probabilities, case)
    outside = np.ones(mr.shape, bool)
    outside[tuple(slice(a, b) for a, b in case.crop_bbox)] = False
    assert outside.any()
    assert np.all(restored_case[0][outside] == 1.0) and np.all(restored_case[1][outside] == 0.0)
    assert np.allclose(restored_case[1][~outside], 0.5)
    # (geometry, reference): the crop region is the preprocessed grid's extent, at most one coarse voxel more
    restored_pair = restore_to_input_geometry(probabilities, (case.geometry, case.reference))
    far = np.ones(mr.shape, bool)
    far[tuple(slice(max(0, a - m), b + m) for (a, b), m in zip(case.crop_bbox, (1, 2, 2), strict=True))] = False
    assert far.any() and np.all(restored_pair[1][far] == 0.0)
    core = tuple(slice(a + 1, b - 1) for a, b in case.crop_bbox)
    assert np.allclose(restored_pair[1][core], 0.5)
    with pytest.raises(ValueError, match="do not fit"):
        restore_to_input_geometry(probabilities[:, :-1], case)


def test_save_load_round_trip(tmp_path):
    mr, _, label = body_case((8, 20, 20))
    case = preprocess_case({"MR": make_image(mr)}, simple_plan(), make_image(label), case_id="c7")
    case.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c7.json", "c7_data.npy", "c7_seg.npy"]
    loaded = PreprocessedCase.load(tmp_path, "c7")
    assert isinstance(loaded.data, np.memmap)
    np.testing.assert_array_equal(loaded.data, case.data)
    np.testing.assert_array_equal(loaded.label, case.label)
    assert loaded.geometry == case.geometry and loaded.reference == case.reference
    assert loaded.crop_bbox == case.crop_bbox and loaded.properties == case.properties
    unlabelled = preprocess_case({"MR": make_image(mr)}, simple_plan(), case_id="u1")
    unlabelled.save(tmp_path)
    assert PreprocessedCase.load(tmp_path, "u1", mmap=False).label is None
    with pytest.raises(UserInputError, match="not found"):
        PreprocessedCase.load(tmp_path, "nope")


def test_cohort_plan_preprocess_resume_and_bad_case(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", n_cases=3)
    plan = plan_cohort(manifest, tmp_path / "out" / "plan.json", show_progress=False)
    assert plan.fingerprint_file == "fingerprint.json"
    # the saved fingerprint describes the cohort and is enough to plan it again
    saved = Fingerprint.load(tmp_path / "out" / "fingerprint.json")
    assert [case.case_id for case in saved.cases] == manifest.case_ids and saved.channels == manifest.channels
    again = make_plan(saved, fingerprint_file="fingerprint.json")
    assert again.model_dump() == plan.model_dump()
    assert [n.scheme for n in plan.normalization] == ["zscore", "ct"]
    assert plan.target_spacing == pytest.approx([4.0, 0.9, 0.9]) and plan.low_res_axis == 0
    result = preprocess_cohort(manifest, plan, tmp_path / "pre", show_progress=False)
    assert sorted(result.results) == ["case0", "case1", "case2"] and not result.failures
    again = preprocess_cohort(manifest, plan, tmp_path / "pre", show_progress=False)
    assert sorted(again.skipped) == ["case0", "case1", "case2"] and not again.results
    manifest.cases[1].images["MR"].write_bytes(b"not an image")
    redo = preprocess_cohort(manifest, plan, tmp_path / "pre2", show_progress=False)
    assert list(redo.failures) == ["case1"] and sorted(redo.results) == ["case0", "case2"]
    forced = preprocess_cohort(manifest.subset(["case0"]), plan, tmp_path / "pre", overwrite=True,
                               show_progress=False)
    assert list(forced.results) == ["case0"]


def test_fingerprint_of_cohort(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", n_cases=2, direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    fp = compute_fingerprint(manifest, num_samples_per_case=500, show_progress=False)
    assert [c.original_orientation for c in fp.cases] == ["RAS", "RAS"]
    assert fp.cases[0].spacing == pytest.approx([4.0, 0.9, 0.9]) and fp.cases[0].shape == [12, 40, 44]
    assert fp.cases[0].shape_after_crop == [12, 40, 44]  # CT air is nonzero
    assert fp.foreground_source == "label" and fp.foreground_intensity["CT"].count == 1000
    assert 60 < fp.foreground_intensity["CT"].mean < 100  # tumour CT values ~ 80 HU
    assert fp.samples["MR"].shape == (1000,)
    again = compute_fingerprint(manifest, num_samples_per_case=500, show_progress=False)
    assert again.foreground_intensity == fp.foreground_intensity  # seeded
    plan = make_plan(fp, channel_kinds={"CT": "zscore"})
    assert plan.normalization[1].scheme == "zscore"


def test_missing_modality_is_zero_filled_and_flagged_when_allowed():
    mr, _, label = body_case((8, 20, 20))
    plan = simple_plan(channels=("MR", "CT"))
    case = preprocess_case({"MR": make_image(mr)}, plan, make_image(label), allow_missing_channels=True)
    assert case.properties["missing_channels"] == ["CT"]
    assert case.data.shape[0] == 2 and np.all(case.data[1] == 0) and np.any(case.data[0] != 0)
    complete = preprocess_case({"MR": make_image(mr), "CT": make_image(mr)}, plan, make_image(label))
    assert complete.properties["missing_channels"] == []
    np.testing.assert_allclose(case.data[0], complete.data[0], atol=1e-5)
