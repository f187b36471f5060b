"""``sarcomakit predict-io``: every image under INPUT (files and DICOM series) into a Grand-Challenge-style OUTPUT.

Contracts first (no model needed): how images become cases and channels, the DICOM SEG written over a source
series, and the checks on INPUT and OUTPUT made before any work. Then end to end with a tiny trained multi-task
run (marked slow): the masks equal ``sarcomakit predict``'s for the same images, a DICOM series gives a DICOM
SEG whose pixels are the mask predicted for the same volume as NIfTI, the case-level predictions are those of
``predict``, and a bad case fails alone (exit 1) while the others are written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.sr.codedict import codes
from typer.testing import CliRunner

from data.conftest import WrittenSeries, orientation, write_dicom_series  # the importer tests' DICOM writers
from sarcomakit import __version__
from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import read_image, write_image
from sarcomakit.data.importers.dicom import scan_dicom_folder, series_geometry, series_to_image
from sarcomakit.data.manifest import Manifest
from sarcomakit.inference.dicom_seg import write_dicom_seg
from sarcomakit.inference.predict_io import (
    check_input_folder,
    find_images,
    group_cases,
    prepare_output_folder,
)
from tiny_cohorts import write_tiny_cohort

runner = CliRunner()
TRAIN = ("--fold", "0", "--folds", "2", "--epochs", "1", "--iterations", "3", "--batch-size", "2", "--workers", "0",
         "--augmentation", "none", "--optimizer", "adamw", "--lr", "0.003", "--device", "cpu")
CASE_KEYS = {"case_id", "status", "inputs", "outputs", "tumour_volume_ml", "label_volumes_ml", "predictions"}


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and the SHA-256 of its content (to show that INPUT is left as it was)."""
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(read_image(path))


def touch_image(path: Path, shape=(4, 6, 6)) -> Path:
    return write_image(sitk.GetImageFromArray(np.zeros(shape, np.float32)), path)


# ---------------------------------------------------------------------- contracts: cases and channels
def test_a_single_channel_model_takes_every_image_and_series_as_a_case(tmp_path: Path) -> None:
    root = tmp_path / "input"
    touch_image(root / "images" / "ct" / "3f2a.mha")
    touch_image(root / "plain.nii.gz")
    touch_image(root / "a" / "same.nrrd")
    touch_image(root / "b" / "same.nrrd")
    (root / "inputs.json").write_text("[]")
    touch_image(root / ".hidden" / "skip.nii.gz")
    write_dicom_series(root / "dicom" / "patientA", np.zeros((3, 4, 4), np.int16), patient_id="A")
    cases = group_cases(find_images(check_input_folder(root)), ["CT"], root)
    assert [c.case_id for c in cases] == ["3f2a", "a_same", "b_same", "patientA", "plain"]
    assert all(c.problem is None and list(c.sources) == ["CT"] for c in cases)
    series = next(c for c in cases if c.case_id == "patientA").sources["CT"]
    assert series.series is not None and series.describe()["format"] == "dicom"


def test_a_multi_channel_model_finds_channels_in_folders_and_matches_cases_by_name(tmp_path: Path) -> None:
    root = tmp_path / "input"
    for name in ("a", "b", "c"):
        touch_image(root / "images" / "t1" / f"{name}.nii.gz")
    for name in ("a", "c"):
        touch_image(root / "images" / "T2-FS" / f"{name}.mha")
    touch_image(root / "images" / "T2-FS" / "c.nii.gz")  # c given twice in T2FS
    touch_image(root / "d_0000.nii.gz")  # nnU-Net naming: channel by index
    touch_image(root / "d_0001.nii.gz")
    touch_image(root / "stray.nii.gz")  # no channel
    cases = {c.case_id: c for c in group_cases(find_images(root), ["T1", "T2FS"], root)}
    assert sorted(cases) == ["a", "b", "c", "d", "stray"]
    assert cases["a"].problem is None and cases["d"].problem is None
    assert cases["a"].sources["T2FS"].relative.as_posix() == "images/T2-FS/a.mha"
    assert cases["d"].sources["T2FS"].relative.as_posix() == "d_0001.nii.gz"
    assert "no image for channel(s) T2FS" in cases["b"].problem
    assert "2 images for channel T2FS" in cases["c"].problem
    assert "in no folder named after a channel" in cases["stray"].problem


def test_one_image_per_channel_is_one_case_whatever_the_names(tmp_path: Path) -> None:
    """Grand Challenge gives every input of a job its own UUID: the channels of the one case differ in name."""
    root = tmp_path / "input"
    touch_image(root / "images" / "t1" / "0c1e.mha")
    touch_image(root / "images" / "t2" / "9ab4.mha")
    (cases,) = group_cases(find_images(root), ["T1", "T2"], root)
    assert cases.case_id == "0c1e" and cases.problem is None and sorted(cases.sources) == ["T1", "T2"]
    (missing,) = group_cases(find_images(root), ["T1", "T2", "PET"], root)
    assert "no image for channel(s) PET" in missing.problem


def test_interface_slugs_can_be_mapped_to_channels(tmp_path: Path) -> None:
    root = tmp_path / "input"
    touch_image(root / "images" / "t1" / "0c1e.mha")
    touch_image(root / "images" / "stir-mri" / "9ab4.mha")
    (case,) = group_cases(find_images(root), ["T1", "T2FS"], root, channel_folders={"T2FS": "stir-mri"})
    assert case.problem is None and case.sources["T2FS"].relative.parts[1] == "stir-mri"
    with pytest.raises(UserInputError, match="PET that the model does not have"):
        group_cases(find_images(root), ["T1", "T2FS"], root, channel_folders={"PET": "pet"})


def test_missing_channels_are_allowed_when_the_task_allows_them(tmp_path: Path) -> None:
    root = tmp_path / "input"
    touch_image(root / "T1" / "a.nii.gz")
    touch_image(root / "T1" / "b.nii.gz")
    touch_image(root / "T2" / "a.nii.gz")
    cases = group_cases(find_images(root), ["T1", "T2"], root, allow_missing=True)
    assert [(c.case_id, c.problem) for c in cases] == [("a", None), ("b", None)]


# ---------------------------------------------------------------------- contracts: INPUT and OUTPUT
def test_input_must_exist_and_hold_images(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="input folder not found") as missing:
        check_input_folder(tmp_path / "nope")
    assert missing.value.fix
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "inputs.json").write_text("[]")
    with pytest.raises(UserInputError, match="holds no images.*inputs.json"):
        find_images(empty)


def test_output_is_checked_before_any_work(tmp_path: Path) -> None:
    root = tmp_path / "input"
    root.mkdir()
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for bad, reason in ((a_file, "is a file"), (a_file / "out", "cannot be written"),
                        (root / "out", "overlaps the input"), (root, "overlaps the input"),
                        (tmp_path / "o", "not a folder name")):
        with pytest.raises(UserInputError, match=reason):
            prepare_output_folder(bad, root.resolve(), "bad/slug" if bad.name == "o" else "masks")
    assert not (root / "out").exists() and not (tmp_path / "o").exists()
    # INPUT inside a folder that would be written to
    with pytest.raises(UserInputError, match="overlaps the input"):
        prepare_output_folder(tmp_path, (tmp_path / "images" / "masks" / "in").resolve(), "masks")
    out = prepare_output_folder(tmp_path / "new" / "out", root.resolve(), "masks")
    assert out.is_dir() and list(out.iterdir()) == []


# ---------------------------------------------------------------------- contract: the DICOM SEG
def test_dicom_seg_frames_match_the_source_slices(tmp_path: Path) -> None:
    """Rotated, feet-first series whose headers lack the type-2 patient attributes that highdicom copies."""
    stored = np.random.default_rng(0).integers(0, 200, (5, 12, 10)).astype(np.int16)
    written = write_dicom_series(tmp_path / "series", stored, modality="MR", direction=orientation(25, flip=True))
    series = next(iter(scan_dicom_folder(tmp_path / "series").series.values()))
    instances, _ = series_geometry(series)
    mask = np.zeros(stored.shape, np.uint8)
    mask[0:3, 3:8, 2:6] = 1  # not symmetric along any axis, so that a flipped or shuffled frame order shows
    mask[1, 5, 5] = 2
    seg_path = write_dicom_seg(mask, [i.path for i in instances], {"background": 0, "tumour": 1, "oedema": 2},
                               tmp_path / "out" / "seg.dcm", parameters={"run": "r"}, model_key="abc")
    assert list((tmp_path / "out").iterdir()) == [seg_path]
    seg = hd.seg.segread(seg_path)
    assert seg.number_of_segments == 2 and int(seg.NumberOfFrames) == 2 * len(instances)
    tumour = seg.get_segment_description(1)
    assert tumour.segmented_property_type == codes.SCT.Neoplasm
    assert tumour.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    algorithm = tumour.algorithm_identification[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("sarcomakit", __version__)
    assert seg.get_segment_description(2).segmented_property_type == codes.SCT.Tissue
    back = seg.get_pixels_by_source_instance([i.sop_uid for i in instances], combine_segments=True)
    np.testing.assert_array_equal(back, mask)
    assert_frames_on_source_slices(seg_path, written)


def assert_frames_on_source_slices(seg_path: Path, written: WrittenSeries) -> None:
    """With pydicom alone: the SEG references the series, and each frame lies where its source slice lies."""
    ds = pydicom.dcmread(seg_path)
    assert ds.Modality == "SEG" and ds.StudyInstanceUID == written.study_uid
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == written.series_uid
    assert ds.FrameOfReferenceUID == written.frame_uid
    positions = {uid: written.origin + k * written.spacing[2] * written.direction[:, 2]
                 for k, uid in enumerate(written.sop_uids)}
    seen = set()
    for frame in ds.PerFrameFunctionalGroupsSequence:
        source = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        seen.add(source)
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   positions[source], atol=1e-4)
    assert seen == set(written.sop_uids)


# ---------------------------------------------------------------------- end to end with a trained run
@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Manifest:
    return write_tiny_cohort(tmp_path_factory.mktemp("cohort"), n_cases=4, shape=(8, 24, 24))


@pytest.fixture(scope="module")
def run(cohort: Manifest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-channel (T1, T2) multi-task run: masks and case-level grade probabilities and log-risk."""
    root = tmp_path_factory.mktemp("run")
    assert invoke("plan", cohort.source, "--out", root / "plan.json").exit_code == 0
    result = invoke("train", cohort.source, "--plan", root / "plan.json", "--out", root / "run", "--task", "multitask",
                    *TRAIN)
    assert result.exit_code == 0, result.output
    return root / "run"


def clinical_rows(folder: Path) -> dict[str, dict[str, str]]:
    with (folder / "clinical_predictions.csv").open() as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def dicom_case(folder: Path, volumes: dict[str, sitk.Image]) -> dict[str, WrittenSeries]:
    """The channels as DICOM series of one study (rotated, feet first, files without a suffix) in CH/ folders."""
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    written = {}
    for index, (channel, image) in enumerate(volumes.items()):
        stored = np.round(sitk.GetArrayFromImage(image)).astype(np.int16)
        written[channel] = write_dicom_series(folder / channel / "patientX", stored, modality="MR",
                                              spacing=(1.1, 1.1, 2.0), direction=orientation(15, flip=True),
                                              patient_id="X", study_uid=study, frame_uid=frame, seed=index)
        for file in written[channel].folder.glob("*.dcm"):
            file.rename(file.with_suffix(""))
    return written


@pytest.mark.slow
def test_files_and_dicom_series_give_predicts_masks_values_and_a_dicom_seg(run: Path, cohort: Manifest,
                                                                          tmp_path: Path) -> None:
    """NIfTI, MetaImage and NRRD files and DICOM series in one INPUT; ``predict`` gets the same volumes as files."""
    inp, flat = tmp_path / "input", tmp_path / "flat"  # predict-io's input, and a {case}_{XXXX} folder for predict
    images = {c.case_id: {ch: read_image(c.images[ch]) for ch in ("T1", "T2")} for c in cohort.cases}
    for name, case_id, where in (("a", "case00", "images/{ch}/a.nii.gz"), ("b", "case01", "images/{ch}/b/b.mha"),
                                 ("c", "case02", "c_{index:04d}.nrrd")):
        for index, ch in enumerate(("T1", "T2")):
            write_image(images[case_id][ch], inp / where.format(ch=ch.lower(), index=index))
            write_image(images[case_id][ch], flat / f"{name}_{index:04d}{where[where.index('.'):]}")
    (inp / "inputs.json").write_text("[]")
    written = dicom_case(inp / "dicom", images["case03"])
    for index, ch in enumerate(("T1", "T2")):  # the DICOM importer's volumes, as NIfTI
        series = next(iter(scan_dicom_folder(written[ch].folder).series.values()))
        write_image(series_to_image(series)[0], flat / f"patientX_{index:04d}.nii.gz")
    before = snapshot(inp)

    out = tmp_path / "output"
    result = invoke("predict-io", inp, out, "--model", run, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert snapshot(inp) == before
    assert invoke("predict", run, flat, tmp_path / "predicted", "--device", "cpu").exit_code == 0

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert set(results) == {"format", "sarcomakit_version", "input", "output", "model", "summary", "cases"}
    assert results["summary"] == {"done": 4, "failed": 0} and results["model"]["channels"] == ["T1", "T2"]
    entries = {e["case_id"]: e for e in results["cases"]}
    assert sorted(entries) == ["a", "b", "c", "patientX"]
    assert entries["b"]["inputs"]["T2"] == {"path": "images/t2/b/b.mha", "format": "metaimage"}
    assert entries["c"]["inputs"]["T1"] == {"path": "c_0000.nrrd", "format": "nrrd"}
    assert entries["patientX"]["inputs"]["T1"] == {"path": "dicom/T1/patientX", "format": "dicom",
                                                   "series_instance_uid": written["T1"].series_uid, "instances": 8}
    rows = clinical_rows(tmp_path / "predicted")
    for case_id, entry in entries.items():
        assert set(entry) == CASE_KEYS and entry["status"] == "done"
        mask_file = out / entry["outputs"]["mask"]
        assert mask_file == out / "images" / "tumour-segmentation" / f"{case_id}.mha"
        expected = read_image(tmp_path / "predicted" / f"{case_id}.nii.gz")
        mask = read_image(mask_file)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(expected))
        np.testing.assert_allclose(mask.GetOrigin(), expected.GetOrigin(), atol=1e-4)
        voxel_ml = np.prod(mask.GetSpacing()) / 1000
        assert entry["tumour_volume_ml"] == pytest.approx((sitk.GetArrayFromImage(mask) > 0).sum() * voxel_ml)
        predictions = entry["predictions"]
        assert set(predictions) == {"p_low", "p_intermediate", "p_high", "grade_pred", "log_risk", "risk_group"}
        for key in ("p_low", "p_intermediate", "p_high", "log_risk"):
            assert predictions[key] == pytest.approx(float(rows[case_id][key]), rel=1e-5)
        assert (predictions["grade_pred"], predictions["risk_group"]) == \
            (rows[case_id]["grade_pred"], rows[case_id]["risk_group"])
    assert "dicom_seg" not in entries["a"]["outputs"]

    # the DICOM SEG lies over the first channel's series; its pixels are the mask predicted from the NIfTI volumes
    seg_path = out / entries["patientX"]["outputs"]["dicom_seg"]
    assert seg_path == out / "dicom-seg" / "patientX.dcm"
    nifti_mask = array(tmp_path / "predicted" / "patientX.nii.gz")
    assert 0 < nifti_mask.sum() < nifti_mask.size  # a mask worth comparing
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(seg_path))
    assert int(seg.NumberOfFrames) == 8 and seg.get_source_image_uids()[0][1] == written["T1"].series_uid
    series = next(iter(scan_dicom_folder(written["T1"].folder).series.values()))
    instances, _ = series_geometry(series)  # the volume's slice order
    pixels = seg.get_pixels_by_source_instance([i.sop_uid for i in instances], combine_segments=True)
    np.testing.assert_array_equal(pixels, nifti_mask)
    assert_frames_on_source_slices(seg_path, written["T1"])


@pytest.mark.slow
def test_a_grand_challenge_job_is_one_case_named_after_its_first_input(run: Path, cohort: Manifest,
                                                                       tmp_path: Path) -> None:
    """Interface slugs name the channel folders (--channel-folder); each input has its own UUID name."""
    case = cohort.cases[1]
    inp = tmp_path / "input"
    write_image(read_image(case.images["T1"]), inp / "images" / "t1-weighted-mri" / "5d1c7e.mha")
    write_image(read_image(case.images["T2"]), inp / "images" / "t2-weighted-mri" / "a09f33.mha")
    (inp / "inputs.json").write_text("[]")
    out = tmp_path / "output"
    result = invoke("predict-io", inp, out, "--model", run, "--device", "cpu", "--mask-slug", "sts-segmentation",
                    "--channel-folder", "T1=t1-weighted-mri", "--channel-folder", "T2=t2-weighted-mri")
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((out / "results.json").read_text(encoding="utf-8"))["cases"]
    assert entry["case_id"] == "5d1c7e" and entry["outputs"] == {"mask": "images/sts-segmentation/5d1c7e.mha"}
    pred = tmp_path / "predicted"
    assert invoke("predict", run, f"T1={case.images['T1']},T2={case.images['T2']}", pred, "--device", "cpu") \
        .exit_code == 0
    np.testing.assert_array_equal(array(out / entry["outputs"]["mask"]), array(pred / "case01_T1.nii.gz"))
    assert entry["predictions"]["log_risk"] == pytest.approx(float(clinical_rows(pred)["case01_T1"]["log_risk"]),
                                                             rel=1e-5)
    # without the mapping, the slugs name no channel: a clear failure of that one case
    result = invoke("predict-io", inp, tmp_path / "unmapped", "--model", run, "--device", "cpu")
    assert result.exit_code == 1 and "in no folder named after a channel" in result.output


@pytest.mark.slow
def test_a_corrupt_image_fails_alone(run: Path, cohort: Manifest, tmp_path: Path) -> None:
    inp = tmp_path / "input"
    for case in cohort.cases[:3]:
        for ch in ("T1", "T2"):
            (inp / ch).mkdir(parents=True, exist_ok=True)
            shutil.copy(case.images[ch], inp / ch / f"{case.case_id}.nii.gz")
    bad = inp / "T2" / "case01.nii.gz"
    bad.write_bytes(bad.read_bytes()[:200])
    out = tmp_path / "output"
    result = invoke("predict-io", inp, out, "--model", run, "--device", "cpu")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "2 case(s) done" in result.output and "1 failed" in result.output
    (line,) = [line for line in result.output.splitlines() if "failed case01" in line]
    assert "truncated or corrupt" in line and "case01.nii.gz" in line
    assert sorted(p.name for p in (out / "images" / "tumour-segmentation").iterdir()) == ["case00.mha", "case02.mha"]
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    entries = {e["case_id"]: e for e in results["cases"]}
    assert results["summary"] == {"done": 2, "failed": 1}
    assert set(entries["case01"]) == {"case_id", "status", "inputs", "error"}
    assert entries["case01"]["status"] == "failed" and "truncated" in entries["case01"]["error"]


def test_bad_input_and_output_are_one_line_and_exit_2(cohort: Manifest, tmp_path: Path) -> None:
    """Found before the model is loaded (so a missing run is not even looked at) and before anything is written."""
    empty = tmp_path / "empty"
    (empty / "images" / "t1").mkdir(parents=True)
    (empty / "inputs.json").write_text("[]")
    inp = tmp_path / "input"
    inp.mkdir()
    shutil.copy(cohort.cases[0].images["T1"], inp / "a.nii.gz")
    before = snapshot(inp)
    a_file = tmp_path / "file"
    a_file.write_text("")
    for args, message in (((tmp_path / "missing", tmp_path / "out"), "input folder not found"),
                          ((empty, tmp_path / "out"), "holds no images"),
                          ((inp, a_file), "is a file, not a folder"),
                          ((inp, a_file / "out"), "cannot be written to"),
                          ((inp, inp / "out"), "overlaps the input folder")):
        result = invoke("predict-io", *args, "--model", tmp_path / "no-run")
        assert result.exit_code == 2, result.output
        (line,) = [line for line in result.output.splitlines() if message in line]
        assert "Fix:" in line and "Traceback" not in result.output
    assert snapshot(inp) == before and not (tmp_path / "out").exists()
    result = invoke("predict-io", inp, tmp_path / "out", "--model", tmp_path / "no-run")
    assert result.exit_code == 2 and "no-run" in result.output
