"""Table import and clinical merge: column mapping, grade/status words, units, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.importers import ClinicalMapping, import_table, load_table_mapping, merge_clinical
from sarcomakit.data.manifest import Manifest
from sarcomakit.data.validation import validate_manifest

MAPPING = {
    "id_column": "Patient ID",
    "images": {"T1": "t1", "T2FS": "t2fs"},
    "label": "mask",
    "grade": {"column": "Grade", "map": {"G1": "low", "G2": "intermediate", "G3": "high"}},
    "survival_time": {"columns": ["Days to death", "Days to last follow-up"], "unit": "days"},
    "event": {"column": "Vital status", "map": {"D": 1, "NED": 0, "AWD": 0}},
    "site": "Centre",
    "keep": ["Age"],
}


def _hospital_table(root, volume_writer) -> pd.DataFrame:
    rows = []
    for i, (pid, grade, status, death, follow_up) in enumerate([
        ("STS 001", "G3", "D", "400", ""),
        ("STS 002", "g1", "NED", "", "1200"),
        ("STS 003", "GX", "AWD", "", "900"),
        ("STS 004", "G2", "lost", "", "-3"),
    ]):
        for channel in ("t1", "t2fs"):
            volume_writer(root / "img" / f"{i}_{channel}.nii.gz", np.ones((8, 16, 16), np.float32))
        volume_writer(root / "img" / f"{i}_mask.nii.gz", np.ones((8, 16, 16), np.uint8))
        rows.append({"Patient ID": pid, "t1": f"img/{i}_t1.nii.gz", "t2fs": f"img/{i}_t2fs.nii.gz",
                     "mask": f"img/{i}_mask.nii.gz", "Grade": grade, "Vital status": status,
                     "Days to death": death, "Days to last follow-up": follow_up, "Centre": "Montreal",
                     "Age": str(50 + i)})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_import_table_with_clinical_mapping(tmp_path, volume_writer, suffix):
    frame = _hospital_table(tmp_path, volume_writer)
    table = tmp_path / f"cohort{suffix}"
    frame.to_csv(table, index=False) if suffix == ".csv" else frame.to_excel(table, index=False)
    spec = load_table_mapping(_mapping_file(tmp_path))

    manifest = import_table(table, spec.image_columns, label_column=spec.label_column, id_column=spec.id_column,
                            clinical_map=spec.clinical, out_manifest=tmp_path / "manifest.csv")

    assert manifest.case_ids == ["STS_001", "STS_002", "STS_003", "STS_004"]
    first, second, third, fourth = manifest.cases
    assert first.images["T1"] == (tmp_path / "img" / "0_t1.nii.gz").resolve()
    assert (first.grade, first.survival_time, first.event) == ("high", 400.0, 1)
    assert (second.grade, second.survival_time, second.event) == ("low", 1200.0, 0)
    assert first.site == "Montreal" and first.extra["Age"] == "50" and first.extra["original_id"] == "STS 001"
    assert third.grade is None and third.invalid_fields == {"grade": "GX"}
    assert fourth.invalid_fields == {"event": "lost"} and fourth.survival_time == -3

    report = validate_manifest(Manifest.load(tmp_path / "manifest.csv"))
    assert {(i.check, i.case_id) for i in report.errors} == {
        ("unknown_grade", "STS_003"), ("invalid_event", "STS_004"), ("negative_survival_time", "STS_004")}


def _mapping_file(tmp_path, data=None):
    path = tmp_path / "mapping.json"
    path.write_text(json.dumps(data or MAPPING))
    return path


def test_survival_units_converted_to_days(tmp_path):
    mapping = ClinicalMapping.from_dict({"survival_time": {"column": "OS", "unit": "months"}})
    assert mapping.values({"OS": "12"})["survival_time"] == pytest.approx(365.25)
    assert mapping.values({"OS": "n/a"})["survival_time"] == "n/a"  # kept for validation to report
    with pytest.raises(UserInputError, match="unit 'fortnights'"):
        ClinicalMapping.from_dict({"survival_time": {"column": "OS", "unit": "fortnights"}})
    with pytest.raises(UserInputError, match="not among low, intermediate, high"):
        ClinicalMapping.from_dict({"grade": {"column": "G", "map": {"G3": "very high"}}})
    with pytest.raises(UserInputError, match="not 0 or 1"):
        ClinicalMapping.from_dict({"event": {"column": "S", "map": {"D": "dead"}}})


def test_merge_clinical_into_dicom_style_manifest(nifti_cohort, tmp_path):
    manifest = nifti_cohort(clinical=False)
    manifest.cases[1].case_id = "STS_001"  # as the DICOM importer names PatientID "STS 001"
    table = tmp_path / "clinical.csv"
    pd.DataFrame({"MRN": ["case000", "STS 001", "case009"], "Grade": ["G3", "G2", "G1"],
                  "Status": ["D", "AWD", "D"], "FU": ["100", "300", "50"]}).to_csv(table, index=False)
    mapping = {"id_column": "MRN", "grade": {"column": "Grade", "map": {"G1": "low", "G2": "intermediate",
                                                                       "G3": "high"}},
               "survival_time": "FU", "event": {"column": "Status", "map": {"D": 1, "AWD": 0}}}

    merged = merge_clinical(manifest, table, mapping)

    assert [(c.grade, c.survival_time, c.event) for c in merged.cases] == [
        ("high", 100.0, 1), ("intermediate", 300.0, 0), (None, None, None)]
    assert merged.cases[0].images == manifest.cases[0].images and manifest.cases[0].grade is None
    assert validate_manifest(merged).ok


def test_merge_errors(nifti_cohort, tmp_path):
    manifest = nifti_cohort(clinical=False)
    table = tmp_path / "clinical.csv"
    pd.DataFrame({"MRN": ["case000", "case000"], "Grade": ["G1", "G2"]}).to_csv(table, index=False)
    with pytest.raises(UserInputError, match="more than once"):
        merge_clinical(manifest, table, {"id_column": "MRN", "grade": "Grade"})
    with pytest.raises(UserInputError, match=r"no column\(s\) \['Stage'\]"):
        merge_clinical(manifest, table, {"id_column": "MRN", "grade": "Stage"})
    pd.DataFrame({"MRN": ["x1"], "Grade": ["G1"]}).to_csv(table, index=False)
    with pytest.raises(UserInputError, match="matches a case id"):
        merge_clinical(manifest, table, {"id_column": "MRN", "grade": "Grade"})


def test_yaml_mapping(tmp_path):
    pytest.importorskip("yaml")
    path = tmp_path / "mapping.yaml"
    path.write_text("id_column: ID\nimages:\n  CT: ct\nevent:\n  column: Status\n  map: {D: 1, NED: 0}\n")
    spec = load_table_mapping(path)
    assert spec.id_column == "ID" and spec.image_columns == {"CT": "ct"}
    assert spec.clinical.event_map == {"d": 1, "ned": 0}


def test_cli_import_table_and_clinical(tmp_path, volume_writer, nifti_cohort):
    frame = _hospital_table(tmp_path, volume_writer)
    frame.to_csv(tmp_path / "cohort.csv", index=False)
    runner = CliRunner()
    result = runner.invoke(app, ["import", "table", str(tmp_path / "cohort.csv"), str(tmp_path / "m.csv"),
                                 "--mapping", str(_mapping_file(tmp_path))])
    assert result.exit_code == 0, result.output
    assert len(Manifest.load(tmp_path / "m.csv")) == 4

    bad = dict(MAPPING, images={"T1": "t1_path"})
    result = runner.invoke(app, ["import", "table", str(tmp_path / "cohort.csv"), str(tmp_path / "m2.csv"),
                                 "--mapping", str(_mapping_file(tmp_path, bad))])
    assert result.exit_code == 2 and "t1_path" in result.output

    manifest = nifti_cohort(clinical=False)
    pd.DataFrame({"case_id": ["case001"], "grade": ["high"]}).to_csv(tmp_path / "clin.csv", index=False)
    (tmp_path / "grade.json").write_text(json.dumps({"grade": "grade"}))
    result = runner.invoke(app, ["import", "clinical", str(manifest.source), str(tmp_path / "clin.csv"),
                                 str(tmp_path / "merged.json"), "--mapping", str(tmp_path / "grade.json")])
    assert result.exit_code == 0, result.output
    assert Manifest.load(tmp_path / "merged.json")["case001"].grade == "high"
