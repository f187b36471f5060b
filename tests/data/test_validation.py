"""validate_manifest reports every problem of a cohort at once; `sarcomakit validate` exits on errors."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.data.validation import validate_manifest

SHAPE = (8, 16, 16)
WIDE = {"COLUMNS": "250"}  # rich folds long paths in narrow terminals


def _issues(report, check):
    return [i for i in report.issues if i.check == check]


def test_valid_cohort_has_no_issue(nifti_cohort):
    report = validate_manifest(nifti_cohort())
    assert report.ok and report.issues == [], report.to_dict()


def test_duplicate_case_ids(nifti_cohort):
    manifest = nifti_cohort()
    manifest.cases[1] = replace(manifest.cases[1], case_id="case000")
    [issue] = _issues(validate_manifest(manifest), "duplicate_case_id")
    assert issue.severity == "error" and issue.case_id == "case000" and "2 times" in issue.message


def test_case_missing_a_declared_channel(nifti_cohort):
    manifest = nifti_cohort()
    del manifest.cases[0].images["T2FS"]
    [issue] = _issues(validate_manifest(manifest), "missing_channel")
    assert issue.case_id == "case000" and "T2FS" in issue.message and issue.severity == "warning"
    for channel in list(manifest.cases[1].images):
        del manifest.cases[1].images[channel]
    errors = [i for i in _issues(validate_manifest(manifest), "missing_channel") if i.case_id == "case001"]
    assert errors and all(i.severity == "error" for i in errors)


def test_missing_and_unreadable_files(nifti_cohort):
    manifest = nifti_cohort()
    manifest.cases[0].images["T1"].unlink()
    manifest.cases[1].images["T2FS"].write_bytes(b"not an image at all")
    manifest.cases[2].label.unlink()
    report = validate_manifest(manifest)
    missing = _issues(report, "missing_file")
    assert {(i.case_id, i.path.name) for i in missing} == {("case000", "case000_T1.nii.gz"),
                                                           ("case002", "case002.nii.gz")}
    [unreadable] = _issues(report, "unreadable_file")
    assert unreadable.case_id == "case001" and unreadable.path.name == "case001_T2FS.nii.gz"


@pytest.mark.parametrize("what, kwargs, expected", [
    ("shape", {"array_shape": (8, 16, 18)}, "shape (18, 16, 8) vs (16, 16, 8)"),
    ("spacing", {"spacing": (1.0, 1.0, 3.0)}, "spacing (1, 1, 3) vs (1, 1, 2) mm"),
    ("origin", {"origin": (0.0, 5.0, 0.0)}, "origin (0, 5, 0) vs (0, 0, 0) mm"),
    ("direction", {"direction": (-1, 0, 0, 0, 1, 0, 0, 0, 1)}, "direction"),
])
def test_channels_on_different_grids(nifti_cohort, volume_writer, what, kwargs, expected):
    manifest = nifti_cohort()
    path = manifest.cases[0].images["T2FS"]
    shape = kwargs.pop("array_shape", SHAPE)
    volume_writer(path, np.zeros(shape, np.float32), **kwargs)
    [issue] = _issues(validate_manifest(manifest), "geometry_mismatch")
    assert issue.case_id == "case000" and "channel T2FS" in issue.message and "channel T1" in issue.message
    assert expected in issue.message, issue.message


def test_geometry_within_tolerance_is_accepted(nifti_cohort, volume_writer):
    manifest = nifti_cohort()
    volume_writer(manifest.cases[0].images["T2FS"], np.zeros(SHAPE, np.float32), spacing=(1.0, 1.0, 2.0 + 1e-5),
                  origin=(1e-4, 0, 0))
    assert validate_manifest(manifest).ok


def test_label_on_another_grid(nifti_cohort, volume_writer):
    manifest = nifti_cohort()
    volume_writer(manifest.cases[1].label, np.zeros(SHAPE, np.uint8), spacing=(0.5, 0.5, 2.0))
    [issue] = _issues(validate_manifest(manifest), "label_geometry_mismatch")
    assert issue.case_id == "case001" and "spacing (0.5, 0.5, 2)" in issue.message


def test_label_values_outside_declared_labels(nifti_cohort, volume_writer):
    manifest = nifti_cohort()
    label = np.zeros(SHAPE, np.uint8)
    label[1, 1, 1], label[2, 2, 2] = 1, 3
    volume_writer(manifest.cases[0].label, label)
    [issue] = _issues(validate_manifest(manifest), "label_values")
    assert "[3]" in issue.message


def test_non_integer_label_values(nifti_cohort, volume_writer):
    manifest = nifti_cohort()
    volume_writer(manifest.cases[0].label, np.full(SHAPE, 0.4, np.float32))
    [issue] = _issues(validate_manifest(manifest), "label_values")
    assert "non-integer" in issue.message


def test_nan_and_inf_voxels(nifti_cohort, volume_writer):
    manifest = nifti_cohort()
    image = np.ones(SHAPE, np.float32)
    image[0, 0, :3] = np.nan
    image[1, 1, 1] = np.inf
    volume_writer(manifest.cases[2].images["T1"], image)
    [issue] = _issues(validate_manifest(manifest), "non_finite_voxels")
    assert issue.case_id == "case002" and "3 NaN and 1 infinite" in issue.message


def test_empty_mask_is_a_warning(nifti_cohort, volume_writer):
    manifest = nifti_cohort()
    volume_writer(manifest.cases[0].label, np.zeros(SHAPE, np.uint8))
    report = validate_manifest(manifest)
    [issue] = _issues(report, "empty_label")
    assert issue.severity == "warning" and report.ok


def test_four_dimensional_image(nifti_cohort, volume_writer):
    manifest = nifti_cohort()
    import SimpleITK as sitk

    sitk.WriteImage(sitk.Image([16, 16, 8, 2], sitk.sitkFloat32), str(manifest.cases[0].images["T1"]))
    [issue] = _issues(validate_manifest(manifest), "not_3d")
    assert "4 dimensions" in issue.message


def _clinical_manifest(nifti_cohort, tmp_path, rows: dict[str, dict[str, str]]) -> Manifest:
    """Rewrite the cohort's clinical columns as a user would in a spreadsheet, then reload."""
    manifest = nifti_cohort()
    text = manifest.source.read_text(encoding="utf-8").splitlines()
    header = text[1].split(",")
    lines = [text[0], text[1]]
    for line in text[2:]:
        cells = dict(zip(header, line.split(","), strict=True))
        cells.update(rows.get(cells["case_id"], {}))
        lines.append(",".join(cells[h] for h in header))
    path = tmp_path / "cohort" / "edited.csv"
    path.write_text("\n".join(lines) + "\n")
    return Manifest.load(path)


def test_unknown_grade_label(nifti_cohort, tmp_path):
    manifest = _clinical_manifest(nifti_cohort, tmp_path, {"case001": {"grade": "G2"}})
    [issue] = _issues(validate_manifest(manifest), "unknown_grade")
    assert issue.case_id == "case001" and "'G2'" in issue.message and "grade.map" in issue.fix


def test_negative_survival_time(nifti_cohort, tmp_path):
    manifest = _clinical_manifest(nifti_cohort, tmp_path, {"case000": {"survival_time": "-12"}})
    [issue] = _issues(validate_manifest(manifest), "negative_survival_time")
    assert issue.case_id == "case000" and "-12" in issue.message


def test_event_without_time(nifti_cohort, tmp_path):
    manifest = _clinical_manifest(nifti_cohort, tmp_path, {"case002": {"survival_time": ""}})
    [issue] = _issues(validate_manifest(manifest), "event_without_time")
    assert issue.case_id == "case002" and issue.severity == "error"


def test_non_binary_event_and_non_numeric_time(nifti_cohort, tmp_path):
    manifest = _clinical_manifest(nifti_cohort, tmp_path, {"case001": {"event": "2", "survival_time": "approx 30"}})
    report = validate_manifest(manifest)
    assert [i.case_id for i in _issues(report, "invalid_event")] == ["case001"]
    assert [i.case_id for i in _issues(report, "invalid_survival_time")] == ["case001"]
    assert not _issues(report, "event_without_time")  # the time is there, just malformed


def test_cohort_without_events_is_a_warning(nifti_cohort, tmp_path):
    manifest = _clinical_manifest(nifti_cohort, tmp_path, {"case000": {"event": "0"}, "case002": {"event": "0"}})
    report = validate_manifest(manifest)
    [issue] = _issues(report, "no_events")
    assert issue.severity == "warning" and issue.case_id is None and report.ok


def test_invalid_folds(nifti_cohort, tmp_path):
    manifest = _clinical_manifest(nifti_cohort, tmp_path, {"case000": {"fold": "-1"}, "case001": {"fold": ""}})
    issues = _issues(validate_manifest(manifest), "invalid_fold")
    assert any(i.case_id == "case000" and "'-1'" in i.message for i in issues)
    assert any(i.case_id is None and "missing for 1" in i.message for i in issues)


def test_every_problem_is_reported_together(nifti_cohort, volume_writer, tmp_path):
    manifest = _clinical_manifest(nifti_cohort, tmp_path, {"case000": {"grade": "G3", "survival_time": "-5"},
                                                           "case001": {"event": "yes"}})
    manifest = Manifest(channels=manifest.channels, cases=[*manifest.cases, replace(manifest.cases[2])],
                        labels=manifest.labels, source=manifest.source)
    manifest.cases[0].images["T1"].unlink()
    volume_writer(manifest.cases[1].images["T2FS"], np.zeros(SHAPE, np.float32), spacing=(2.0, 1.0, 2.0))
    label = np.zeros(SHAPE, np.uint8)
    label[0, 0, 0] = 7
    volume_writer(manifest.cases[2].label, label)
    broken = np.ones(SHAPE, np.float32)
    broken[0, 0, 0] = np.nan
    volume_writer(manifest.cases[2].images["T1"], broken)

    report = validate_manifest(manifest)

    assert {"missing_file", "geometry_mismatch", "label_values", "non_finite_voxels", "duplicate_case_id",
            "unknown_grade", "negative_survival_time", "invalid_event"} <= report.checks()
    assert len(report.errors) >= 9 and not report.ok  # case002 is listed twice, so its problems are too
    data = report.to_dict()
    assert data["n_errors"] == len(report.errors) and json.dumps(data)
    console = Console(record=True, width=200)
    report.print(console)
    text = console.export_text()
    assert "G3" in text and "error(s)" in text


def test_no_images_skips_reading(nifti_cohort):
    manifest = nifti_cohort()
    manifest.cases[0].images["T1"].write_bytes(b"garbage")
    assert validate_manifest(manifest, check_images=False).ok
    assert not validate_manifest(manifest).ok


def test_cli_exit_codes_and_json_report(nifti_cohort, volume_writer, tmp_path):
    runner = CliRunner()
    manifest = nifti_cohort()
    result = runner.invoke(app, ["validate", str(manifest.source)])
    assert result.exit_code == 0, result.output
    assert "0 error(s)" in result.output

    volume_writer(manifest.cases[0].label, np.zeros(SHAPE, np.uint8))
    result = runner.invoke(app, ["validate", str(manifest.source)])
    assert result.exit_code == 0 and "1 warning(s)" in result.output  # warnings alone pass

    manifest.cases[1].images["T1"].unlink()
    volume_writer(manifest.cases[2].images["T2FS"], np.zeros((8, 16, 17), np.float32))
    report_path = tmp_path / "report.json"
    result = runner.invoke(app, ["validate", str(manifest.source), "--json", str(report_path)], env=WIDE)
    assert result.exit_code == 1
    assert "case001_T1.nii.gz" in result.output and "case002" in result.output
    data = json.loads(report_path.read_text(encoding="utf-8"))
    assert data["n_errors"] == 2 and data["n_warnings"] == 1 and not data["ok"]

    result = runner.invoke(app, ["validate", str(manifest.source), "--no-images"])
    assert result.exit_code == 1 and "1 error(s)" in result.output  # only the missing file remains

    result = runner.invoke(app, ["validate", str(tmp_path / "nope.csv")])
    assert result.exit_code == 2 and "manifest not found" in result.output


def test_label_map_without_background_or_with_repeats(nifti_cohort):
    manifest = nifti_cohort()
    manifest.labels = {"tumour": 1, "oedema": 1}
    issues = _issues(validate_manifest(manifest, check_images=False), "labels_declaration")
    assert len(issues) == 2 and any("no background" in i.message for i in issues)


REAL_SCANS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "radiology"


@pytest.mark.skipif(not (REAL_SCANS / "brain1_image.nrrd").is_file(), reason="real sample scans not present")
def test_real_scans(tmp_path):
    """Real NRRD scans validate cleanly; a mask from another scan is caught with its values."""
    manifest = Manifest(channels=["image"], cases=[
        Case("brain1", {"image": REAL_SCANS / "brain1_image.nrrd"}, REAL_SCANS / "brain1_label.nrrd"),
        Case("lung1", {"image": REAL_SCANS / "lung1_image.nrrd"}, REAL_SCANS / "lung1_label.nrrd"),
        Case("mixed", {"image": REAL_SCANS / "brain1_image.nrrd"}, REAL_SCANS / "lung1_label.nrrd"),
    ])
    report = validate_manifest(manifest)
    [issue] = report.issues
    assert issue.check == "label_geometry_mismatch" and issue.case_id == "mixed"
    assert "shape (512, 512, 48) vs (256, 256, 25)" in issue.message and "spacing (0.5703, 0.5703, 5)" in issue.message
