"""Read DICOM RT Structure Sets and rasterise a named ROI onto an image grid.

Written by hand on pydicom and scikit-image rather than with rt-utils, which pulls in OpenCV with
its GUI libraries (and a second copy of numpy's ecosystem) for a task this small.

Rasterisation: every closed planar contour (``ContourData``, patient coordinates in mm) is mapped
to continuous voxel indices of the reference grid,

    index = (D^-1 (p - origin)) / spacing          (D: direction cosines as columns)

and filled on its slice with :func:`skimage.draw.polygon`, which sets the voxels whose centres lie
inside the polygon. Contours of one ROI on the same slice are combined by XOR, so that an inner
contour cuts a hole (the DICOM convention for rings), while disjoint contours add up.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from skimage.draw import polygon as fill_polygon

from sarcomakit.errors import UserInputError
from sarcomakit.io.image import Geometry, array_to_image

log = logging.getLogger("sarcomakit")

# A contour whose points spread over more than this many slices is not drawn on a slice plane.
MAX_OFF_PLANE_SLICES = 0.5


@dataclass
class StructureSet:
    """What an RTSTRUCT file says about itself: who, which images it refers to, and its ROIs."""

    path: Path
    patient_id: str
    study_uid: str
    frame_of_reference_uids: set[str]
    referenced_series_uids: list[str]
    referenced_sop_uids: set[str]
    rois: dict[int, str] = field(default_factory=dict)  # ROINumber -> ROIName

    def roi_number(self, name: str) -> int:
        """The ROINumber of the ROI called ``name`` (case-insensitive, spaces trimmed).

        Raises:
            UserInputError: no such ROI; the message lists the ROI names present.
        """
        wanted = name.strip().lower()
        for number, roi_name in self.rois.items():
            if roi_name.strip().lower() == wanted:
                return number
        available = ", ".join(sorted(self.rois.values())) or "none"
        raise UserInputError(f"has no ROI named '{name}' (available: {available}).", path=self.path,
                             fix="pass the ROI name to use with --roi.")

    def has_roi(self, name: str) -> bool:
        return any(n.strip().lower() == name.strip().lower() for n in self.rois.values())


def read_structure_set(path: str | Path, dataset: pydicom.Dataset | None = None) -> StructureSet:
    """Parse the references and ROI names of an RTSTRUCT file.

    Raises:
        UserInputError: the file is not an RT Structure Set.
    """
    p = Path(path)
    ds = dataset if dataset is not None else pydicom.dcmread(p)
    if getattr(ds, "Modality", "") != "RTSTRUCT":
        raise UserInputError("is not an RT Structure Set (Modality is not RTSTRUCT).", path=p,
                             fix="give the RTSTRUCT file that holds the contours.")
    frames: set[str] = set()
    series: list[str] = []
    sops: set[str] = set()
    for ref_frame in getattr(ds, "ReferencedFrameOfReferenceSequence", []):
        if "FrameOfReferenceUID" in ref_frame:
            frames.add(str(ref_frame.FrameOfReferenceUID))
        for study in getattr(ref_frame, "RTReferencedStudySequence", []):
            for ref_series in getattr(study, "RTReferencedSeriesSequence", []):
                uid = str(ref_series.SeriesInstanceUID)
                if uid not in series:
                    series.append(uid)
                for image in getattr(ref_series, "ContourImageSequence", []):
                    sops.add(str(image.ReferencedSOPInstanceUID))
    for roi_contour in getattr(ds, "ROIContourSequence", []):
        for contour in getattr(roi_contour, "ContourSequence", []):
            for image in getattr(contour, "ContourImageSequence", []):
                sops.add(str(image.ReferencedSOPInstanceUID))
    rois = {int(item.ROINumber): str(getattr(item, "ROIName", "")) for item in
            getattr(ds, "StructureSetROISequence", [])}
    for item in getattr(ds, "StructureSetROISequence", []):
        if "ReferencedFrameOfReferenceUID" in item:
            frames.add(str(item.ReferencedFrameOfReferenceUID))
    return StructureSet(path=p, patient_id=str(getattr(ds, "PatientID", "")),
                        study_uid=str(getattr(ds, "StudyInstanceUID", "")), frame_of_reference_uids=frames,
                        referenced_series_uids=series, referenced_sop_uids=sops, rois=rois)


def roi_contours(dataset: pydicom.Dataset, roi_number: int, path: Path | None = None) -> list[np.ndarray]:
    """The closed planar contours of one ROI, each an (n, 3) array of patient coordinates in mm."""
    contours = []
    for roi_contour in getattr(dataset, "ROIContourSequence", []):
        if int(roi_contour.ReferencedROINumber) != roi_number:
            continue
        for contour in getattr(roi_contour, "ContourSequence", []):
            kind = str(getattr(contour, "ContourGeometricType", "CLOSED_PLANAR")).upper()
            points = np.asarray([float(v) for v in contour.ContourData], dtype=np.float64)
            if points.size % 3:
                raise UserInputError(f"ROI {roi_number} has ContourData whose length ({points.size}) is not a "
                                     "multiple of 3.", path=path, fix="re-export the structure set.")
            if kind != "CLOSED_PLANAR" or points.size < 9:
                continue  # points and open lines enclose no volume
            contours.append(points.reshape(-1, 3))
    return contours


def physical_to_index(points: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Continuous (x, y, z) voxel indices of physical points (n, 3) on ``geometry``'s grid."""
    direction = np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3)
    offsets = (points - np.asarray(geometry.origin)).T
    return (np.linalg.solve(direction, offsets).T / np.asarray(geometry.spacing))


def rasterise_contours(contours: list[np.ndarray], geometry: Geometry, *, where: Path | None = None) -> np.ndarray:
    """Fill planar contours into a (z, y, x) boolean mask on ``geometry`` (XOR per slice).

    Raises:
        UserInputError: a contour is not parallel to the grid's slices (drawn on another grid).
    """
    shape = geometry.array_shape
    mask = np.zeros(shape, dtype=bool)
    outside = 0
    for points in contours:
        index = physical_to_index(points, geometry)
        z = index[:, 2]
        if z.max() - z.min() > MAX_OFF_PLANE_SLICES:
            raise UserInputError(f"a contour spans slices {z.min():.2f}..{z.max():.2f} of the referenced series: "
                                 "it is not drawn on that series' slice planes.", path=where,
                                 fix="rasterise on the series the contours were drawn on (check the "
                                 "RTSTRUCT's referenced series).")
        k = int(np.rint(z.mean()))
        if not 0 <= k < shape[0]:
            outside += 1
            continue
        rows, cols = fill_polygon(index[:, 1], index[:, 0], shape=shape[1:])
        plane = np.zeros(shape[1:], dtype=bool)
        plane[rows, cols] = True
        mask[k] ^= plane
    if outside:
        log.warning("%s: %d contour(s) lie outside the referenced series and were skipped", where, outside)
    return mask


def rasterise_roi(structure_file: str | Path, roi_name: str, reference: sitk.Image | Geometry) -> sitk.Image:
    """Rasterise the ROI ``roi_name`` of an RTSTRUCT file into a uint8 mask (1 inside) on ``reference``'s grid.

    Args:
        structure_file: the RTSTRUCT file.
        roi_name: the ROI to draw (case-insensitive).
        reference: the image (or its geometry) the contours were drawn on.

    Raises:
        UserInputError: not an RTSTRUCT, no such ROI (available names listed), or an ROI with no
            closed contour.
    """
    path = Path(structure_file)
    dataset = pydicom.dcmread(path)
    structure = read_structure_set(path, dataset)
    number = structure.roi_number(roi_name)
    contours = roi_contours(dataset, number, path)
    if not contours:
        raise UserInputError(f"ROI '{roi_name}' has no closed planar contour.", path=path,
                             fix="check the structure in the planning system, or choose another ROI.")
    geometry = reference if isinstance(reference, Geometry) else Geometry.of(reference)
    mask = rasterise_contours(contours, geometry, where=path)
    return array_to_image(mask.astype(np.uint8), geometry)
