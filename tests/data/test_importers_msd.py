"""Medical Segmentation Decathlon import: 4D channel splitting keeps geometry and values."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.importers import import_msd
from sarcomakit.data.manifest import Manifest
from sarcomakit.data.validation import validate_manifest

XYZ = (16, 12, 8)


def _affine() -> np.ndarray:
    angle = np.radians(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 3.0])
    affine[:3, 3] = [10.0, -5.0, 40.0]
    return affine


def _write_task(root: Path, modality: dict[str, str], n_train: int = 2, n_test: int = 1) -> Path:
    rng = np.random.default_rng(0)
    n_channels = len(modality)
    training, test = [], []
    for i in range(n_train + n_test):
        name = f"sarc_{i:03d}.nii.gz"
        shape = (*XYZ, n_channels) if n_channels > 1 else XYZ
        data = rng.normal(size=shape).astype(np.float32)
        split = "Tr" if i < n_train else "Ts"
        (root / f"images{split}").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, _affine()), root / f"images{split}" / name)
        if i < n_train:
            (root / "labelsTr").mkdir(exist_ok=True)
            label = np.zeros(XYZ, np.uint8)
            label[4:9, 3:7, 2:5] = 1
            nib.save(nib.Nifti1Image(label, _affine()), root / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
    data = {"name": "Sarcoma", "modality": modality, "labels": {"0": "background", "1": "tumour"},
            "numTraining": n_train, "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(data))
    return root / "dataset.json"


def test_four_dimensional_images_split_with_geometry(tmp_path):
    dataset_json = _write_task(tmp_path / "Task99", {"0": "T1", "1": "T2FS"})
    manifest = import_msd(dataset_json, tmp_path / "out", show_progress=False)

    assert manifest.channels == ["T1", "T2FS"] and manifest.case_ids == ["sarc_000", "sarc_001"]
    assert manifest.source == tmp_path / "out" / "manifest.csv"
    case = manifest["sarc_001"]
    source = nib.load(tmp_path / "Task99" / "imagesTr" / "sarc_001.nii.gz").get_fdata()
    label = sitk.ReadImage(str(case.label))
    for index, channel in enumerate(manifest.channels):
        image = sitk.ReadImage(str(case.images[channel]))
        assert image.GetDimension() == 3 and image.GetSize() == XYZ
        np.testing.assert_allclose(image.GetSpacing(), label.GetSpacing(), atol=1e-5)
        np.testing.assert_allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-4)
        np.testing.assert_allclose(image.GetDirection(), label.GetDirection(), atol=1e-5)
        values = sitk.GetArrayFromImage(image)  # (z, y, x)
        np.testing.assert_allclose(values, np.transpose(source[..., index], (2, 1, 0)), rtol=1e-6)
    assert validate_manifest(manifest).ok


def test_single_channel_images_referenced_in_place_and_test_split(tmp_path):
    dataset_json = _write_task(tmp_path / "Task98", {"0": "CT"})
    manifest = import_msd(dataset_json, include_test=True, show_progress=False)
    assert manifest.case_ids == ["sarc_000", "sarc_001", "sarc_002"]
    assert manifest["sarc_000"].images["CT"] == (tmp_path / "Task98" / "imagesTr" / "sarc_000.nii.gz").resolve()
    assert manifest["sarc_002"].label is None and manifest["sarc_002"].extra["split"] == "test"


def test_errors_are_clear(tmp_path):
    dataset_json = _write_task(tmp_path / "Task97", {"0": "T1", "1": "T2FS"})
    with pytest.raises(UserInputError, match="give an output folder"):
        import_msd(dataset_json, show_progress=False)
    (tmp_path / "Task97" / "labelsTr" / "sarc_000.nii.gz").unlink()
    (tmp_path / "Task97" / "imagesTr" / "sarc_001.nii.gz").unlink()
    with pytest.raises(UserInputError) as info:
        import_msd(dataset_json, tmp_path / "out", show_progress=False)
    assert "labelsTr/sarc_000.nii.gz not found" in str(info.value)
    assert "imagesTr/sarc_001.nii.gz not found" in str(info.value)
    with pytest.raises(UserInputError, match="file not found"):
        import_msd(tmp_path / "nowhere" / "dataset.json", tmp_path / "out")


def test_channel_count_mismatch_reported_per_case(tmp_path):
    dataset_json = _write_task(tmp_path / "Task96", {"0": "T1", "1": "T2FS"})
    data = json.loads(dataset_json.read_text(encoding="utf-8"))
    data["modality"]["2"] = "PET"  # declares a channel the images lack
    dataset_json.write_text(json.dumps(data))
    with pytest.raises(UserInputError, match="expected 3 channel"):
        import_msd(dataset_json, tmp_path / "out", show_progress=False)
    assert "sarc_000" in (tmp_path / "out" / "import_failures.json").read_text(encoding="utf-8")


def test_cli_import_msd(tmp_path):
    dataset_json = _write_task(tmp_path / "Task95", {"0": "T1", "1": "T2FS"})
    result = CliRunner().invoke(app, ["import", "msd", str(dataset_json), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert len(Manifest.load(tmp_path / "out" / "manifest.csv")) == 2
