"""The synthetic sarcoma cohort: determinism, prefix property, geometry, modality physics and clinical truth."""

from __future__ import annotations

import os

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry, read_image
from sarcomakit.data.manifest import Manifest
from sarcomakit.data.synthetic import CHANNELS, Tissue, design_case, make_synthetic_case, make_synthetic_cohort
from sarcomakit.data.synthetic.clinical import GRADE_PROBABILITIES, GRADES, draw_survival, true_log_hazard
from sarcomakit.data.synthetic.grid import ORIENTATIONS, Grid

COARSE = 2.0  # spacing scale that keeps rendering fast in tests


def _array(path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(path))


def _physical_centroid(label: np.ndarray, geometry: Geometry) -> np.ndarray:
    image = sitk.GetImageFromArray(label)
    geometry.apply(image)
    index = np.argwhere(label > 0).mean(axis=0)[::-1]  # (x, y, z) continuous index
    return np.array(image.TransformContinuousIndexToPhysicalPoint(index.tolist()))


def test_case_is_deterministic_for_a_seed():
    first = make_synthetic_case(1, seed=3, spacing_scale=COARSE)
    again = make_synthetic_case(1, seed=3, spacing_scale=COARSE)
    for channel in CHANNELS:
        assert first.images[channel].tobytes() == again.images[channel].tobytes()
    assert first.label.tobytes() == again.label.tobytes()
    assert (first.grade, first.survival_time, first.event, first.site) == (
        again.grade, again.survival_time, again.event, again.site)
    other = make_synthetic_case(1, seed=4, spacing_scale=COARSE)
    assert first.label.shape != other.label.shape or not np.array_equal(first.label, other.label)


def test_channel_subset_renders_the_same_pixels():
    full = make_synthetic_case(0, seed=0, spacing_scale=COARSE)
    subset = make_synthetic_case(0, seed=0, channels=("PET",), spacing_scale=COARSE)
    assert list(subset.images) == ["PET"]
    assert np.array_equal(full.images["PET"], subset.images["PET"])


def test_anatomy_does_not_depend_on_the_grid():
    """Rendering a case at another spacing or site protocol keeps the tumour where it is, in mm."""
    fine = make_synthetic_case(2, seed=0, channels=("CT",), spacing_scale=1.0)
    coarse = make_synthetic_case(2, seed=0, channels=("CT",), spacing_scale=COARSE)
    one_site = make_synthetic_case(2, seed=0, channels=("CT",), spacing_scale=1.5, n_sites=1)
    assert fine.grade == coarse.grade == one_site.grade
    assert fine.extra["tumour_volume_ml"] == coarse.extra["tumour_volume_ml"]
    reference = _physical_centroid(fine.label, fine.geometry)
    for case in (coarse, one_site):
        assert np.linalg.norm(_physical_centroid(case.label, case.geometry) - reference) < 3.0
    volumes = [c.label.sum() * np.prod(c.geometry.spacing) / 1000 for c in (fine, coarse, one_site)]
    assert max(volumes) / min(volumes) < 1.25
    assert volumes[0] == pytest.approx(fine.extra["tumour_volume_ml"], rel=0.1)


def test_grid_places_voxels_like_simpleitk():
    """Our voxel centres agree with SimpleITK's index-to-physical mapping for every orientation."""
    for direction in ORIENTATIONS.values():
        grid = Grid.covering(np.array([5.0, -3.0, 20.0]), np.array([40.0, 30.0, 50.0]), (2.0, 2.5, 5.0), direction)
        image = grid.geometry.reference_image()
        x, y, z = (np.broadcast_to(p, grid.array_shape) for p in grid.points())
        for k, j, i in [(0, 0, 0), (grid.size[2] - 1, 3, 1), (2, grid.size[1] - 1, grid.size[0] - 1)]:
            expected = image.TransformIndexToPhysicalPoint((i, j, k))
            assert np.allclose((x[k, j, i], y[k, j, i], z[k, j, i]), expected, atol=1e-3)
        centre = image.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in grid.size])
        assert np.allclose(centre, (5.0, -3.0, 20.0), atol=1e-6)


def test_cohort_files_geometry_and_prefix_property(tmp_path):
    small = make_synthetic_cohort(tmp_path / "small", n_cases=2, seed=5, channels=("T2FS", "CT"),
                                  spacing_scale=COARSE)
    large = make_synthetic_cohort(tmp_path / "large", n_cases=4, seed=5, channels=("T2FS", "CT"),
                                  spacing_scale=COARSE)
    assert small.case_ids == ["STS_000", "STS_001"]
    assert large.case_ids[:2] == small.case_ids
    for name in ("manifest.csv", "manifest.json"):  # both files hold the cohort that was returned
        saved = Manifest.load(tmp_path / "large" / name)
        assert saved.case_ids == large.case_ids and saved.channels == ["T2FS", "CT"]
        assert [(c.grade, c.survival_time, c.event, c.site) for c in saved] == [
            (c.grade, c.survival_time, c.event, c.site) for c in large]
    assert large.labels == {"background": 0, "tumour": 1}
    for a, b in zip(small, large.cases[:2], strict=True):
        for channel in ("T2FS", "CT"):
            assert np.array_equal(_array(a.images[channel]), _array(b.images[channel]))
        assert (a.grade, a.survival_time, a.event, a.site) == (b.grade, b.survival_time, b.event, b.site)
        assert a.extra["true_log_hazard"] == b.extra["true_log_hazard"]

    geometries = []
    for case in large:
        label_image = read_image(case.label)
        assert label_image.GetPixelID() == sitk.sitkUInt8
        assert set(np.unique(sitk.GetArrayFromImage(label_image))) == {0, 1}
        assert read_image(case.images["T2FS"]).GetPixelID() == sitk.sitkFloat32
        assert read_image(case.images["CT"]).GetPixelID() == sitk.sitkInt16
        geometry = Geometry.of(label_image)
        for path in case.images.values():
            assert Geometry.of(read_image(path)).matches(geometry)
        in_memory = make_synthetic_case(int(case.case_id[4:]), seed=5, channels=("CT",), spacing_scale=COARSE)
        assert geometry.matches(in_memory.geometry)
        geometries.append(geometry)
    assert len({g.spacing for g in geometries}) == len(geometries)


@pytest.fixture(scope="module")
def designs() -> list:
    """The first 12 cases of the seed-0 cohort, drawn but not rendered."""
    return [design_case(i, seed=0) for i in range(12)]


def test_acquisitions_vary_across_a_cohort(designs):
    orientations = {d.acquisition.orientation for d in designs}
    assert len(orientations) >= 3 and "coronal" in orientations
    slices = [d.acquisition.slice_mm for d in designs]
    inplane = [d.acquisition.inplane_mm for d in designs]
    assert min(slices) < 4.0 and max(slices) > 4.6  # thin and thick-slice protocols
    assert all(1.5 <= s <= 2.6 for s in inplane)
    shapes = np.array([d.acquisition.grid.array_shape for d in designs])
    assert shapes.min() >= 20 and shapes.max() <= 130
    assert {d.acquisition.site for d in designs} == {"site-A", "site-B", "site-C"}
    scales = [d.acquisition.mri_scale[0] for d in designs]
    assert max(scales) / min(scales) > 2  # arbitrary MRI units differ between sites


def test_modalities_have_their_physical_ranges():
    case = make_synthetic_case(0, seed=1, spacing_scale=1.5)
    tissue = case.tissue
    ct, pet = case.images["CT"], case.images["PET"]
    assert ct.dtype == np.int16 and ct.min() >= -1024 and ct.max() <= 3071
    assert np.median(ct[tissue == Tissue.AIR]) == pytest.approx(-1000, abs=30)
    assert np.median(ct[tissue == Tissue.FAT]) == pytest.approx(-100, abs=30)
    assert np.median(ct[tissue == Tissue.MUSCLE]) == pytest.approx(48, abs=15)
    assert np.percentile(ct[tissue == Tissue.CORTEX], 90) > 700
    assert abs(float(np.median(ct[case.label > 0])) - np.median(ct[tissue == Tissue.MUSCLE])) < 40  # CT is weak
    assert pet.dtype == np.float32 and pet.min() >= 0 and np.isfinite(pet).all()
    assert 0.2 < np.median(pet[tissue == Tissue.MUSCLE]) < 1.2
    assert pet[case.label > 0].max() > 1.5 * np.percentile(pet[tissue == Tissue.MUSCLE], 99)
    for channel in ("T1", "T2FS"):
        image = case.images[channel]
        assert image.dtype == np.float32 and image.min() >= 0 and np.isfinite(image).all()
    t1, t2 = case.images["T1"], case.images["T2FS"]
    assert np.median(t1[tissue == Tissue.FAT]) > 1.8 * np.median(t1[tissue == Tissue.MUSCLE])  # fat bright on T1
    assert np.median(t2[tissue == Tissue.FAT]) < np.median(t2[tissue == Tissue.MUSCLE])  # suppressed on T2FS
    assert np.median(t2[tissue == Tissue.FLUID]) > np.median(t2[case.label > 0]) if (tissue == Tissue.FLUID).any() \
        else True


def test_tumour_is_present_inside_the_body_and_visible():
    for index in range(3):
        case = make_synthetic_case(index, seed=2, channels=("T2FS",), spacing_scale=1.5)
        tumour = case.label > 0
        assert tumour.sum() > 50
        assert not np.isin(case.tissue[tumour], (Tissue.AIR, Tissue.SKIN, Tissue.CORTEX, Tissue.MARROW)).any()
        assert np.array_equal(tumour, np.isin(case.tissue, (Tissue.TUMOUR, Tissue.NECROSIS)))
        # the tumour does not touch the border of the field of view
        assert not (tumour[0].any() or tumour[-1].any() or tumour[:, 0].any() or tumour[:, :, -1].any())
        t2 = case.images["T2FS"]
        assert t2[tumour].mean() > 1.6 * t2[case.tissue == Tissue.MUSCLE].mean()


def test_grade_drives_pet_uptake_and_necrosis():
    peaks: dict[str, list[float]] = {"low": [], "intermediate": [], "high": []}
    necrosis: dict[str, list[float]] = {"low": [], "intermediate": [], "high": []}
    for index in range(10):
        case = make_synthetic_case(index, seed=0, channels=("PET",), spacing_scale=COARSE)
        peaks[case.grade].append(float(np.percentile(case.images["PET"][case.label > 0], 90)))
        necrosis[case.grade].append(float(case.extra["necrosis_fraction"]))
    assert peaks["low"] and peaks["high"], "the cohort should hold low- and high-grade cases"
    assert np.mean(peaks["high"]) > 1.5 * np.mean(peaks["low"])
    assert np.mean(necrosis["high"]) > np.mean(necrosis["low"])


def test_cases_carry_valid_clinical_truth(designs):
    times = np.array([d.survival_time for d in designs])
    events = np.array([d.event for d in designs])
    assert (times > 0).all() and set(events) <= {0, 1} and 0 < events.sum() < len(designs)
    assert {d.grade for d in designs} == {"low", "intermediate", "high"}
    for d in designs:
        assert d.log_hazard == pytest.approx(true_log_hazard(d.grade, d.volume_ml))
        assert 0 <= d.necrosis_fraction < 0.8 and 1.0 < d.volume_ml < 400


def test_survival_model_censors_about_half_and_orders_by_hazard():
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(0)
    grades = rng.choice(GRADES, p=GRADE_PROBABILITIES, size=600)
    volumes = np.exp(rng.normal(np.log(25), 1.0, size=600))
    hazard = np.array([true_log_hazard(g, v) for g, v in zip(grades, volumes, strict=True)])
    drawn = [draw_survival(rng, h) for h in hazard]
    times = np.array([t for t, _ in drawn])
    events = np.array([e for _, e in drawn])
    assert (times >= 1).all()
    assert 0.4 <= events.mean() <= 0.6
    assert 365 < np.median(times) < 6 * 365  # a few years
    # higher hazard, shorter survival: lifelines expects a score where higher means longer survival
    assert concordance_index(times, -hazard, events) > 0.65
    high = grades == "high"
    assert events[high].mean() > events[grades == "low"].mean()


def test_rerun_resumes_and_refuses_other_parameters(tmp_path):
    out = tmp_path / "cohort"
    make_synthetic_cohort(out, n_cases=2, seed=0, channels=("CT",), spacing_scale=COARSE)
    label = out / "labels" / "STS_001.nii.gz"
    os.utime(label, (1_000_000, 1_000_000))
    manifest = make_synthetic_cohort(out, n_cases=2, seed=0, channels=("CT",), spacing_scale=COARSE)
    assert label.stat().st_mtime == 1_000_000  # kept, not rewritten
    assert len(manifest) == 2
    make_synthetic_cohort(out, n_cases=2, seed=0, channels=("CT",), spacing_scale=COARSE, overwrite=True)
    assert label.stat().st_mtime != 1_000_000
    with pytest.raises(UserInputError, match="other parameters"):
        make_synthetic_cohort(out, n_cases=2, seed=1, channels=("CT",), spacing_scale=COARSE)
    assert sorted(p.name for p in out.iterdir()) == ["images", "labels", "manifest.csv", "manifest.json",
                                                     "synthetic.json"]


@pytest.mark.parametrize("kwargs", [{"channels": ("T1", "MRI")}, {"n_cases": 0}, {"seed": -1},
                                    {"n_sites": 0}, {"spacing_scale": 10.0}])
def test_bad_arguments_are_user_errors(tmp_path, kwargs):
    with pytest.raises(UserInputError):
        make_synthetic_cohort(tmp_path / "cohort", **kwargs)


def test_manifest_carries_clinical_truth(tmp_path):
    make_synthetic_cohort(tmp_path / "c", n_cases=2, seed=0, channels=("T1",), spacing_scale=COARSE)
    from_csv = Manifest.load(tmp_path / "c" / "manifest.csv")
    from_json = Manifest.load(tmp_path / "c" / "manifest.json")
    for a, b in zip(from_csv, from_json, strict=True):
        assert a.grade in ("low", "intermediate", "high") and a.grade == b.grade
        assert a.survival_time == b.survival_time > 0 and a.event == b.event in (0, 1)
        assert a.site == b.site and a.site.startswith("site-")
        assert float(a.extra["true_log_hazard"]) == pytest.approx(float(b.extra["true_log_hazard"]))
        assert float(a.extra["tumour_volume_ml"]) > 0 and not a.invalid_fields


def test_cli_synth_end_to_end(tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    result = runner.invoke(app, ["synth", str(out), "--cases", "2", "--seed", "1", "--channels", "T2FS,PET",
                                 "--sites", "2", "--spacing-scale", str(COARSE)])
    assert result.exit_code == 0, result.output
    assert "2 cases" in result.output and "manifest" in result.output
    manifest = Manifest.load(out / "manifest.csv")
    assert manifest.channels == ["T2FS", "PET"] and len(manifest) == 2
    for case in manifest:  # every channel and the label are co-registered volumes with a tumour
        label = sitk.ReadImage(str(case.label))
        assert sitk.GetArrayViewFromImage(label).max() == 1
        for path in case.images.values():
            image = sitk.ReadImage(str(path))
            assert image.GetSize() == label.GetSize() and image.GetSpacing() == label.GetSpacing()
            assert image.GetOrigin() == label.GetOrigin() and image.GetDirection() == label.GetDirection()
    assert {case.site for case in manifest} <= {"site-A", "site-B"}

    bad = runner.invoke(app, ["synth", str(out), "--cases", "2", "--channels", "T1,XRAY"])
    assert bad.exit_code == 2 and "XRAY" in bad.output and "Traceback" not in bad.output
