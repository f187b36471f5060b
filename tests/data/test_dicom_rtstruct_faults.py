"""Faulty DICOM + RTSTRUCT exports: each gives a correct mask or a failure naming the patient and the reason.

Every test writes its series and structure sets with pydicom (fixtures in conftest.py) and would
pass a wrong or stale mask with exit status 0 if the check it covers were switched off.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import MRImageStorage
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry
from sarcomakit.data.importers.dicom import import_dicom, import_dicom_cohort
from sarcomakit.data.importers.rtstruct import rasterise_contours
from sarcomakit.data.manifest import Manifest
from sarcomakit.data.validation import validate_manifest

# A square whose edges lie half-way between voxel centres (x 3.5..9.5, y 4.5..10.5 in voxel units): 36 voxels.
SQUARE_INDEX = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5], [3.5, 10.5]])
STUDY, FRAME = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102"


def _stored(n_slices: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2000, (n_slices, 16, 16)).astype(np.int16)


def _mask(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _square(dicom, series, k: int) -> np.ndarray:
    """The square on slice ``k`` of ``series``, in patient coordinates."""
    return dicom.polygon(series, k, SQUARE_INDEX * np.asarray(series.spacing[:2]))


def _good_patient(dicom, root: Path, roi: str = "GTV_Mass") -> None:
    """A clean patient beside the faulty one, so that the import as a whole goes on and reports."""
    ct = dicom.write_series(root / "GOOD", _stored(seed=9), modality="CT", patient_id="GOOD")
    dicom.write_rtstruct(root / "GOOD" / "rs.dcm", ct, {roi: [_square(dicom, ct, k) for k in (2, 3)]})


def _failure(out: Path, patient_id: str) -> str:
    """The reason ``import_failures.json`` gives for a patient, from where the message names the patient."""
    message = json.loads((out / "import_failures.json").read_text(encoding="utf-8"))[patient_id]
    assert f"patient {patient_id}: " in message
    return message.split(f"patient {patient_id}: ", 1)[1]


def _cli(*args: str):
    return CliRunner().invoke(app, ["import", "dicom", *args])


# ---------------------------------------------------------------------- 1. contours on another slice grid
def _contoured_elsewhere(dicom, root: Path, fallback_step: float, n_fallback: int):
    """A 3 mm CT the RTSTRUCT was drawn on (then removed) and another reconstruction in its frame of reference."""
    contoured = dicom.write_series(root / "ct3", _stored(12), modality="CT", spacing=(1.0, 1.0, 3.0),
                                   origin=(0.0, 0.0, 0.0), study_uid=STUDY, frame_uid=FRAME, description="CT 3mm")
    other = dicom.write_series(root / "other", _stored(n_fallback, seed=1), modality="CT",
                               spacing=(1.0, 1.0, fallback_step), origin=(0.0, 0.0, 0.0), study_uid=STUDY,
                               frame_uid=FRAME, description=f"CT {fallback_step:g}mm")
    dicom.write_rtstruct(root / "rs.dcm", contoured, {"GTV_Mass": [_square(dicom, contoured, k) for k in range(2, 8)]})
    shutil.rmtree(contoured.folder)
    return contoured, other


def test_contours_between_the_planes_of_a_fallback_series_fail_the_patient(tmp_path, dicom):
    """3 mm contours on a 6 mm reconstruction: half lie between its planes (the nearest-slice rule cut rings)."""
    _contoured_elsewhere(dicom, tmp_path / "dicom", fallback_step=6.0, n_fallback=6)
    _good_patient(dicom, tmp_path / "dicom")

    result = _cli(str(tmp_path / "dicom"), str(tmp_path / "out"))

    assert result.exit_code == 1, result.output
    failure = _failure(tmp_path / "out", "STS-001")
    assert failure.startswith("the series the RTSTRUCT references")
    assert "lie between the slice planes" in failure and "3 of 6 contour(s)" in failure
    assert Manifest.load(tmp_path / "out" / "manifest.csv").case_ids == ["GOOD"]
    assert not (tmp_path / "out" / "labels" / "STS-001.nii.gz").exists()


def test_contours_on_every_other_slice_of_a_finer_fallback_fail(tmp_path, dicom):
    """3 mm contours on a 1.5 mm reconstruction sit on its planes, but only on every second slice."""
    _contoured_elsewhere(dicom, tmp_path / "dicom", fallback_step=1.5, n_fallback=24)
    with pytest.raises(UserInputError, match="at least 2 slices apart.*striped"):
        import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)


@pytest.mark.parametrize("hint", ["SOP class CT", "SOP class MR", "ROI name"])
def test_fallback_series_chosen_by_the_stated_rule_and_recorded(tmp_path, dicom, hint):
    """Three equally long series fit the contours: the modality hint, then the lowest UID decides."""
    root = tmp_path / "dicom"
    contoured = dicom.write_series(root / "gone", _stored(), modality="CT", study_uid=STUDY, frame_uid=FRAME)
    ct_a, ct_b, mr = (dicom.write_series(root / name, _stored(seed=i), modality=modality, study_uid=STUDY,
                                         frame_uid=FRAME, description=name)
                      for i, (name, modality) in enumerate([("ct_a", "CT"), ("ct_b", "CT"), ("mr", "MR")]))
    roi = "GTV_MRI" if hint == "ROI name" else "GTV_Mass"
    path = dicom.write_rtstruct(root / "rs.dcm", contoured, {roi: [_square(dicom, contoured, k) for k in (2, 3, 4)]})
    ds = pydicom.dcmread(path)
    for image in ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0] \
            .RTReferencedSeriesSequence[0].ContourImageSequence:
        if hint == "SOP class MR":
            image.ReferencedSOPClassUID = MRImageStorage
        elif hint == "ROI name":
            del image.ReferencedSOPClassUID
    ds.save_as(path)
    shutil.rmtree(contoured.folder)
    lowest_uid = min(ct_a, ct_b, key=lambda s: s.series_uid)
    highest_uid = ct_b if lowest_uid is ct_a else ct_a
    highest_uid.folder.rename(root / "aa_found_first")  # the scan order must not decide

    case = import_dicom(root, tmp_path / "out", roi_name=roi, show_progress=False).cases[0]

    expected = mr if hint != "SOP class CT" else lowest_uid
    assert case.extra["label_series"] == expected.series_uid
    assert case.extra["label_series_fallback"] == "frame_of_reference"
    mask = _mask(case.label)
    assert mask.sum() == 3 * 36 and mask[2:5].sum() == 3 * 36
    reloaded = Manifest.load(tmp_path / "out" / "manifest.csv").cases[0]
    assert reloaded.extra["label_series"] == expected.series_uid
    assert reloaded.extra["label_series_fallback"] == "frame_of_reference"


def test_referenced_series_recorded_without_fallback(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom", _stored(), modality="CT")
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct, {"GTV_Mass": [_square(dicom, ct, 2)]})
    case = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False).cases[0]
    assert case.extra["label_series"] == ct.series_uid and "label_series_fallback" not in case.extra


def _grid(step: float, n_slices: int = 4) -> Geometry:
    return Geometry(size=(16, 16, n_slices), spacing=(1.0, 1.0, step), origin=(0.0, 0.0, 0.0),
                    direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _axial(corners_xy: np.ndarray, z_mm: float) -> np.ndarray:
    return np.column_stack([corners_xy, np.full(len(corners_xy), z_mm)])


def test_contours_of_different_planes_on_one_slice_are_never_xored():
    """Contours 1 mm apart both lie within the on-plane tolerance of a 12 mm slice: XOR would cut a hole."""
    outer = _axial(np.array([[1.5, 1.5], [12.5, 1.5], [12.5, 12.5], [1.5, 12.5]]), 12.0)
    inner = _axial(np.array([[4.5, 4.5], [8.5, 4.5], [8.5, 8.5], [4.5, 8.5]]), 13.0)
    with pytest.raises(UserInputError, match="contours of different planes .* fall on slice 1"):
        rasterise_contours([outer, inner], _grid(12.0))
    # on one plane (within export rounding) the inner contour is a hole, as DICOM intends
    filled = rasterise_contours([outer, _axial(inner[:, :2], 12.004)], _grid(12.0))
    assert filled.mask[1].sum() == 11 * 11 - 4 * 4 and not filled.mask[1, 6, 6]


def test_contour_plane_tolerance_is_a_fraction_of_the_slice_step():
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5], [3.5, 10.5]])
    near = rasterise_contours([_axial(square, 2 * 3.0 + 0.5)], _grid(3.0))  # 0.17 of a step off: slice 2
    assert near.mask[2].sum() == 36 and near.mask.sum() == 36
    with pytest.raises(UserInputError, match=r"between the slice planes.*up to 0\.70 mm"):
        rasterise_contours([_axial(square, 2 * 3.0 + 0.7)], _grid(3.0))  # 0.23 of a step off


# ---------------------------------------------------------------------- 2. ROI names that differ in case
def _decoy_and_tumour(dicom, root: Path):
    ct = dicom.write_series(root, _stored(), modality="CT")
    decoy = [_square(dicom, ct, k) for k in (5, 6)]
    tumour = [_square(dicom, ct, k) for k in (1, 2, 3)]
    dicom.write_rtstruct(root / "rs.dcm", ct, {"gtv-1": decoy, "GTV-1": tumour, "GTV_Mass": tumour})
    return ct


def test_exact_roi_name_wins_over_a_case_insensitive_decoy(tmp_path, dicom):
    _decoy_and_tumour(dicom, tmp_path / "dicom")
    case = import_dicom(tmp_path / "dicom", tmp_path / "out", roi_name="GTV-1", show_progress=False).cases[0]
    mask = _mask(case.label)
    assert mask[1:4].sum() == 3 * 36 and mask.sum() == 3 * 36
    assert case.extra["label_roi"] == "GTV-1"


def test_several_case_insensitive_matches_are_refused_and_listed(tmp_path, dicom):
    _decoy_and_tumour(dicom, tmp_path / "dicom")
    _good_patient(dicom, tmp_path / "dicom", roi="Gtv-1")
    import_dicom(tmp_path / "dicom", tmp_path / "out", roi_name="Gtv-1", show_progress=False)
    failure = _failure(tmp_path / "out", "STS-001")
    assert failure.startswith("several ROIs match 'Gtv-1' when case is ignored")
    assert "'gtv-1' (ROI number 1), 'GTV-1' (ROI number 2)" in failure


def test_roi_name_used_is_recorded_as_the_rtstruct_spells_it(tmp_path, dicom):
    _decoy_and_tumour(dicom, tmp_path / "dicom")
    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", roi_name="gtv_mass", show_progress=False)
    assert Manifest.load(manifest.source).cases[0].extra["label_roi"] == "GTV_Mass"


# ---------------------------------------------------------------------- 3. contours outside the series
def _truncated(dicom, root: Path, patient_id: str = "STS-001"):
    """An export missing the upper slices: the series is contiguous, contours on slices 8 and 9 lie beyond it."""
    ct = dicom.write_series(root / patient_id, _stored(), modality="CT", patient_id=patient_id)
    dicom.write_rtstruct(root / patient_id / "rs.dcm", ct, {"GTV_Mass": [_square(dicom, ct, k) for k in range(4, 10)]})
    return ct


def test_contours_beyond_the_series_fail_the_patient_with_exit_1(tmp_path, dicom):
    _truncated(dicom, tmp_path / "dicom")
    _good_patient(dicom, tmp_path / "dicom")

    result = _cli(str(tmp_path / "dicom"), str(tmp_path / "out"))

    assert result.exit_code == 1, result.output
    failure = _failure(tmp_path / "out", "STS-001")
    assert failure.startswith("2 of 6 contour(s) lie outside the series (beyond its slices 0..7")
    assert "--allow-partial-masks" in failure
    assert Manifest.load(tmp_path / "out" / "manifest.csv").case_ids == ["GOOD"]


def test_partial_masks_allowed_are_recorded_and_flagged_by_validate(tmp_path, dicom):
    _truncated(dicom, tmp_path / "dicom")

    result = _cli(str(tmp_path / "dicom"), str(tmp_path / "out"), "--allow-partial-masks")

    assert result.exit_code == 0, result.output
    manifest = Manifest.load(tmp_path / "out" / "manifest.csv")
    case = manifest.cases[0]
    assert case.extra["label_contours_dropped"] == "2"
    mask = _mask(case.label)
    assert mask[4:8].sum() == 4 * 36 and mask.sum() == 4 * 36
    report = validate_manifest(manifest)
    assert report.ok and "partial_label" in report.checks()
    assert "2 contour(s) lying outside the images were dropped" in next(i.message for i in report.warnings
                                                                 if i.check == "partial_label")
    validated = CliRunner().invoke(app, ["validate", str(manifest.source), "--json", str(tmp_path / "report.json")])
    assert validated.exit_code == 0
    issues = json.loads((tmp_path / "report.json").read_text("utf-8"))["issues"]
    assert any(i["check"] == "partial_label" for i in issues)


def test_contour_past_the_field_of_view_is_a_partial_mask(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom", _stored(), modality="CT")
    # x from -3.5 to 5.5 voxels: the voxels -3..-1 of each row lie outside the image
    wide = np.array([[-3.5, 4.5], [5.5, 4.5], [5.5, 10.5], [-3.5, 10.5]]) * np.asarray(ct.spacing[:2])
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct, {"GTV_Mass": [dicom.polygon(ct, 3, wide)]})

    with pytest.raises(UserInputError, match=r"1 contour\(s\) reach past the series' field of view \(18 voxel"):
        import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)
    case = import_dicom(tmp_path / "dicom", tmp_path / "out", allow_partial_masks=True, show_progress=False).cases[0]
    assert case.extra["label_contours_clipped"] == "1"
    mask = _mask(case.label)
    assert mask.sum() == 6 * 6 and mask[3, 5:11, 0:6].all()
    assert "partial_label" in validate_manifest(Manifest.load(tmp_path / "out" / "manifest.csv")).checks()


def test_no_contour_inside_the_series_fails_even_when_partial_masks_are_allowed(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom", _stored(), modality="CT")
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct, {"GTV_Mass": [_square(dicom, ct, k) for k in (10, 11)]})
    with pytest.raises(UserInputError, match="none of the 2 contour"):
        import_dicom(tmp_path / "dicom", tmp_path / "out", allow_partial_masks=True, show_progress=False)


def test_contour_wholly_outside_the_field_of_view_counts_as_dropped():
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5], [3.5, 10.5]])
    inside, outside = _axial(square, 3.0), _axial(square + [40.0, 0.0], 6.0)
    with pytest.raises(UserInputError, match=r"1 of 2 contour\(s\) lie outside the series"):
        rasterise_contours([inside, outside], _grid(3.0))
    filled = rasterise_contours([inside, outside], _grid(3.0), allow_partial=True)
    assert (filled.dropped, filled.clipped) == (1, 0) and filled.mask[1].sum() == 36 and filled.mask.sum() == 36
    with pytest.raises(UserInputError, match="none of the 1 contour"):
        rasterise_contours([outside], _grid(3.0), allow_partial=True)


# ---------------------------------------------------------------------- 4. RTSTRUCT without its images
def test_structure_set_without_images_is_reported(tmp_path, dicom):
    orphan = dicom.write_series(tmp_path / "dicom" / "orphan", _stored(), modality="CT", patient_id="ORPHAN")
    dicom.write_rtstruct(tmp_path / "dicom" / "orphan_rs.dcm", orphan, {"GTV_Mass": [_square(dicom, orphan, 2)]})
    shutil.rmtree(orphan.folder)
    _good_patient(dicom, tmp_path / "dicom")

    result = _cli(str(tmp_path / "dicom"), str(tmp_path / "out"))

    assert result.exit_code == 1, result.output
    assert list(json.loads((tmp_path / "out" / "import_failures.json").read_text(encoding="utf-8"))) == ["ORPHAN"]
    failure = _failure(tmp_path / "out", "ORPHAN")
    assert failure.startswith("has a structure set") and "but no image series in the folder" in failure


# ---------------------------------------------------------------------- 5. resuming after content changed
def test_rerun_reconverts_a_patient_whose_rtstruct_changed_in_place(tmp_path, dicom):
    series = {}
    for pid in ("P1", "P2"):
        series[pid] = ct = dicom.write_series(tmp_path / "dicom" / pid, _stored(), modality="CT", patient_id=pid)
        dicom.write_rtstruct(tmp_path / "dicom" / pid / "rs.dcm", ct, {"GTV_Mass": [_square(dicom, ct, 2)]})
    first = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)
    p2_label = first["P2"].label
    os.utime(p2_label, (1_000_000, 1_000_000))

    # a corrected contour (slice 5 instead of 2) saved under the same name, same SOPInstanceUID, same size
    path = tmp_path / "dicom" / "P1" / "rs.dcm"
    ds = pydicom.dcmread(path)
    before = (path.stat().st_size, ds.SOPInstanceUID)
    contour = ds.ROIContourSequence[0].ContourSequence[0]
    contour.ContourData = [f"{v:.6f}" for v in _square(dicom, series["P1"], 5).ravel()]
    ds.save_as(path)
    assert (path.stat().st_size, pydicom.dcmread(path).SOPInstanceUID) == before

    second = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)
    assert _mask(second["P1"].label)[5].sum() == 36 and _mask(second["P1"].label)[2].sum() == 0
    assert p2_label.stat().st_mtime == 1_000_000  # P2 unchanged: kept

    # an image slice replaced in place converts that patient again too
    slice_path = next(series["P2"].folder.glob("*.dcm"))
    image = pydicom.dcmread(slice_path)
    image.PixelData = (np.frombuffer(image.PixelData, np.int16) + 1).astype(np.int16).tobytes()
    image.save_as(slice_path)
    os.utime(slice_path, ns=(slice_path.stat().st_atime_ns, slice_path.stat().st_mtime_ns + 10**9))
    import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)
    assert p2_label.stat().st_mtime != 1_000_000


def test_patient_failing_on_rerun_leaves_no_stale_mask(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom" / "P1", _stored(), modality="CT", patient_id="P1")
    path = dicom.write_rtstruct(tmp_path / "dicom" / "P1" / "rs.dcm", ct, {"GTV_Mass": [_square(dicom, ct, 2)]})
    _good_patient(dicom, tmp_path / "dicom")
    first = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)
    assert first["P1"].label.is_file()

    ds = pydicom.dcmread(path)
    ds.StructureSetROISequence[0].ROIName = "Skin"  # the tumour contour removed in the new export
    ds.save_as(path)
    outcome = import_dicom_cohort(tmp_path / "dicom", tmp_path / "out", show_progress=False).outcome

    assert outcome.exit_code == 1 and "no ROI named 'GTV_Mass'" in outcome.failures["P1"]
    assert not first["P1"].label.exists() and not first["P1"].images["CT"].exists()
    assert not (tmp_path / "out" / "cases" / "P1.json").exists()
    assert Manifest.load(tmp_path / "out" / "manifest.csv").case_ids == ["GOOD"]


# ---------------------------------------------------------------------- 6. slice gap message, exit status
def test_slice_gap_message_leads_with_the_cause_and_partial_import_exits_1(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom" / "gap", _stored(), modality="CT", patient_id="GAP")
    next(p for p in ct.folder.glob("*.dcm") if p.stem == ct.sop_uids[4][-12:]).unlink()
    _good_patient(dicom, tmp_path / "dicom")

    result = _cli(str(tmp_path / "dicom"), str(tmp_path / "out"))

    assert result.exit_code == 1, result.output
    failure = _failure(tmp_path / "out", "GAP")
    assert failure.startswith("series '")
    assert "has uneven slice steps" in failure and "adjust the channel map" not in failure
    assert failure.index("uneven slice steps") < failure.index("channel map")
    assert "check that the whole series was exported" in failure
