"""nnU-Net's planning rules on hand-made fingerprints."""

from __future__ import annotations

import numpy as np
import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.planning import CaseFingerprint, Fingerprint, IntensityStatistics, Plan, make_plan
from sarcomakit.planning.plan import (
    determine_patch_and_batch,
    determine_target_spacing,
    estimate_memory_mb,
)


def fingerprint(spacings, shapes, shapes_after_crop=None, channels=("T1",), fg=None) -> Fingerprint:
    shapes_after_crop = shapes_after_crop or shapes
    cases = [CaseFingerprint(case_id=f"c{i}", spacing=list(s), shape=list(n), shape_after_crop=list(m))
             for i, (s, n, m) in enumerate(zip(spacings, shapes, shapes_after_crop, strict=True))]
    return Fingerprint(channels=list(channels), cases=cases, foreground_intensity=fg or {})


def test_isotropic_target_is_median_spacing():
    fp = fingerprint([(1.0, 0.8, 0.8), (1.2, 0.9, 0.9), (1.5, 1.0, 1.0)], [(100, 200, 200)] * 3)
    spacing, axis = determine_target_spacing(fp)
    assert spacing == pytest.approx([1.2, 0.9, 0.9])
    assert axis is None


def test_thick_slices_use_tenth_percentile_along_low_res_axis():
    z = [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    spacings = [(s, 0.8, 0.8) for s in z]
    fp = fingerprint(spacings, [(30, 256, 256)] * 10)
    spacing, axis = determine_target_spacing(fp)
    assert axis == 0
    assert spacing[0] == pytest.approx(np.percentile(z, 10))  # 3.9, below the median 7.5
    assert spacing[1:] == pytest.approx([0.8, 0.8])


def test_tenth_percentile_never_below_other_spacings():
    spacings = [(0.5, 0.1, 0.1)] * 3 + [(5.0, 1.0, 1.0)] * 5
    fp = fingerprint(spacings, [(20, 400, 400)] * 8)
    spacing, axis = determine_target_spacing(fp)
    assert axis == 0
    assert spacing == pytest.approx([1.0, 1.0, 1.0])  # p10 along z (0.5) is raised to the others' max (1.0)


def test_anisotropic_spacing_with_many_slices_keeps_median():
    # Spacing ratio > 3 but as many voxels along z as in-plane: not a thick-slice dataset.
    fp = fingerprint([(3.0, 0.7, 0.7), (4.0, 0.7, 0.7), (5.0, 0.7, 0.7)], [(200, 256, 256)] * 3)
    spacing, axis = determine_target_spacing(fp)
    assert axis is None
    assert spacing == pytest.approx([4.0, 0.7, 0.7])


def test_low_res_axis_may_be_in_plane():
    fp = fingerprint([(1.0, 1.0, 5.0), (1.0, 1.0, 6.0), (1.0, 1.0, 4.0)], [(200, 200, 30)] * 3)
    plan = make_plan(fp)
    assert plan.low_res_axis == 2 and plan.anisotropic


def test_zscore_uses_mask_only_when_crop_shrinks_images():
    shrunk = fingerprint([(1.0, 1.0, 1.0)] * 3, [(100, 100, 100)] * 3, [(50, 100, 100)] * 3)
    whole = fingerprint([(1.0, 1.0, 1.0)] * 3, [(100, 100, 100)] * 3, [(90, 100, 100)] * 3)
    assert shrunk.median_relative_size_after_crop == pytest.approx(0.5)
    assert make_plan(shrunk).normalization[0].use_nonzero_mask is True
    assert make_plan(whole).normalization[0].use_nonzero_mask is False


def test_ct_channel_takes_dataset_foreground_statistics():
    stats = IntensityStatistics(mean=40.0, std=20.0, median=38.0, percentile_00_5=-100.0,
                                percentile_99_5=300.0, min=-500.0, max=1000.0, count=1000)
    fp = fingerprint([(1.0, 1.0, 1.0)] * 2, [(64, 64, 64)] * 2, [(20, 64, 64)] * 2, channels=("CT", "T2"),
                     fg={"CT": stats, "T2": stats})
    ct, t2 = make_plan(fp).normalization
    assert (ct.scheme, ct.clip_low, ct.clip_high, ct.mean, ct.std) == ("ct", -100.0, 300.0, 40.0, 20.0)
    assert ct.use_nonzero_mask is False  # CT never masks (nnU-Net: outside-mask voxels are not zero)
    assert (t2.scheme, t2.use_nonzero_mask) == ("zscore", True)


def test_channel_kinds_override_names():
    stats = IntensityStatistics(mean=1.0, std=2.0, median=1.0, percentile_00_5=0.0, percentile_99_5=5.0,
                                min=0.0, max=9.0, count=10)
    fp = fingerprint([(1.0, 1.0, 1.0)], [(64, 64, 64)], channels=("CT", "PET"), fg={"CT": stats, "PET": stats})
    plan = make_plan(fp, channel_kinds={"CT": "zscore", "PET": "none"})
    assert [n.scheme for n in plan.normalization] == ["zscore", "none"]
    with pytest.raises(UserInputError, match="unknown channel kind"):
        make_plan(fp, channel_kinds={"PET": "bogus"})
    with pytest.raises(UserInputError, match="unknown channel"):
        make_plan(fp, channel_kinds={"T1": "ct"})


def test_ct_without_foreground_is_a_user_error():
    fp = fingerprint([(1.0, 1.0, 1.0)], [(64, 64, 64)], channels=("CT",))
    with pytest.raises(UserInputError, match="no foreground"):
        make_plan(fp)


def test_memory_model_matches_documented_reference():
    # 128^3 with a batch of 2 is about 8 GiB, as nnU-Net assumes for an 8 GB GPU.
    assert 7000 < estimate_memory_mb([128, 128, 128], 2) < 8192
    assert estimate_memory_mb([64, 64, 64], 2) == pytest.approx(estimate_memory_mb([128, 128, 128], 2) / 8)


def test_patch_fits_budget_and_is_divisible_by_16():
    for budget in (500.0, 2000.0, 8192.0):
        patch, batch = determine_patch_and_batch([3.0, 0.8, 0.8], [40, 400, 400], n_cases=100,
                                                 memory_budget_mb=budget)
        assert all(p % 16 == 0 for p in patch)
        assert estimate_memory_mb(patch, batch) <= budget or patch == [16, 16, 16]
        assert batch >= 2
    small, _ = determine_patch_and_batch([3.0, 0.8, 0.8], [40, 400, 400], 100, 500.0)
    large, _ = determine_patch_and_batch([3.0, 0.8, 0.8], [40, 400, 400], 100, 8192.0)
    assert np.prod(small) < np.prod(large)


def test_patch_clipped_to_median_shape_and_batch_capped_at_5_percent():
    patch, batch = determine_patch_and_batch([1.0, 1.0, 1.0], [32, 48, 48], n_cases=10, memory_budget_mb=8192.0)
    assert patch == [32, 48, 48]
    # 10 cases x 32*48*48 voxels x 5% = half a patch -> the cap gives 0, raised to the minimum of 2.
    assert batch == 2
    _, big_batch = determine_patch_and_batch([1.0, 1.0, 1.0], [32, 48, 48], n_cases=10000, memory_budget_mb=8192.0)
    assert big_batch > 2


def test_shrinks_the_axis_longest_in_mm():
    patch, _ = determine_patch_and_batch([1.0, 1.0, 1.0], [256, 256, 256], 100, 1000.0)
    assert max(patch) - min(patch) <= 16  # isotropic spacing: axes shrink in turn


def test_user_overrides_and_bad_values():
    fp = fingerprint([(4.0, 1.0, 1.0)] * 3, [(20, 100, 100)] * 3)
    plan = make_plan(fp, target_spacing=[2.0, 0.5, 0.5], patch_size=[16, 64, 64])
    assert plan.target_spacing == [2.0, 0.5, 0.5] and plan.patch_size == [16, 64, 64]
    assert plan.median_shape == [40, 200, 200]
    with pytest.raises(UserInputError):
        make_plan(fp, target_spacing=[1.0, 0.0, 1.0])
    with pytest.raises(UserInputError):
        make_plan(fp, memory_budget_mb=0)


def test_plan_json_round_trip_and_bad_files(tmp_path):
    fp = fingerprint([(4.0, 1.0, 1.0)] * 3, [(20, 100, 100)] * 3)
    plan = make_plan(fp)
    path = plan.save(tmp_path / "plan.json")
    assert Plan.load(path) == plan
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(UserInputError, match="not valid JSON"):
        Plan.load(tmp_path / "broken.json")
    (tmp_path / "wrong.json").write_text('{"channels": ["T1"]}')
    with pytest.raises(UserInputError, match="not a valid plan"):
        Plan.load(tmp_path / "wrong.json")
    with pytest.raises(UserInputError, match="not found"):
        Plan.load(tmp_path / "missing.json")


def test_fingerprint_json_round_trip(tmp_path):
    stats = IntensityStatistics.of(np.arange(1000.0))
    fp = fingerprint([(4.0, 1.0, 1.0)] * 2, [(20, 100, 100)] * 2, fg={"T1": stats})
    assert type(fp).load(fp.save(tmp_path / "fp.json")) == fp
    assert stats.percentile_00_5 == pytest.approx(np.percentile(np.arange(1000.0), 0.5))
