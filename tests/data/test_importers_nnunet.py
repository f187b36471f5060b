"""nnU-Net raw import and export: naming, dataset.json versions, errors, and the round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.exporters import export_nnunet_raw
from sarcomakit.data.importers import import_nnunet_raw
from sarcomakit.data.manifest import Manifest

SHAPE = (8, 16, 16)


def _write_dataset(root: Path, volume_writer, *, cases=("sts_001", "sts_002"), channels=("T1", "T2FS"),
                   test_cases=(), dataset_json: dict | None = None) -> Path:
    root.mkdir(parents=True)
    for folder, names in (("imagesTr", cases), ("imagesTs", test_cases)):
        for case in names:
            for i, _ in enumerate(channels):
                volume_writer(root / folder / f"{case}_{i:04d}.nii.gz", np.full(SHAPE, i, np.float32))
    for case in cases:
        volume_writer(root / "labelsTr" / f"{case}.nii.gz", np.ones(SHAPE, np.uint8))
    data = dataset_json or {"channel_names": {str(i): ch for i, ch in enumerate(channels)},
                            "labels": {"background": 0, "tumour": 1}, "numTraining": len(cases),
                            "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_import_v2_dataset(tmp_path, volume_writer):
    root = _write_dataset(tmp_path / "Dataset501_Sarcoma", volume_writer, test_cases=("sts_009",))
    manifest = import_nnunet_raw(root, tmp_path / "manifest.csv")
    assert manifest.channels == ["T1", "T2FS"]
    assert manifest.case_ids == ["sts_001", "sts_002"]
    assert manifest.labels == {"background": 0, "tumour": 1}
    case = manifest["sts_002"]
    assert case.images["T2FS"] == (root / "imagesTr" / "sts_002_0001.nii.gz").resolve()
    assert case.label == (root / "labelsTr" / "sts_002.nii.gz").resolve()
    reloaded = Manifest.load(tmp_path / "manifest.csv")
    assert reloaded["sts_001"].images == manifest["sts_001"].images

    with_test = import_nnunet_raw(root, include_test=True)
    assert with_test.case_ids == ["sts_001", "sts_002", "sts_009"]
    assert with_test["sts_009"].label is None and with_test["sts_009"].extra["split"] == "test"


def test_import_v1_dataset_json(tmp_path, volume_writer):
    v1 = {"modality": {"0": "MRI", "1": "MRI"}, "labels": {"0": "background", "1": "tumour", "2": "oedema"},
          "training": [], "numTraining": 2}
    root = _write_dataset(tmp_path / "Task01", volume_writer, channels=("a", "b"), dataset_json=v1)
    manifest = import_nnunet_raw(root)
    assert manifest.channels == ["MRI", "MRI_2"]
    assert manifest.labels == {"background": 0, "tumour": 1, "oedema": 2}


def test_missing_dataset_json(tmp_path):
    (tmp_path / "Dataset1_X" / "imagesTr").mkdir(parents=True)
    with pytest.raises(UserInputError, match=r"dataset.json: file not found"):
        import_nnunet_raw(tmp_path / "Dataset1_X")


def test_all_naming_problems_listed_together(tmp_path, volume_writer):
    root = _write_dataset(tmp_path / "Dataset501_Sarcoma", volume_writer, cases=("a", "b", "c"))
    (root / "imagesTr" / "b_0001.nii.gz").unlink()
    (root / "labelsTr" / "c.nii.gz").unlink()
    volume_writer(root / "imagesTr" / "stray.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(UserInputError) as info:
        import_nnunet_raw(root)
    message = str(info.value)
    assert "case b has no imagesTr/b_0001.nii.gz" in message
    assert "case c has no labelsTr/c.nii.gz" in message
    assert "stray.nii.gz lacks the _XXXX channel suffix" in message


def test_region_labels_rejected(tmp_path, volume_writer):
    data = {"channel_names": {"0": "T1"}, "labels": {"background": 0, "whole": [1, 2]}, "file_ending": ".nii.gz"}
    root = _write_dataset(tmp_path / "D", volume_writer, channels=("T1",), dataset_json=data)
    with pytest.raises(UserInputError, match="region"):
        import_nnunet_raw(root)


def test_export_then_import_round_trip(nifti_cohort, tmp_path):
    manifest = nifti_cohort(n_cases=3, channels=("T1", "T2FS", "CT"))
    manifest.cases[2].label = None  # an unlabelled case goes to imagesTs
    target = export_nnunet_raw(manifest, tmp_path / "nnUNet_raw", dataset_id=7, name="Sarcoma")

    assert target.name == "Dataset007_Sarcoma"
    data = json.loads((target / "dataset.json").read_text(encoding="utf-8"))
    assert data["channel_names"] == {"0": "T1", "1": "T2FS", "2": "CT"}
    assert data["numTraining"] == 2 and data["file_ending"] == ".nii.gz"
    assert sorted(p.name for p in (target / "imagesTs").iterdir())[0] == "case002_0000.nii.gz"
    splits = json.loads((target / "splits_final.json").read_text(encoding="utf-8"))  # folds 0, 1 of the labelled cases
    assert splits == [{"train": ["case001"], "val": ["case000"]}, {"train": ["case000"], "val": ["case001"]}]

    back = import_nnunet_raw(target, include_test=True)
    assert back.channels == manifest.channels and back.case_ids == manifest.case_ids
    assert back.labels == manifest.labels
    for original, imported in zip(manifest.cases, back.cases, strict=True):
        assert (original.label is None) == (imported.label is None)
        for channel in manifest.channels:
            np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(original.images[channel]))),
                                          sitk.GetArrayFromImage(sitk.ReadImage(str(imported.images[channel]))))


def test_export_refuses_incomplete_cases(nifti_cohort, tmp_path):
    manifest = nifti_cohort()
    del manifest.cases[1].images["T1"]
    with pytest.raises(UserInputError, match="case001: channel T1 missing"):
        export_nnunet_raw(manifest, tmp_path / "raw")
    assert not (tmp_path / "raw" / "Dataset501_Sarcoma").exists()


def test_cli_import_and_export(nifti_cohort, tmp_path):
    manifest = nifti_cohort()
    runner = CliRunner()
    result = runner.invoke(app, ["export-nnunet", str(manifest.source), str(tmp_path / "raw"), "--id", "42"])
    assert result.exit_code == 0, result.output
    dataset = tmp_path / "raw" / "Dataset042_Sarcoma"
    again = runner.invoke(app, ["export-nnunet", str(manifest.source), str(tmp_path / "raw"), "--id", "42"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    other = runner.invoke(app, ["export-nnunet", str(manifest.source), str(tmp_path / "raw"), "--id", "42",
                                "--name", "Other"])
    assert other.exit_code == 2 and "already used by Dataset042_Sarcoma" in other.output
    again = runner.invoke(app, ["export-nnunet", str(manifest.source), str(tmp_path / "raw"), "--id", "42",
                                "--overwrite"])
    assert again.exit_code == 0, again.output
    result = runner.invoke(app, ["import", "nnunet", str(dataset), str(tmp_path / "imported.json")])
    assert result.exit_code == 0, result.output
    assert Manifest.load(tmp_path / "imported.json").case_ids == manifest.case_ids
    result = runner.invoke(app, ["import", "nnunet", str(tmp_path / "missing"), str(tmp_path / "m.csv")])
    assert result.exit_code == 2 and "is not a folder" in result.output
