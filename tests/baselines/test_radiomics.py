"""Radiomics baseline: features with known values, cached cohort extraction, planted grade and risk signals."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from sklearn.exceptions import ConvergenceWarning

from sarcomakit.baselines.radiomics import (
    PenalizedCoxRegression,
    RadiomicsBaseline,
    extract_cohort_features,
    extract_radiomics_features,
    load_feature_table,
    radiomics_settings,
)
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import write_image
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.evaluation.grade import high_vs_rest_auc
from sarcomakit.evaluation.survival import harrell_c_index

SPACING = (1.0, 1.0, 2.0)  # x, y, z in mm: anisotropic slices


def cube_case(value_inside: float = 100.0, side: int = 8, seed: int = 0) -> tuple[sitk.Image, sitk.Image]:
    """A 24^3 image with a side^3 cube of textured intensity around ``value_inside``, and its mask."""
    rng = np.random.default_rng(seed)
    array = rng.normal(0.0, 5.0, size=(24, 24, 24)).astype(np.float32)
    mask = np.zeros((24, 24, 24), np.uint8)
    mask[8:8 + side, 8:8 + side, 8:8 + side] = 1
    array[mask == 1] += value_inside
    image, label = sitk.GetImageFromArray(array), sitk.GetImageFromArray(mask)
    for item in (image, label):
        item.SetSpacing(SPACING)
        item.SetOrigin((5.0, -3.0, 10.0))
    return image, label


# ---------------------------------------------------------------------- extraction
def test_settings_per_modality():
    assert radiomics_settings("CT")["binWidth"] == 25.0 and not radiomics_settings("CT")["normalize"]
    assert radiomics_settings("pet")["binWidth"] == 0.25
    mr = radiomics_settings("T2FS", resampled_spacing=(1, 1, 1))
    assert mr["normalize"] and mr["binWidth"] == 5.0 and mr["resampledPixelSpacing"] == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError):
        radiomics_settings("CT", bin_width=0)


def test_missing_pyradiomics_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "radiomics", None)
    image, mask = cube_case()
    with pytest.raises(UserInputError, match="no-build-isolation pyradiomics"):
        extract_radiomics_features(image, mask, "CT")


def test_cube_features_have_their_known_values():
    pytest.importorskip("radiomics")
    image, mask = cube_case(value_inside=100.0, side=8)
    features = extract_radiomics_features(image, mask, "CT")
    inside = sitk.GetArrayFromImage(image)[sitk.GetArrayFromImage(mask) == 1]
    assert features["shape_VoxelVolume"] == pytest.approx(8**3 * np.prod(SPACING))
    assert features["CT_firstorder_Mean"] == pytest.approx(float(inside.mean()), rel=1e-5)
    assert features["CT_firstorder_Maximum"] == pytest.approx(float(inside.max()), rel=1e-5)
    # an 8 x 8 x 16 mm box: principal variances 1 : 1 : 4, so elongation = flatness = sqrt(1/4)
    assert features["shape_Elongation"] == pytest.approx(0.5, rel=1e-6)
    assert features["shape_Flatness"] == pytest.approx(0.5, rel=1e-6)
    prefixes = {name.split("_")[1] for name in features if name.startswith("CT_")}
    assert prefixes == {"firstorder", "glcm", "glrlm", "glszm"}
    assert not any("diagnostics" in name for name in features)
    without_shape = extract_radiomics_features(image, mask, "T1", include_shape=False)
    assert not any(name.startswith("shape_") for name in without_shape)
    assert all(name.startswith("T1_") for name in without_shape)
    empty = sitk.Image(mask)
    empty *= 0
    with pytest.raises(ValueError, match="empty"):
        extract_radiomics_features(image, empty, "CT")


def write_cohort(root: Path, n_cases: int = 3) -> Manifest:
    cases = []
    for i in range(n_cases):
        image, mask = cube_case(value_inside=50.0 * (i + 1), side=6 + i, seed=i)
        if i == n_cases - 1:
            mask *= 0  # the last case has an empty mask: it fails alone
        paths = {name: write_image(item, root / f"case{i}_{name}.nii.gz")
                 for name, item in (("CT", image), ("T1", image * 2.0), ("label", mask))}
        case_id = "site A/case0" if i == 0 else f"case{i}"  # an id that is no safe file name
        cases.append(Case(case_id, {"CT": paths["CT"], "T1": paths["T1"]}, label=paths["label"]))
    manifest = Manifest(channels=["CT", "T1"], cases=cases)
    manifest.save(root / "manifest.csv")
    return Manifest.load(root / "manifest.csv")


def test_cohort_extraction_is_cached_and_resumable(tmp_path):
    pytest.importorskip("radiomics")
    manifest = write_cohort(tmp_path / "cohort")
    out = tmp_path / "features" / "radiomics.csv"
    table, outcome = extract_cohort_features(manifest, None, out, show_progress=False)
    assert list(table.index) == ["site A/case0", "case1"] and list(outcome.failures) == ["case2"]
    assert "empty" in outcome.failures["case2"]
    assert table.loc["case1", "shape_VoxelVolume"] == pytest.approx(7**3 * 2.0)
    assert {"CT_glcm_Contrast", "T1_glszm_ZoneEntropy"} <= set(table.columns)
    pd.testing.assert_frame_equal(load_feature_table(out), table, check_dtype=False)
    again, second = extract_cohort_features(manifest, None, out, show_progress=False)
    assert sorted(second.skipped) == ["case1", "site A/case0"] and not second.results
    pd.testing.assert_frame_equal(again, table)
    rebinned, third = extract_cohort_features(manifest, ["CT"], out, bin_widths={"CT": 10.0}, show_progress=False)
    assert sorted(third.results) == ["case1", "site A/case0"]  # new settings: recomputed
    assert not any(c.startswith("T1_") for c in rebinned.columns)
    with pytest.raises(UserInputError, match="not declared"):
        extract_cohort_features(manifest, ["PET"], out, show_progress=False)


# ---------------------------------------------------------------------- models
def planted_table(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    x[:, 5] = 3.0  # a constant feature, dropped by the baseline
    grade_score = 2.0 * x[:, 0] + rng.normal(scale=0.7, size=n)
    grade = np.digitize(grade_score, [-1.0, 0.8])  # 0 low, 1 intermediate, 2 high
    risk = 1.2 * x[:, 1] - 0.8 * x[:, 2]
    death = rng.exponential(500 * np.exp(-risk))
    censor = rng.uniform(100, 1500, size=n)
    time = np.ceil(np.minimum(death, censor) / 10) * 10
    event = (death <= censor).astype(float)
    return pd.DataFrame(x, columns=[f"f{i}" for i in range(6)]), grade, time, event


def test_baseline_recovers_planted_grade_and_risk():
    features, grade, time, event = planted_table(200, seed=0)
    test_features, test_grade, test_time, test_event = planted_table(200, seed=1)
    labels = np.array(["low", "intermediate", "high"], dtype=object)[grade].tolist()
    labels[:10] = [None] * 10
    time_with_gaps = time.copy()
    time_with_gaps[10:20] = np.nan
    features.iloc[3, 0] = np.nan  # a failed feature value is imputed
    model = RadiomicsBaseline(C=1.0, penalizer=0.01).fit(features, labels, time_with_gaps, event)
    proba = model.predict_proba(test_features)
    assert proba.shape == (200, 3) and np.allclose(proba.sum(axis=1), 1.0)
    assert high_vs_rest_auc(test_grade, proba) > 0.9
    assert harrell_c_index(test_time, test_event, model.predict_risk(test_features)) > 0.75
    with pytest.raises(ValueError, match="training column"):
        model.predict_proba(test_features.drop(columns=["f1"]))


def test_baseline_without_survival_labels_or_events():
    features, grade, time, _ = planted_table(40, seed=2)
    model = RadiomicsBaseline().fit(features, grade, time, np.zeros(40))
    assert model.predict_proba(features).shape == (40, 3)
    with pytest.raises(RuntimeError, match="survival model"):
        model.predict_risk(features)


def test_penalised_cox_matches_lifelines():
    lifelines = pytest.importorskip("lifelines")
    features, _, time, event = planted_table(120, seed=3)
    x = features.iloc[:, :4]
    assert len(np.unique(time[event == 1])) < event.sum()  # tied death times: Efron matters
    for penalizer in (0.0, 0.1):
        ours = PenalizedCoxRegression(penalizer=penalizer).fit(x.to_numpy(), time, event)
        frame = x.assign(T=time, E=event)
        reference = lifelines.CoxPHFitter(penalizer=penalizer).fit(frame, "T", "E")
        # same objective (lifelines' log-likelihood includes the penalty) at the same optimum; lifelines
        # stops its Newton steps earlier (gradient ~1e-3 vs ~1e-7 here), which bounds the coefficient agreement.
        # With penalizer=0, L-BFGS-B ends "ABNORMAL" (line search at float64 rounding) yet has converged.
        assert ours.converged_ and ours.gradient_max_ <= 1e-6 * len(time)
        assert ours.objective_ == pytest.approx(-reference.log_likelihood_, rel=1e-9)
        np.testing.assert_allclose(ours.coef_, reference.params_.to_numpy(), rtol=2e-3, atol=1e-5)
    # a larger penalty shrinks the coefficients
    strong = PenalizedCoxRegression(penalizer=1.0).fit(x.to_numpy(), time, event)
    assert np.linalg.norm(strong.coef_standardised_) < np.linalg.norm(ours.coef_standardised_)


def test_penalised_cox_reports_a_fit_stopped_short():
    features, _, time, event = planted_table(120, seed=3)
    x = features.iloc[:, :4].to_numpy()
    with pytest.warns(ConvergenceWarning, match="did not converge in 1 iterations"):
        stopped = PenalizedCoxRegression(penalizer=0.0, max_iter=1).fit(x, time, event)
    assert not stopped.converged_ and stopped.gradient_max_ > 1e-6 * len(time)
    full = PenalizedCoxRegression(penalizer=0.0).fit(x, time, event)
    assert full.objective_ < stopped.objective_
    # the tolerance is per case: a tolerance above the stopped fit's gradient accepts it
    loose = PenalizedCoxRegression(penalizer=0.0, max_iter=1, tol=2 * stopped.gradient_max_ / len(time))
    assert loose.fit(x, time, event).converged_


REAL_DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "radiology"


@pytest.mark.skipif(not (REAL_DATA / "lung1_image.nrrd").is_file(), reason="real sample scans absent")
def test_real_ct_tumour_features():
    pytest.importorskip("radiomics")
    from sarcomakit.core.io.image import read_image

    image, mask = read_image(REAL_DATA / "lung1_image.nrrd"), read_image(REAL_DATA / "lung1_label.nrrd")
    features = extract_radiomics_features(image, mask, "CT")
    roi = sitk.GetArrayFromImage(mask) != 0
    hu = sitk.GetArrayFromImage(image).astype(float)[roi]
    assert features["shape_VoxelVolume"] == pytest.approx(roi.sum() * np.prod(image.GetSpacing()), rel=1e-9)
    assert features["CT_firstorder_Mean"] == pytest.approx(hu.mean(), rel=1e-6)
    assert all(np.isfinite(v) for v in features.values())
