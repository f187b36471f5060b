"""Read DICOM RT Structure Sets and rasterise a named ROI onto an image grid.

Written by hand on pydicom and scikit-image rather than with rt-utils, which pulls in OpenCV with
its GUI libraries (and a second copy of numpy's ecosystem) for a task this small.

ROI names: the name given is matched exactly first (spaces trimmed); only when no ROI has exactly
that name is a single case-insensitive match accepted. Several ROIs matching (``gtv-1`` and ``GTV-1``
for ``Gtv-1``, or one name used twice) are refused and listed: picking one would be a guess.

Rasterisation: every closed planar contour (``ContourData``, patient coordinates in mm) is mapped
to continuous voxel indices of the reference grid,

    index = (D^-1 (p - origin)) / spacing          (D: direction cosines as columns)

and filled on its slice with :func:`skimage.draw.polygon`, which sets the voxels whose centres lie
inside the polygon. Contours of one ROI on the same plane are combined by XOR, so that an inner
contour cuts a hole (the DICOM convention for rings), while disjoint contours add up.

A mask is only returned when the contours fit the grid; otherwise :class:`UserInputError` says why:

- **On the grid's planes.** A contour's plane (the mean slice index of its points) must lie within
  ``ON_PLANE_TOLERANCE`` of a slice step from a slice's centre plane, and its points must not spread
  over more than ``MAX_OFF_PLANE_SLICES`` slices. Contours drawn on another reconstruction (3 mm
  contours on a 6 mm series) fail here instead of being moved to the nearest slice.
- **One plane per slice.** Contours that fall on one slice must lie on one plane (within
  ``SAME_PLANE_TOLERANCE_MM``) before they are XOR-ed: contours of different planes come from a
  finer grid, and XOR-ing them cuts rings and holes into the tumour.
- **Every slice between contours** (``contiguous=True``, used when the grid is not the series the
  RTSTRUCT names): when adjacent contour planes are all at least two slices apart, the contours come
  from a coarser grid and the mask would be striped.
- **Inside the series.** Contours wholly outside it (beyond its first or last slice, or its field of
  view: dropped) or reaching past its field of view (clipped) make a partial mask: refused unless
  ``allow_partial``, and counted. A mask with no contour inside the series is always refused.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom import uid as dicom_uid
from skimage.draw import polygon as fill_polygon

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry, array_to_image

log = logging.getLogger("sarcomakit")

# A contour whose points spread over more than this many slices is not drawn on a slice plane.
MAX_OFF_PLANE_SLICES = 0.5
# A contour's plane may lie this fraction of a slice step from the nearest slice's centre plane
# (coordinate rounding in exports is far smaller; another reconstruction's planes are further off).
ON_PLANE_TOLERANCE = 0.2
# Contours closer than this (mm, along the slice normal) are on one plane: below any real slice step.
SAME_PLANE_TOLERANCE_MM = 0.1
# Modality of the images a structure set was drawn on, from the SOP class its references name.
MODALITY_OF_SOP_CLASS: dict[str, str] = {
    dicom_uid.CTImageStorage: "CT", dicom_uid.EnhancedCTImageStorage: "CT",
    dicom_uid.MRImageStorage: "MR", dicom_uid.EnhancedMRImageStorage: "MR",
    dicom_uid.PositronEmissionTomographyImageStorage: "PT", dicom_uid.EnhancedPETImageStorage: "PT",
}


@dataclass
class StructureSet:
    """What an RTSTRUCT file says about itself: who, which images it refers to, and its ROIs.

    ``sop_uid`` and ``digest`` (SHA-256 of the file) identify its content, so that a structure set
    corrected and saved under the same name is recognised as new.
    """

    path: Path
    patient_id: str
    study_uid: str
    frame_of_reference_uids: set[str]
    referenced_series_uids: list[str]
    referenced_sop_uids: set[str]
    rois: dict[int, str] = field(default_factory=dict)  # ROINumber -> ROIName
    sop_uid: str = ""
    digest: str = ""
    referenced_modalities: set[str] = field(default_factory=set)  # modalities of the images referenced

    def match_roi(self, name: str) -> tuple[int, str] | None:
        """``(ROINumber, ROIName)`` of the ROI ``name`` designates, or None when no ROI has that name.

        The exact name (spaces trimmed) wins; without one, a single case-insensitive match is used.

        Raises:
            UserInputError: several ROIs have the exact name, or several match ignoring case and none
                exactly; the message lists them.
        """
        wanted = name.strip()
        exact = [(n, r) for n, r in self.rois.items() if r.strip() == wanted]
        folded = [(n, r) for n, r in self.rois.items() if r.strip().casefold() == wanted.casefold()]
        matches = exact or folded
        if len(matches) > 1:
            listed = ", ".join(f"'{r}' (ROI number {n})" for n, r in matches)
            how = "exactly" if exact else "when case is ignored, and none exactly"
            raise UserInputError(f"several ROIs match '{name}' {how}: {listed}; refusing to guess which is the "
                                 "tumour.", path=self.path,
                                 fix="pass the ROI name exactly as written (--roi is case-sensitive when names "
                                 "differ only in case), or rename the duplicate ROIs in the planning system.")
        return matches[0] if matches else None

    def roi_number(self, name: str) -> int:
        """The ROINumber of the ROI ``name`` designates (see :meth:`match_roi`).

        Raises:
            UserInputError: no such ROI (the ROI names present are listed), or several match.
        """
        match = self.match_roi(name)
        if match is None:
            available = ", ".join(sorted(self.rois.values())) or "none"
            raise UserInputError(f"has no ROI named '{name}' (available: {available}).", path=self.path,
                                 fix="pass the ROI name to use with --roi.")
        return match[0]

    def has_roi(self, name: str) -> bool:
        """True when an ROI is called ``name`` (see :meth:`match_roi`, whose ambiguity error propagates)."""
        return self.match_roi(name) is not None


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
    sop_classes: set[str] = set()
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
                    sop_classes.add(str(getattr(image, "ReferencedSOPClassUID", "")))
    for roi_contour in getattr(ds, "ROIContourSequence", []):
        for contour in getattr(roi_contour, "ContourSequence", []):
            for image in getattr(contour, "ContourImageSequence", []):
                sops.add(str(image.ReferencedSOPInstanceUID))
                sop_classes.add(str(getattr(image, "ReferencedSOPClassUID", "")))
    rois = {int(item.ROINumber): str(getattr(item, "ROIName", "")) for item in
            getattr(ds, "StructureSetROISequence", [])}
    for item in getattr(ds, "StructureSetROISequence", []):
        if "ReferencedFrameOfReferenceUID" in item:
            frames.add(str(item.ReferencedFrameOfReferenceUID))
    return StructureSet(path=p, patient_id=str(getattr(ds, "PatientID", "")),
                        study_uid=str(getattr(ds, "StudyInstanceUID", "")), frame_of_reference_uids=frames,
                        referenced_series_uids=series, referenced_sop_uids=sops, rois=rois,
                        sop_uid=str(getattr(ds, "SOPInstanceUID", "")),
                        digest=hashlib.sha256(p.read_bytes()).hexdigest(),
                        referenced_modalities={MODALITY_OF_SOP_CLASS[c] for c in sop_classes
                                               if c in MODALITY_OF_SOP_CLASS})


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


@dataclass
class ContourMask:
    """ROI contours filled on a grid, and what of them had to be left out."""

    mask: np.ndarray  # (z, y, x) bool
    n_contours: int
    dropped: int = 0  # contours wholly outside the grid (beyond its end slices or its field of view): not drawn
    clipped: int = 0  # contours reaching past the in-plane field of view: drawn cut
    clipped_voxels: int = 0  # voxels of the clipped contours that lie outside the grid


def _fill(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, int]:
    """Voxels (row, column) inside a polygon and within ``shape``, and how many fell outside ``shape``.

    skimage clips polygons to the image silently (at index 0 even without ``shape``), so the polygon
    is shifted by whole voxels (which moves no voxel centre across its edges) to see what lies outside.
    """
    row_shift = min(0, int(np.floor(rows.min())))
    col_shift = min(0, int(np.floor(cols.min())))
    rr, cc = fill_polygon(rows - row_shift, cols - col_shift)
    rr, cc = rr + row_shift, cc + col_shift
    inside = (rr >= 0) & (rr < shape[0]) & (cc >= 0) & (cc < shape[1])
    return rr[inside], cc[inside], int((~inside).sum())


def _place_on_slices(contours: list[np.ndarray], geometry: Geometry,
                     where: Path | None) -> list[tuple[int, float, np.ndarray]]:
    """(slice, plane height in slices, voxel indices) of each contour, after the plane checks.

    Raises:
        UserInputError: a contour is not parallel to the slices, lies between slice planes, or shares
            a slice with a contour of another plane.
    """
    step = float(geometry.spacing[2])
    placed: list[tuple[int, float, np.ndarray]] = []
    off_plane: list[float] = []
    for points in contours:
        index = physical_to_index(points, geometry)
        z = index[:, 2]
        if z.max() - z.min() > MAX_OFF_PLANE_SLICES:
            raise UserInputError(f"a contour spans slices {z.min():.2f}..{z.max():.2f} of the referenced series: "
                                 "it is not drawn on that series' slice planes.", path=where,
                                 fix="rasterise on the series the contours were drawn on (check the "
                                 "RTSTRUCT's referenced series).")
        height = float(z.mean())
        k = int(np.floor(height + 0.5))
        if abs(height - k) > ON_PLANE_TOLERANCE:
            off_plane.append(abs(height - k) * step)
        else:
            placed.append((k, height, index))
    if off_plane:
        raise UserInputError(f"{len(off_plane)} of {len(contours)} contour(s) lie between the slice planes of the "
                             f"series (up to {max(off_plane):.2f} mm from the nearest plane; slice step {step:g} mm, "
                             f"tolerance {ON_PLANE_TOLERANCE * step:.2f} mm): they were drawn on another series' "
                             "slices.", path=where,
                             fix="import together with the series the contours were drawn on (the RTSTRUCT's "
                             "referenced series).")
    heights: dict[int, list[float]] = {}
    for k, height, _ in placed:
        heights.setdefault(k, []).append(height)
    for k, values in sorted(heights.items()):
        if (max(values) - min(values)) * step > SAME_PLANE_TOLERANCE_MM:
            raise UserInputError(f"contours of different planes ({(max(values) - min(values)) * step:.2f} mm apart) "
                                 f"fall on slice {k}: they were drawn on a finer series, and combining them "
                                 "would cut holes into the mask.", path=where,
                                 fix="import together with the series the contours were drawn on (the RTSTRUCT's "
                                 "referenced series).")
    return placed


def rasterise_contours(contours: list[np.ndarray], geometry: Geometry, *, where: Path | None = None,
                       allow_partial: bool = False, contiguous: bool = False) -> ContourMask:
    """Fill planar contours into a (z, y, x) boolean mask on ``geometry`` (XOR per plane).

    Args:
        contours: (n, 3) arrays of patient coordinates (mm).
        geometry: the grid to draw on.
        where: the file the contours come from, named in errors.
        allow_partial: draw what lies inside the grid when contours lie beyond its first or last
            slice or past its field of view, instead of refusing; the counts are returned.
        contiguous: refuse contours that skip every other slice or more (see the module docstring).

    Raises:
        UserInputError: contours off the grid's planes, several planes on one slice, a striped
            result (with ``contiguous``), contours outside the grid (without ``allow_partial``), or
            no contour inside the grid at all.
    """
    shape = geometry.array_shape
    placed = _place_on_slices(contours, geometry, where)
    slices = sorted({k for k, _, _ in placed})
    if contiguous and len(slices) > 1 and int(np.diff(slices).min()) >= 2:
        every = int(np.diff(slices).min())
        raise UserInputError(f"adjacent contour planes are at least {every} slices apart ({len(slices)} planes over "
                             f"slices {slices[0]}..{slices[-1]}): the contours were drawn on a coarser series, and the "
                             "mask would be striped.", path=where,
                             fix="import together with the series the contours were drawn on (the RTSTRUCT's "
                             "referenced series).")
    result = ContourMask(mask=np.zeros(shape, dtype=bool), n_contours=len(contours))
    for k, _, index in placed:
        if not 0 <= k < shape[0]:
            result.dropped += 1
            continue
        rows, cols, lost = _fill(index[:, 1], index[:, 0], shape[1:])
        if lost and not rows.size:
            result.dropped += 1
            continue
        if lost:
            result.clipped += 1
            result.clipped_voxels += lost
        plane = np.zeros(shape[1:], dtype=bool)
        plane[rows, cols] = True
        result.mask[k] ^= plane
    if result.dropped == len(placed):
        raise UserInputError(f"none of the {len(placed)} contour(s) lies within the series (its slices 0.."
                             f"{shape[0] - 1} and field of view; contours on slices {slices[0]}..{slices[-1]}).",
                             path=where,
                             fix="check that the RTSTRUCT belongs to this image series.")
    if result.dropped or result.clipped:
        what = _partial_description(result, slices, shape[0])
        if not allow_partial:
            raise UserInputError(f"{what}: the mask would hold only part of the ROI.", path=where,
                                 fix="export the complete image series (every slice, the whole field of view), or "
                                 "accept partial masks (--allow-partial-masks), which the manifest records and "
                                 "'validate' flags.")
        log.warning("%s: partial mask accepted: %s", where, what)
    return result


def _partial_description(result: ContourMask, slices: list[int], n_slices: int) -> str:
    parts = []
    if result.dropped:
        parts.append(f"{result.dropped} of {result.n_contours} contour(s) lie outside the series (beyond its slices "
                     f"0..{n_slices - 1} or its field of view; contours on slices {slices[0]}..{slices[-1]})")
    if result.clipped:
        parts.append(f"{result.clipped} contour(s) reach past the series' field of view ({result.clipped_voxels} "
                     "voxel(s) cut off)")
    return "; ".join(parts)


@dataclass
class RasterisedRoi:
    """An ROI drawn on a grid: the uint8 mask, the ROI's name as the RTSTRUCT spells it, what was left out."""

    image: sitk.Image
    roi_name: str
    n_contours: int
    dropped: int
    clipped: int


def rasterise_structure(structure_file: str | Path, roi_name: str, reference: sitk.Image | Geometry, *,
                        allow_partial: bool = False, contiguous: bool = False) -> RasterisedRoi:
    """Rasterise the ROI ``roi_name`` of an RTSTRUCT file on ``reference``'s grid, with what was left out.

    Args:
        structure_file: the RTSTRUCT file.
        roi_name: the ROI to draw (exact name preferred, see :meth:`StructureSet.match_roi`).
        reference: the image (or its geometry) the contours were drawn on.
        allow_partial: keep a mask whose contours partly lie outside the grid (see
            :func:`rasterise_contours`).
        contiguous: refuse contours from a coarser grid (see the module docstring).

    Raises:
        UserInputError: not an RTSTRUCT, no such ROI (available names listed), several ROIs match,
            no closed contour, or contours that do not fit the grid (see :func:`rasterise_contours`).
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
    filled = rasterise_contours(contours, geometry, where=path, allow_partial=allow_partial, contiguous=contiguous)
    return RasterisedRoi(image=array_to_image(filled.mask.astype(np.uint8), geometry),
                         roi_name=structure.rois[number], n_contours=filled.n_contours, dropped=filled.dropped,
                         clipped=filled.clipped)


def rasterise_roi(structure_file: str | Path, roi_name: str, reference: sitk.Image | Geometry) -> sitk.Image:
    """Rasterise the ROI ``roi_name`` of an RTSTRUCT file into a uint8 mask (1 inside) on ``reference``'s grid.

    Args:
        structure_file: the RTSTRUCT file.
        roi_name: the ROI to draw (exact name preferred, else a unique case-insensitive match).
        reference: the image (or its geometry) the contours were drawn on.

    Raises:
        UserInputError: see :func:`rasterise_structure` (partial masks are refused).
    """
    return rasterise_structure(structure_file, roi_name, reference).image
