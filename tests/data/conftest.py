"""Fixtures that write tiny cohorts: NIfTI volumes with a manifest, and DICOM series with RTSTRUCTs."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from sarcomakit.data.manifest import Case, Manifest

SHAPE = (8, 16, 16)  # (z, y, x)
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
SOP_CLASS = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE, "PT": PET_IMAGE_STORAGE}


# ---------------------------------------------------------------------- NIfTI cohorts
def write_volume(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0),
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Path:
    """Write a (z, y, x) array as an image with the given (x, y, z) geometry."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def make_label(shape: Sequence[int] = SHAPE) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[2:6, 4:10, 5:11] = 1
    return label


@pytest.fixture
def nifti_cohort(tmp_path: Path) -> Callable[..., Manifest]:
    """Factory: ``make(n_cases=3, channels=("T1", "T2FS"), clinical=True)`` writes a valid cohort.

    Images are 8x16x16 float32 volumes, labels a box of ones; the manifest is saved as
    ``cohort/manifest.csv`` and returned (with absolute paths).
    """

    def make(n_cases: int = 3, channels: Sequence[str] = ("T1", "T2FS"), clinical: bool = True,
             folder: str = "cohort") -> Manifest:
        root = tmp_path / folder
        rng = np.random.default_rng(0)
        cases = []
        for i in range(n_cases):
            case_id = f"case{i:03d}"
            images = {ch: write_volume(root / "images" / f"{case_id}_{ch}.nii.gz",
                                       rng.normal(100, 10, SHAPE).astype(np.float32)) for ch in channels}
            label = write_volume(root / "labels" / f"{case_id}.nii.gz", make_label())
            fields = {}
            if clinical:
                fields = {"grade": ("low", "intermediate", "high")[i % 3], "survival_time": 100.0 + 50 * i,
                          "event": int(i % 2 == 0), "site": f"centre{i % 2}", "fold": i % 2}
            cases.append(Case(case_id=case_id, images=images, label=label, **fields))
        manifest = Manifest(channels=list(channels), cases=cases)
        manifest.source = manifest.save(root / "manifest.csv")
        return manifest

    return make


# ---------------------------------------------------------------------- DICOM
@dataclass
class WrittenSeries:
    """What a test needs to know about a DICOM series it wrote."""

    folder: Path
    series_uid: str
    study_uid: str
    frame_uid: str
    patient_id: str
    sop_uids: list[str]
    origin: np.ndarray  # position of the first slice along the normal
    direction: np.ndarray  # 3x3, columns = row, column, normal cosines
    spacing: tuple[float, float, float]  # x (column step), y (row step), z (slice step)
    size: tuple[int, int, int]  # x, y, z
    modality_values: np.ndarray  # (z, y, x) values after RescaleSlope/Intercept

    def voxel_centres(self) -> np.ndarray:
        """Physical coordinates (z, y, x, 3) of every voxel centre."""
        nx, ny, nz = self.size
        k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
        index = np.stack([i, j, k], axis=-1) * np.asarray(self.spacing)
        return self.origin + index @ self.direction.T


def orientation(angle_deg: float = 0.0, flip: bool = False, tilt_deg: float = 0.0) -> np.ndarray:
    """Direction cosines (columns: row, column, normal) rotated in-plane by ``angle`` and tilted about x."""
    a, t = np.radians(angle_deg), np.radians(tilt_deg)
    rot_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rot_x = np.array([[1, 0, 0], [0, np.cos(t), -np.sin(t)], [0, np.sin(t), np.cos(t)]])
    base = np.diag([1.0, -1.0, -1.0]) if flip else np.eye(3)  # flip: posterior-to-anterior rows, feet first
    return rot_x @ rot_z @ base


def _base_dataset(path: Path, sop_class: str, sop_uid: str) -> FileDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    return ds


def write_dicom_series(folder: Path, stored: np.ndarray, *, modality: str = "CT", spacing=(0.8, 0.8, 2.5),
                       origin=(-10.0, -20.0, 30.0), direction: np.ndarray | None = None,
                       slope: float = 1.0, intercept: float = 0.0, patient_id: str = "STS-001",
                       study_uid: str | None = None, frame_uid: str | None = None, description: str = "",
                       extra: Callable[[pydicom.Dataset], None] | None = None,
                       seed: int = 0) -> WrittenSeries:
    """Write a (z, y, x) int16 array as single-frame DICOM slices in a shuffled file order.

    Slice k sits at ``origin + k * spacing_z * normal``; file names are random so that only
    ImagePositionPatient can restore the order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    row, col, normal = direction[:, 0], direction[:, 1], direction[:, 2]
    study_uid = study_uid or generate_uid()
    frame_uid = frame_uid or generate_uid()
    series_uid = generate_uid()
    nz, ny, nx = stored.shape
    order = list(range(nz))
    random.Random(seed).shuffle(order)
    sop_uids = [generate_uid() for _ in range(nz)]
    for k in order:
        ds = _base_dataset(folder / f"{sop_uids[k][-12:]}.dcm", SOP_CLASS[modality], sop_uids[k])
        ds.PatientID = patient_id
        ds.PatientName = "Test^Patient"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = modality
        ds.SeriesDescription = description
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin) + k * spacing[2] * normal]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (y), column spacing (x)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = ny, nx
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.PixelData = np.ascontiguousarray(stored[k].astype(np.int16)).tobytes()
        if extra is not None:
            extra(ds)
        ds.save_as(folder / f"{sop_uids[k][-12:]}.dcm", enforce_file_format=True)
    return WrittenSeries(folder=folder, series_uid=series_uid, study_uid=study_uid, frame_uid=frame_uid,
                         patient_id=patient_id, sop_uids=sop_uids, origin=np.asarray(origin, dtype=float),
                         direction=direction, spacing=tuple(float(s) for s in spacing), size=(nx, ny, nz),
                         modality_values=stored.astype(np.float64) * slope + intercept)


def write_rtstruct(path: Path, series: WrittenSeries, rois: dict[str, list[np.ndarray]]) -> Path:
    """Write an RTSTRUCT referring to ``series`` with closed planar contours per ROI name.

    Each contour is an (n, 3) array of patient coordinates (mm).
    """
    sop_uid = generate_uid()
    ds = _base_dataset(path, RTSTRUCT_STORAGE, sop_uid)
    ds.PatientID = series.patient_id
    ds.StudyInstanceUID = series.study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "RTSTRUCT"
    ds.StructureSetLabel = "contours"

    contour_images = DicomSequence()
    for uid in series.sop_uids:
        item = pydicom.Dataset()
        item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        item.ReferencedSOPInstanceUID = uid
        contour_images.append(item)
    ref_series = pydicom.Dataset()
    ref_series.SeriesInstanceUID = series.series_uid
    ref_series.ContourImageSequence = contour_images
    ref_study = pydicom.Dataset()
    ref_study.ReferencedSOPInstanceUID = series.study_uid
    ref_study.RTReferencedSeriesSequence = DicomSequence([ref_series])
    ref_frame = pydicom.Dataset()
    ref_frame.FrameOfReferenceUID = series.frame_uid
    ref_frame.RTReferencedStudySequence = DicomSequence([ref_study])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref_frame])

    roi_items, contour_items = DicomSequence(), DicomSequence()
    for number, (name, contours) in enumerate(rois.items(), start=1):
        roi = pydicom.Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = series.frame_uid
        roi.ROIName = name
        roi_items.append(roi)
        roi_contour = pydicom.Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [255, 0, 0]
        sequence = DicomSequence()
        for points in contours:
            contour = pydicom.Dataset()
            contour.ContourGeometricType = "CLOSED_PLANAR"
            contour.NumberOfContourPoints = len(points)
            contour.ContourData = [f"{v:.6f}" for v in np.asarray(points, dtype=float).ravel()]
            sequence.append(contour)
        roi_contour.ContourSequence = sequence
        contour_items.append(roi_contour)
    ds.StructureSetROISequence = roi_items
    ds.ROIContourSequence = contour_items
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def planar_polygon(series: WrittenSeries, slice_index: int, in_plane_mm: np.ndarray) -> np.ndarray:
    """Patient coordinates of a polygon given in the slice plane's (row, column) mm offsets from the origin."""
    row, col, normal = series.direction[:, 0], series.direction[:, 1], series.direction[:, 2]
    centre = series.origin + slice_index * series.spacing[2] * normal
    return centre + in_plane_mm[:, :1] * row + in_plane_mm[:, 1:2] * col


@pytest.fixture
def dicom() -> SimpleNamespace:
    """DICOM writing helpers: ``write_series``, ``write_rtstruct``, ``polygon``, ``orientation``."""
    return SimpleNamespace(write_series=write_dicom_series, write_rtstruct=write_rtstruct, polygon=planar_polygon,
                           orientation=orientation)


@pytest.fixture
def volume_writer() -> Callable[..., Path]:
    """``write(path, array_zyx, spacing=..., origin=..., direction=...)`` writes one image."""
    return write_volume
