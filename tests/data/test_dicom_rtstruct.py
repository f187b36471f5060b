"""DICOM series and RTSTRUCT import on files the tests write with pydicom: geometry, values, masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from matplotlib.path import Path as PolygonPath
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.importers import import_dicom, rasterise_roi
from sarcomakit.data.importers.dicom import scan_dicom_folder, series_to_image
from sarcomakit.data.manifest import Manifest
from sarcomakit.data.validation import validate_manifest

SHAPE = (8, 16, 16)
# An L shape in voxel-index units of (x, y), vertices on half-voxel positions: its voxel set is exact.
L_SHAPE_INDEX = np.array([[2.5, 3.5], [11.5, 3.5], [11.5, 6.5], [6.5, 6.5], [6.5, 12.5], [2.5, 12.5]])


def _stored(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2000, SHAPE).astype(np.int16)


def _read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def _expected_from_shape(series, inside_in_plane, slices: range) -> np.ndarray:
    """Voxels whose centre lies inside a shape given by a test on in-plane (row, column) mm offsets."""
    rel = series.voxel_centres() - series.origin
    u = rel @ series.direction[:, 0]
    v = rel @ series.direction[:, 1]
    k = np.rint(rel @ series.direction[:, 2] / series.spacing[2]).astype(int)
    return inside_in_plane(u, v) & np.isin(k, list(slices))


def _assert_geometry(image: sitk.Image, series) -> None:
    assert image.GetSize() == series.size
    np.testing.assert_allclose(image.GetSpacing(), series.spacing, atol=1e-5)
    np.testing.assert_allclose(image.GetOrigin(), series.origin, atol=1e-4)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), series.direction, atol=1e-5)


def test_axis_aligned_square_prism_exact_voxels_and_hounsfield(tmp_path, dicom):
    stored = _stored()
    ct = dicom.write_series(tmp_path / "dicom" / "ct", stored, modality="CT", intercept=-1024.0)
    # a square whose edges lie half-way between voxel centres: x 3.5..9.5, y 4.5..10.5, slices 2..5
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5], [3.5, 10.5]]) * ct.spacing[:2]
    contours = [dicom.polygon(ct, k, square) for k in range(2, 6)]
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct, {"GTV_Mass": contours, "Skin": contours[:1]})
    (tmp_path / "dicom" / "notes.txt").write_text("not a DICOM file")

    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", roi_name="gtv_mass", show_progress=False)

    assert manifest.channels == ["CT"] and manifest.case_ids == ["STS-001"]
    case = manifest["STS-001"]
    image, values = _read(case.images["CT"])
    label_image, mask = _read(case.label)
    expected = np.zeros(SHAPE, dtype=np.uint8)
    expected[2:6, 5:11, 4:10] = 1
    assert int(mask.sum()) == 6 * 6 * 4
    np.testing.assert_array_equal(mask, expected)
    np.testing.assert_array_equal(values, stored.astype(np.int32) - 1024)  # HU = stored + intercept
    _assert_geometry(image, ct)
    _assert_geometry(label_image, ct)
    assert Manifest.load(tmp_path / "out" / "manifest.csv").case_ids == ["STS-001"]
    assert validate_manifest(manifest).ok


@pytest.mark.parametrize("name, direction_args", [
    ("axial", {}),
    ("flipped feet-first", {"flip": True}),
    ("oblique", {"angle_deg": 30.0, "tilt_deg": 20.0}),
])
def test_orientation_keeps_geometry_and_mask_exact(tmp_path, dicom, name, direction_args):
    direction = dicom.orientation(**direction_args)
    stored = _stored(1)
    mr = dicom.write_series(tmp_path / "dicom", stored, modality="MR", spacing=(0.9, 0.7, 3.0),
                            origin=(12.0, -30.0, 55.0), direction=direction, slope=0.5, intercept=2.0,
                            description="T1 AX")
    polygon_mm = L_SHAPE_INDEX * mr.spacing[:2]
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", mr,
                         {"GTV_Mass": [dicom.polygon(mr, k, polygon_mm) for k in (1, 2, 3, 4)]})

    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", channel_map={"T1": "T1"}, show_progress=False)

    case = manifest.cases[0]
    image, values = _read(case.images["T1"])
    _, mask = _read(case.label)
    _assert_geometry(image, mr)
    np.testing.assert_allclose(values, stored * 0.5 + 2.0, atol=1e-5)
    outline = PolygonPath(polygon_mm)
    expected = _expected_from_shape(
        mr, lambda u, v: outline.contains_points(np.stack([u.ravel(), v.ravel()], 1)).reshape(u.shape), range(1, 5))
    np.testing.assert_array_equal(mask.astype(bool), expected, err_msg=name)


def test_circle_prism_on_oblique_series_matches_analytic_shape(tmp_path, dicom):
    mr = dicom.write_series(tmp_path / "dicom", _stored(2), modality="MR", spacing=(0.5, 0.5, 2.0),
                            direction=dicom.orientation(angle_deg=-25.0, tilt_deg=35.0), description="T2 FS")
    centre, radius = np.array([4.0, 4.2]), 2.6
    theta = np.linspace(0, 2 * np.pi, 128, endpoint=False)
    circle = centre + radius * np.stack([np.cos(theta), np.sin(theta)], 1)
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", mr,
                         {"GTV_Mass": [dicom.polygon(mr, k, circle) for k in range(2, 7)]})
    index = scan_dicom_folder(tmp_path / "dicom")
    reference, _ = series_to_image(next(iter(index.series.values())))

    mask = sitk.GetArrayFromImage(rasterise_roi(tmp_path / "dicom" / "rs.dcm", "GTV_Mass", reference)).astype(bool)

    expected = _expected_from_shape(mr, lambda u, v: (u - centre[0]) ** 2 + (v - centre[1]) ** 2 <= radius**2,
                                    range(2, 7))
    dice = 2 * (mask & expected).sum() / (mask.sum() + expected.sum())
    assert dice > 0.95
    # the area per slice also matches pi r^2 within a voxel ring
    area = mask[3].sum() * 0.25
    assert abs(area - np.pi * radius**2) < 2 * np.pi * radius * 0.5


def test_ring_contours_cut_a_hole(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom", _stored(), modality="CT")
    outer = np.array([[1.5, 1.5], [12.5, 1.5], [12.5, 12.5], [1.5, 12.5]]) * ct.spacing[:2]
    inner = np.array([[4.5, 4.5], [8.5, 4.5], [8.5, 8.5], [4.5, 8.5]]) * ct.spacing[:2]
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct,
                         {"GTV_Mass": [dicom.polygon(ct, 3, outer), dicom.polygon(ct, 3, inner)]})
    reference, _ = series_to_image(next(iter(scan_dicom_folder(tmp_path / "dicom").series.values())))
    mask = sitk.GetArrayFromImage(rasterise_roi(tmp_path / "dicom" / "rs.dcm", "GTV_Mass", reference))
    assert mask[3].sum() == 11 * 11 - 4 * 4
    assert mask[3, 6, 6] == 0 and mask[3, 2, 2] == 1


def test_other_series_resampled_onto_contoured_grid(tmp_path, dicom):
    study, frame = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    t2 = dicom.write_series(tmp_path / "dicom" / "t2", _stored(3), modality="MR", spacing=(1.0, 1.0, 3.0),
                            study_uid=study, frame_uid=frame, description="AX T2 FS")
    dicom.write_series(tmp_path / "dicom" / "ct", np.full((12, 20, 20), 1064, np.int16), modality="CT",
                       spacing=(0.8, 0.8, 2.5), origin=(-2.0, -2.0, 28.0), intercept=-1024.0,
                       study_uid=study, frame_uid=frame, description="CT CHEST")
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5], [3.5, 10.5]])
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", t2, {"GTV_Mass": [dicom.polygon(t2, 3, square)]})

    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", channel_map={"T2FS": "STIR|T2.*FS", "CT": "CT"},
                            show_progress=False)

    case = manifest.cases[0]
    assert manifest.channels == ["T2FS", "CT"]
    assert case.extra["resampled"] == "CT" and "unregistered" not in case.extra
    ct_image, ct_values = _read(case.images["CT"])
    _assert_geometry(ct_image, t2)
    inside = ct_values[1:-1, 1:-1, 1:-1]
    np.testing.assert_allclose(inside, 40.0, atol=1e-3)  # constant 40 HU survives linear resampling
    report = validate_manifest(Manifest.load(manifest.source))
    assert report.ok, report.to_dict()


def test_missing_roi_lists_available_names(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom", _stored(), modality="CT")
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5]])
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct, {"GTV_Edema": [dicom.polygon(ct, 2, square)],
                                                             "Skin": [dicom.polygon(ct, 3, square)]})
    with pytest.raises(UserInputError, match="GTV_Edema, Skin"):
        import_dicom(tmp_path / "dicom", tmp_path / "out", roi_name="GTV_Mass", show_progress=False)


def test_one_bad_patient_does_not_stop_the_others(tmp_path, dicom):
    good = dicom.write_series(tmp_path / "dicom" / "a", _stored(), modality="CT", patient_id="A 01")
    bad = dicom.write_series(tmp_path / "dicom" / "b", _stored(), modality="CT", patient_id="B02")
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5]]) * good.spacing[:2]
    dicom.write_rtstruct(tmp_path / "dicom" / "a" / "rs.dcm", good, {"GTV_Mass": [dicom.polygon(good, 2, square)]})
    dicom.write_rtstruct(tmp_path / "dicom" / "b" / "rs.dcm", bad, {"PTV": [dicom.polygon(bad, 2, square)]})

    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)

    assert manifest.case_ids == ["A_01"]
    assert manifest.cases[0].extra["patient_id"] == "A 01"
    failures = json.loads((tmp_path / "out" / "import_failures.json").read_text(encoding="utf-8"))
    assert list(failures) == ["B02"] and "PTV" in failures["B02"]


def test_missing_slice_is_reported(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom", _stored(), modality="CT")
    removed = [p for p in ct.folder.glob("*.dcm") if p.stem == ct.sop_uids[4][-12:]]
    removed[0].unlink()
    with pytest.raises(UserInputError, match="uneven slice steps"):
        import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)


def test_pet_converted_to_suv(tmp_path, dicom):
    weight, dose, half_life = 70.0, 3.7e8, 6586.2

    def pet_tags(ds):
        ds.Units = "BQML"
        ds.DecayCorrection = "START"
        ds.PatientWeight = weight
        ds.SeriesTime = "110000"
        drug = __import__("pydicom").Dataset()
        drug.RadionuclideTotalDose = dose
        drug.RadionuclideHalfLife = half_life
        drug.RadiopharmaceuticalStartTime = "100000"
        ds.RadiopharmaceuticalInformationSequence = [drug]

    stored = _stored(4)
    pet = dicom.write_series(tmp_path / "dicom", stored, modality="PT", slope=3.0, extra=pet_tags)
    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)

    case = manifest.cases[0]
    _, values = _read(case.images["PET"])
    decayed = dose * 2 ** (-3600 / half_life)
    np.testing.assert_allclose(values, pet.modality_values * weight * 1000 / decayed, rtol=1e-5)
    assert case.extra["pet_units"] == "SUVbw" and case.label is None


def test_cli_import_dicom(tmp_path, dicom):
    ct = dicom.write_series(tmp_path / "dicom", _stored(), modality="CT", description="CT")
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5]]) * ct.spacing[:2]
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct, {"Tumour": [dicom.polygon(ct, 2, square)]})
    runner = CliRunner()
    result = runner.invoke(app, ["import", "dicom", str(tmp_path / "dicom"), str(tmp_path / "out"),
                                 "--roi", "Tumour", "--channel", "CT=modality:CT"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "manifest.csv").is_file()
    result = runner.invoke(app, ["import", "dicom", str(tmp_path / "dicom"), str(tmp_path / "out2"),
                                 "--roi", "GTV_Mass"])
    assert result.exit_code == 2 and "Tumour" in result.output


REAL_SCANS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "radiology"


@pytest.mark.skipif(not (REAL_SCANS / "brain1_image.nrrd").is_file(), reason="real sample scans not present")
def test_real_mri_through_dicom_and_rtstruct_round_trip(tmp_path, dicom):
    """A real brain MRI and its tumour mask, written as DICOM + RTSTRUCT, come back voxel for voxel.

    The scan's direction has a flipped y axis, so the DICOM slice normal (row x column) points to -z:
    the importer must sort slices against the order they were written in.
    """
    from skimage.measure import find_contours

    source = sitk.ReadImage(str(REAL_SCANS / "brain1_image.nrrd"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(REAL_SCANS / "brain1_label.nrrd"))).astype(bool)
    values = sitk.GetArrayFromImage(source)
    direction = np.reshape(source.GetDirection(), (3, 3))
    series = dicom.write_series(tmp_path / "dicom", values, modality="MR", spacing=source.GetSpacing(),
                                origin=source.GetOrigin(), direction=direction, description="T1 AX")
    contours = []
    for k in np.flatnonzero(label.any(axis=(1, 2))):
        for outline in find_contours(np.pad(label[k], 1).astype(float), 0.5):
            yx = outline - 1  # undo the padding
            index = np.column_stack([yx[:, 1], yx[:, 0], np.full(len(yx), k)]) * np.asarray(series.spacing)
            contours.append(series.origin + index @ direction.T)
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", series, {"GTV_Mass": contours})

    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", channel_map={"T1": "T1"}, show_progress=False)

    image, imported = _read(manifest.cases[0].images["T1"])
    _, mask = _read(manifest.cases[0].label)
    np.testing.assert_allclose(np.reshape(image.GetDirection(), (3, 3)), np.diag([1.0, -1.0, -1.0]), atol=1e-6)
    top = np.asarray(source.TransformIndexToPhysicalPoint((0, 0, values.shape[0] - 1)))
    np.testing.assert_allclose(image.GetOrigin(), top, atol=1e-3)
    np.testing.assert_array_equal(imported[::-1], values)
    np.testing.assert_array_equal(mask[::-1].astype(bool), label)
    assert validate_manifest(manifest).ok


@pytest.mark.parametrize("reference", ["contour images", "frame of reference"])
def test_referenced_series_found_without_series_reference(tmp_path, dicom, reference):
    """Older structure sets name only the contoured images, or only the frame of reference."""
    import pydicom

    frame = "1.2.826.0.1.3680043.8.498.7"
    dicom.write_series(tmp_path / "dicom" / "other", _stored(5)[:, :8], modality="MR", description="T1 AX",
                       spacing=(1.0, 1.0, 4.0), frame_uid=frame if reference == "contour images" else None)
    t2 = dicom.write_series(tmp_path / "dicom" / "t2", _stored(6), modality="MR", description="T2 FS AX",
                            frame_uid=frame)
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5], [3.5, 10.5]]) * t2.spacing[:2]
    path = dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", t2, {"GTV_Mass": [dicom.polygon(t2, 2, square)]})
    ds = pydicom.dcmread(path)
    del ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence
    if reference == "contour images":
        image = pydicom.Dataset()
        image.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        image.ReferencedSOPInstanceUID = t2.sop_uids[2]
        ds.ROIContourSequence[0].ContourSequence[0].ContourImageSequence = [image]
    ds.save_as(path)

    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", channel_map={"T1": "T1", "T2FS": "T2 FS"},
                            show_progress=False)

    case = manifest.cases[0]
    assert case.extra["reference_series"] == "T2 FS AX" and case.extra["resampled"] == "T1"
    assert ("unregistered" in case.extra) == (reference == "frame of reference")
    label_image, mask = _read(case.label)
    _assert_geometry(label_image, t2)
    assert int(mask.sum()) == 36 and mask[2].sum() == 36


def test_malformed_files_are_skipped_not_fatal(tmp_path, dicom, caplog):
    import pydicom

    ct = dicom.write_series(tmp_path / "dicom" / "ct", _stored(), modality="CT")
    square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5], [3.5, 10.5]]) * ct.spacing[:2]
    dicom.write_rtstruct(tmp_path / "dicom" / "rs.dcm", ct, {"GTV_Mass": [dicom.polygon(ct, 2, square)]})
    broken = dicom.write_rtstruct(tmp_path / "dicom" / "broken_rs.dcm", ct, {"GTV_Mass": []})
    ds = pydicom.dcmread(broken)
    del ds.StructureSetROISequence[0].ROINumber
    ds.save_as(broken)
    stray = pydicom.dcmread(next(ct.folder.glob("*.dcm")))
    stray.SeriesInstanceUID = "1.2.3.4"
    stray.ImagePositionPatient = [0.0, 1.0]
    stray.save_as(tmp_path / "dicom" / "stray.dcm")

    index = scan_dicom_folder(tmp_path / "dicom")
    assert index.unreadable == 2 and len(index.structures) == 1 and list(index.series) == [ct.series_uid]
    assert "broken_rs.dcm" in caplog.text and "stray.dcm" in caplog.text
    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)
    assert int(_read(manifest.cases[0].label)[1].sum()) == 36


def test_unusable_series_skipped_when_another_matches(tmp_path, dicom):
    """A multi-echo series (two images per position) is skipped for the well-formed series of its channel."""
    study = "1.2.826.0.1.3680043.8.498.9"
    good = dicom.write_series(tmp_path / "dicom" / "good", _stored(7), modality="MR", description="T1 AX",
                              study_uid=study)
    echoes = dicom.write_series(tmp_path / "dicom" / "echoes", np.concatenate([_stored(8)] * 2)[:12], modality="MR",
                                description="T1 multi-echo", study_uid=study, spacing=(0.8, 0.8, 2.5))
    import pydicom

    for path in echoes.folder.glob("*.dcm"):  # fold the 12 slices onto 6 positions: two echoes each
        ds = pydicom.dcmread(path)
        k = int(ds.InstanceNumber) - 1
        ds.ImagePositionPatient = [float(v) for v in echoes.origin + (k % 6) * 2.5 * echoes.direction[:, 2]]
        ds.save_as(path)

    # without contours the channel's series with most images would win: here the malformed one
    manifest = import_dicom(tmp_path / "dicom", tmp_path / "out", channel_map={"T1": "T1"}, show_progress=False)
    image, values = _read(manifest.cases[0].images["T1"])
    _assert_geometry(image, good)
    np.testing.assert_array_equal(values, good.modality_values)

    for path in good.folder.glob("*.dcm"):
        path.unlink()
    with pytest.raises(UserInputError, match="several images at the same slice position"):
        import_dicom(tmp_path / "dicom", tmp_path / "out2", channel_map={"T1": "T1"}, show_progress=False)


def test_rerun_resumes_and_reconverts_on_new_settings(tmp_path, dicom):
    import os

    for pid in ("P1", "P2"):
        ct = dicom.write_series(tmp_path / "dicom" / pid, _stored(), modality="CT", patient_id=pid)
        square = np.array([[3.5, 4.5], [9.5, 4.5], [9.5, 10.5], [3.5, 10.5]]) * ct.spacing[:2]
        dicom.write_rtstruct(tmp_path / "dicom" / pid / "rs.dcm", ct, {"GTV_Mass": [dicom.polygon(ct, 2, square)],
                                                                       "Body": [dicom.polygon(ct, 3, square)]})
    first = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)
    label = first["P1"].label
    os.utime(label, (1_000_000, 1_000_000))
    (tmp_path / "out" / "images" / "P2_CT.nii.gz").unlink()  # as if interrupted while writing P2

    second = import_dicom(tmp_path / "dicom", tmp_path / "out", show_progress=False)
    assert label.stat().st_mtime == 1_000_000  # P1 kept, not converted again
    assert (tmp_path / "out" / "images" / "P2_CT.nii.gz").is_file()
    assert second.case_ids == first.case_ids and second["P1"].extra == first["P1"].extra

    third = import_dicom(tmp_path / "dicom", tmp_path / "out", roi_name="Body", show_progress=False)
    assert label.stat().st_mtime != 1_000_000
    assert int(_read(third["P1"].label)[1].sum()) == 36 and int(_read(third["P1"].label)[1][3].sum()) == 36


def test_suv_factor_fallbacks_and_refusals():
    import pydicom

    from sarcomakit.data.importers.dicom import suv_factor

    ds = pydicom.Dataset()
    ds.Units, ds.PatientWeight, ds.AcquisitionTime = "BQML", 80, "235000"
    drug = pydicom.Dataset()
    drug.RadionuclideTotalDose, drug.RadionuclideHalfLife = 4.0e8, 6586.2
    drug.RadiopharmaceuticalStartDateTime = "20240101231000"
    ds.RadiopharmaceuticalInformationSequence = [drug]
    assert suv_factor(ds) == pytest.approx(80_000 / (4.0e8 * 2 ** (-2400 / 6586.2)))
    ds.AcquisitionTime = "000500"  # acquired after midnight, injected before
    assert suv_factor(ds) == pytest.approx(80_000 / (4.0e8 * 2 ** (-3300 / 6586.2)))
    ds.DecayCorrection = "ADMIN"
    assert suv_factor(ds) == pytest.approx(80_000 / 4.0e8)
    ds.DecayCorrection = "NONE"
    assert suv_factor(ds) is None
    ds.DecayCorrection, ds.Units = "START", "CNTS"
    assert suv_factor(ds) is None
