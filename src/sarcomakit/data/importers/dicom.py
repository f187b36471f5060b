"""Import a folder of DICOM studies (image series plus RTSTRUCT contours) as a NIfTI cohort.

Steps, per patient (one case per PatientID, made file-name safe):

1. **Scan** every file with pydicom (headers only, ``stop_before_pixels``), grouping image
   instances by SeriesInstanceUID and collecting RT Structure Sets.
2. **Map series to channels** with ``channel_map`` (channel -> regular expression). A pattern
   matches a series when it equals its Modality (full match, ignoring case) or is found in its
   SeriesDescription; prefix it with ``modality:`` or ``description:`` to test one of the two
   only. The first channel that matches wins. Default: ``CT``, ``PET`` (Modality PT) and ``MR``
   by Modality alone. When several series map to one channel, the contoured series wins, else
   the one with most slices.
3. **Convert** each chosen series to a volume: slices sorted by ImagePositionPatient projected on
   the slice normal (row x column cosines), RescaleSlope/Intercept applied per slice, geometry
   from the DICOM tags (origin = first slice's position, direction = [row, column, normal],
   spacing = PixelSpacing and the slice step). PET in Bq/ml with the dose tags becomes SUV
   (body weight), noted in ``extra["pet_units"]``.
4. **Rasterise** ROI ``roi_name`` (exact name first, else a unique case-insensitive match) of the
   patient's RTSTRUCT on the series it references (RTReferencedSeriesSequence, else the series
   holding its referenced images). When that series is not in the folder, a series of the same
   frame of reference is used instead (a *fallback*, recorded in ``extra["label_series_fallback"]``),
   chosen by :data:`FALLBACK_RULE`; the contours must then lie on its slice planes and cover every
   slice between them, or the patient fails. See :mod:`sarcomakit.data.importers.rtstruct` for the
   checks every mask passes. When several structure sets hold the ROI, one holding it under its
   exact name is preferred, then the one drawn on the earliest channel of ``channel_map``. The
   manifest records the ROI name used (``label_roi``) and the series drawn on (``label_series``,
   its SeriesInstanceUID).
5. **One grid per case**: channels on another grid than the contoured series are resampled onto
   it (linear), listed in ``extra["resampled"]``; channels from another frame of reference (not
   registered to the contoured series) are listed in ``extra["unregistered"]``.

Contours beyond the series (a truncated export) fail the patient unless ``allow_partial_masks``;
then the mask keeps what lies inside and ``extra["label_contours_dropped"]`` (contours wholly
outside the series) or ``extra["label_contours_clipped"]`` (contours cut by its field of view)
record it, which ``sarcomakit validate`` reports as a warning.

Outputs: ``{out_dir}/images/{case}_{channel}.nii.gz``, ``{out_dir}/labels/{case}.nii.gz`` and
``{out_dir}/manifest.csv``; patients that fail (including one that has a structure set but no
images) are listed in ``{out_dir}/import_failures.json``, and their files from an earlier run are
removed. Every file is written atomically; the DICOM folder is only read.
``{out_dir}/cases/{case}.json`` records what each case was made from (the settings, each series'
instances with their file sizes and modification times, each structure set's SOPInstanceUID and
SHA-256), so a rerun (after an interruption, with new patients added, or after a file was replaced
in place) converts only the patients whose inputs or settings changed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut

from sarcomakit.core.cohort_runner import CohortResult, run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.io.image import Geometry, write_image
from sarcomakit.data.importers._common import sanitise_case_id
from sarcomakit.data.importers.rtstruct import StructureSet, rasterise_structure, read_structure_set
from sarcomakit.data.manifest import DEFAULT_LABELS, Case, Manifest

log = logging.getLogger("sarcomakit")

DEFAULT_CHANNEL_MAP: dict[str, str] = {"CT": "modality:CT", "PET": "modality:PT", "MR": "modality:MR"}
NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SEG", "SR", "KO", "PR", "REG", "DOC"}
ORIENTATION_TOL = 1e-4  # cosine units
SLICE_STEP_REL_TOL = 0.01  # relative deviation of a slice step from the median step
SLICE_STEP_ABS_TOL = 0.01  # mm
MANIFEST_NAME = "manifest.csv"
RECORDS_DIR = "cases"  # one JSON per converted patient: what it was made from, to resume
RECORD_FORMAT = 2  # bump when the rules that make a case change, so that earlier records are not reused
FALLBACK_RULE = ("series that convert first; then the modality of the images the RTSTRUCT references (their SOP "
                 "class), else the modality its ROI name names (a word CT, PET/PT or MR/MRI); then most slices; "
                 "then the lowest SeriesInstanceUID")


# ---------------------------------------------------------------------- scanning
@dataclass
class Instance:
    """Header facts of one image file needed to place it in its series."""

    path: Path
    sop_uid: str
    position: np.ndarray  # ImagePositionPatient, mm
    orientation: np.ndarray  # ImageOrientationPatient, 6 cosines
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) as in DICOM
    rows: int
    columns: int
    stamp: tuple[int, int]  # file size and modification time (ns): what the file holds, cheaply


@dataclass
class Series:
    """One image series: its identity, what it shows, and its instances."""

    uid: str
    patient_id: str
    study_uid: str
    modality: str
    description: str
    frame_of_reference: str
    instances: list[Instance] = field(default_factory=list)
    is_localizer: bool = False

    @property
    def sop_uids(self) -> set[str]:
        return {i.sop_uid for i in self.instances}

    @property
    def title(self) -> str:
        """How messages name the series: its description (else its UID) and modality."""
        return f"series '{self.description or self.uid}' ({self.modality})"

    def content_stamp(self) -> str:
        """A digest of its instances' SOPInstanceUIDs, file sizes and modification times."""
        stamps = sorted(f"{i.sop_uid}:{i.stamp[0]}:{i.stamp[1]}" for i in self.instances)
        return hashlib.sha256("\n".join(stamps).encode()).hexdigest()[:16]


@dataclass
class DicomIndex:
    """Everything found in a DICOM folder: image series by UID and structure sets."""

    series: dict[str, Series] = field(default_factory=dict)
    structures: list[StructureSet] = field(default_factory=list)
    unreadable: int = 0
    multiframe: int = 0  # enhanced multi-frame image files, which this importer does not convert

    def patients(self) -> list[str]:
        """PatientIDs with image series or structure sets (one with only a structure set must be reported)."""
        ids = {s.patient_id for s in self.series.values()} | {s.patient_id for s in self.structures}
        return sorted(ids)


def scan_dicom_folder(folder: str | Path) -> DicomIndex:
    """Read the headers of every DICOM file under ``folder`` and group them.

    Files that are not DICOM, or DICOM files with malformed geometry or structure-set tags, are
    skipped and counted in ``unreadable`` (the malformed ones are logged with their path).
    """
    root = Path(folder)
    if not root.is_dir():
        raise UserInputError("is not a folder.", path=root, fix="point at the folder holding the DICOM files.")
    index = DicomIndex()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, AttributeError):
            index.unreadable += 1
            continue
        try:
            _index_dataset(index, path, ds)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as exc:
            index.unreadable += 1
            log.warning("%s: skipped, malformed DICOM header (%s: %s)", path, type(exc).__name__, exc)
    return index


def _index_dataset(index: DicomIndex, path: Path, ds: pydicom.Dataset) -> None:
    modality = str(getattr(ds, "Modality", "")).upper()
    if modality == "RTSTRUCT":
        index.structures.append(read_structure_set(path, ds))
        return
    if modality in NON_IMAGE_MODALITIES:
        return
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        index.multiframe += 1
        return
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "PixelSpacing" not in ds:
        return
    stat = path.stat()
    instance = Instance(path=path, sop_uid=str(getattr(ds, "SOPInstanceUID", "")),
                        position=np.asarray([float(v) for v in ds.ImagePositionPatient][:3]),
                        orientation=np.asarray([float(v) for v in ds.ImageOrientationPatient][:6]),
                        pixel_spacing=(float(ds.PixelSpacing[0]), float(ds.PixelSpacing[1])),
                        rows=int(ds.Rows), columns=int(ds.Columns), stamp=(stat.st_size, stat.st_mtime_ns))
    if instance.position.shape != (3,) or instance.orientation.shape != (6,):
        raise ValueError("ImagePositionPatient/ImageOrientationPatient have too few values")
    uid = str(getattr(ds, "SeriesInstanceUID", ""))
    series = index.series.get(uid)
    if series is None:
        series = Series(uid=uid, patient_id=str(getattr(ds, "PatientID", "")),
                        study_uid=str(getattr(ds, "StudyInstanceUID", "")), modality=modality,
                        description=str(getattr(ds, "SeriesDescription", "")),
                        frame_of_reference=str(getattr(ds, "FrameOfReferenceUID", "")))
        index.series[uid] = series
    series.is_localizer |= "LOCALIZER" in [str(v).upper() for v in getattr(ds, "ImageType", [])]
    series.instances.append(instance)


# ---------------------------------------------------------------------- channel mapping
def match_channel(series: Series, channel_map: Mapping[str, str]) -> str | None:
    """The first channel whose pattern matches the series (see the module docstring), or None."""
    for channel, pattern in channel_map.items():
        scope, _, body = pattern.partition(":") if pattern.lower().startswith(("modality:", "description:")) \
            else ("", "", pattern)
        regex = re.compile(body, re.IGNORECASE)
        by_modality = scope.lower() in ("", "modality") and regex.fullmatch(series.modality) is not None
        by_description = scope.lower() in ("", "description") and regex.search(series.description) is not None
        if by_modality or by_description:
            return channel
    return None


# ---------------------------------------------------------------------- series -> volume
def series_geometry(series: Series) -> tuple[list[Instance], Geometry]:
    """Sort the slices along the normal and derive the volume's geometry from the DICOM tags.

    Raises:
        UserInputError: mixed orientations or matrix sizes, repeated slice positions, uneven slice
            steps (missing slices) or a sheared stack (gantry tilt).
    """
    where = series.instances[0].path.parent
    label = series.title
    first = series.instances[0]
    for inst in series.instances:
        if not np.allclose(inst.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise UserInputError(f"{label} mixes slice orientations.", path=where,
                                 fix="split the series by orientation before importing.")
        if (inst.rows, inst.columns) != (first.rows, first.columns) or \
                not np.allclose(inst.pixel_spacing, first.pixel_spacing, atol=1e-4):
            raise UserInputError(f"{label} mixes matrix sizes or pixel spacings.", path=where,
                                 fix="split the series before importing.")
    row, col = first.orientation[:3], first.orientation[3:]
    normal = np.cross(row, col)
    instances = sorted(series.instances, key=lambda i: float(i.position @ normal))
    heights = np.asarray([i.position @ normal for i in instances])
    steps = np.diff(heights)
    if len(instances) > 1:
        if np.any(steps < SLICE_STEP_ABS_TOL):
            raise UserInputError(f"{label} has several images at the same slice position (echoes, phases or "
                                 "repeated acquisitions in one series).", path=where,
                                 fix="separate the images into one series per echo/phase.")
        step = float(np.median(steps))
        if np.any(np.abs(steps - step) > max(SLICE_STEP_ABS_TOL, SLICE_STEP_REL_TOL * step)):
            raise UserInputError(f"{label} has uneven slice steps ({steps.min():.3f}..{steps.max():.3f} mm): "
                                 "slices are missing or the spacing varies.", path=where,
                                 fix="check that the whole series was exported.")
        offsets = np.asarray([i.position - instances[0].position for i in instances])
        in_plane = offsets - np.outer(offsets @ normal, normal)
        if np.abs(in_plane).max() > max(0.01, 0.05 * min(first.pixel_spacing)):
            raise UserInputError(f"{label} is sheared (slice origins drift in-plane, e.g. CT gantry tilt).",
                                 path=where, fix="resample it to an orthogonal grid first (dcm2niix corrects "
                                 "gantry tilt).")
    else:
        step = 1.0
    direction = np.stack([row, col, normal], axis=1)  # columns: x, y, z axes
    geometry = Geometry(size=(first.columns, first.rows, len(instances)),
                        spacing=(first.pixel_spacing[1], first.pixel_spacing[0], step),
                        origin=tuple(float(v) for v in instances[0].position),
                        direction=tuple(float(v) for v in direction.ravel()))
    return instances, geometry


def _slice_values(path: Path) -> np.ndarray:
    """Modality values of one slice (rows, cols): stored values x RescaleSlope + RescaleIntercept.

    Integer results (slope 1, whole intercept: CT in HU, most MR) stay int32; others are float32.
    """
    ds = pydicom.dcmread(path)
    try:
        stored = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError):
        # A transfer syntax pydicom has no decoder for here; GDCM (inside SimpleITK) decodes it and
        # applies RescaleSlope/Intercept itself.
        return sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))[0]
    if "ModalityLUTSequence" in ds:  # a look-up table instead of a linear rescale (rare)
        return np.asarray(apply_modality_lut(stored, ds), dtype=np.float32)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    if slope == 1.0 and intercept.is_integer():
        return stored.astype(np.int32) + int(intercept)
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def _seconds(value: str) -> float:
    """Seconds since midnight of a DICOM TM value (HHMMSS.FFFFFF)."""
    text = str(value).strip().replace(":", "")
    hours, minutes = int(text[0:2]), int(text[2:4] or 0)
    seconds = float(text[4:] or 0)
    return 3600 * hours + 60 * minutes + seconds


def suv_factor(dataset: pydicom.Dataset) -> float | None:
    """Factor from Bq/ml to body-weight SUV, or None when the tags needed are absent.

    SUVbw = C(Bq/ml) x weight(g) / dose(Bq), where the injected dose is decayed to the time the
    images are decay-corrected to (DecayCorrection START: series time, else acquisition time;
    ADMIN: injection time): dose x 2^(-(t_series - t_injection) / half-life).
    """
    try:
        if str(dataset.Units).upper() != "BQML":
            return None
        weight_g = float(dataset.PatientWeight) * 1000.0
        drug = dataset.RadiopharmaceuticalInformationSequence[0]
        dose = float(drug.RadionuclideTotalDose)
        half_life = float(drug.RadionuclideHalfLife)
        correction = str(getattr(dataset, "DecayCorrection", "START")).upper()
        if correction == "START":
            injected = getattr(drug, "RadiopharmaceuticalStartTime", None) or \
                str(drug.RadiopharmaceuticalStartDateTime)[8:]  # DT: YYYYMMDDHHMMSS...
            started = getattr(dataset, "SeriesTime", None) or dataset.AcquisitionTime
            elapsed = _seconds(started) - _seconds(injected)
            if elapsed < 0:
                elapsed += 24 * 3600  # injection before midnight
            dose *= 2.0 ** (-elapsed / half_life)
        elif correction != "ADMIN":
            return None
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    if weight_g <= 0 or dose <= 0:
        return None
    return weight_g / dose


def series_to_image(series: Series, *, suv: bool = True) -> tuple[sitk.Image, dict[str, str]]:
    """Convert one series to a 3D image with its DICOM geometry.

    Returns:
        The image (int16 or int32 when the values are integers, else float32) and notes about it
        (``pet_units`` for PET).
    """
    instances, geometry = series_geometry(series)
    slices = [_slice_values(i.path) for i in instances]
    if all(np.issubdtype(v.dtype, np.integer) for v in slices):
        volume = np.stack(slices)
        if volume.min() >= np.iinfo(np.int16).min and volume.max() <= np.iinfo(np.int16).max:
            volume = volume.astype(np.int16)
    else:
        volume = np.stack([v.astype(np.float32, copy=False) for v in slices])
    notes: dict[str, str] = {}
    if series.modality == "PT":
        header = pydicom.dcmread(instances[0].path, stop_before_pixels=True)
        factor = suv_factor(header) if suv else None
        if factor is not None:
            volume = volume.astype(np.float32) * np.float32(factor)
            notes["pet_units"] = "SUVbw"
        else:
            notes["pet_units"] = str(getattr(header, "Units", "unknown"))
    image = sitk.GetImageFromArray(volume)
    geometry.apply(image)
    return image, notes


# ---------------------------------------------------------------------- one patient
REFERENCED_SERIES = "referenced series"
REFERENCED_IMAGES = "referenced images"
FRAME_OF_REFERENCE = "frame_of_reference"  # the fallback, as recorded in the manifest


def _roi_name_modality(roi_name: str) -> str | None:
    """The modality an ROI name names as a word (``GTV_PET`` -> PT), or None."""
    words = set(re.split(r"[^A-Z0-9]+", roi_name.upper()))
    for modality, names in (("CT", {"CT"}), ("PT", {"PET", "PT"}), ("MR", {"MR", "MRI"})):
        if words & names:
            return modality
    return None


def _contoured_series(structure: StructureSet, candidates: list[Series], roi_name: str,
                      malformed: Mapping[str, UserInputError]) -> tuple[Series, str] | None:
    """The series the structure set was drawn on, and how it was found; None when none fits.

    The series it names (RTReferencedSeriesSequence), else the one holding images its contours name.
    Without either in the folder, a series of its frame of reference is the fallback, chosen by
    :data:`FALLBACK_RULE` so that the choice never depends on the order files were found in.
    """
    by_uid = {s.uid: s for s in candidates}
    for uid in structure.referenced_series_uids:
        if uid in by_uid:
            return by_uid[uid], REFERENCED_SERIES
    for series in candidates:
        if structure.referenced_sop_uids & series.sop_uids:
            return series, REFERENCED_IMAGES
    same_frame = [s for s in candidates if s.frame_of_reference in structure.frame_of_reference_uids]
    if not same_frame:
        return None
    hinted = next(iter(structure.referenced_modalities)) if len(structure.referenced_modalities) == 1 \
        else _roi_name_modality(roi_name)
    chosen = min(same_frame, key=lambda s: (s.uid in malformed, s.modality != hinted, -len(s.instances), s.uid))
    return chosen, FRAME_OF_REFERENCE


def _geometry_problem(series: Series) -> UserInputError | None:
    """Why the series cannot become one volume (mixed orientations, repeated positions, gaps...), or None."""
    try:
        series_geometry(series)
    except UserInputError as exc:
        return exc
    return None


def _resample_onto(image: sitk.Image, reference: sitk.Image) -> sitk.Image:
    values = sitk.GetArrayViewFromImage(image)
    outside = float(values.min())  # air for CT, background for MR/PET
    return sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), reference, sitk.Transform(), sitk.sitkLinear,
                         outside, sitk.sitkFloat32)


@dataclass
class _Patient:
    case_id: str
    patient_id: str
    series: list[Series]
    structures: list[StructureSet]

    def error(self, cause: UserInputError, context: str = "", fix: str | None = None) -> UserInputError:
        """``cause`` restated for this patient (its PatientID first, then ``context``)."""
        return UserInputError(f"patient {self.patient_id}: {context}{cause.detail}", path=cause.path,
                              fix=fix or cause.fix)


@dataclass
class _Contoured:
    """The structure set chosen for a patient, the series it is drawn on, and how that series was found."""

    structure: StructureSet
    series: Series
    match: str


def _map_channels(patient: _Patient, usable: list[Series], malformed: Mapping[str, UserInputError],
                  channel_map: Mapping[str, str]) -> dict[str, list[Series]]:
    """Convertible series by channel. Raises when none maps, leading with why matching series were unusable."""
    mapped: dict[str, list[Series]] = {}
    skipped: list[UserInputError] = []
    for series in usable:
        channel = match_channel(series, channel_map)
        if channel is not None and series.uid in malformed:
            skipped.append(malformed[series.uid])
        elif channel is not None:
            mapped.setdefault(channel, []).append(series)
    if not mapped and skipped:
        causes = " ".join(problem.detail for problem in skipped)
        raise UserInputError(f"patient {patient.patient_id}: {causes} No other series of the patient matches the "
                             f"channel map {dict(channel_map)}.", path=skipped[0].path, fix=skipped[0].fix)
    if not mapped:
        found = ", ".join(sorted({f"{s.modality} '{s.description}'" for s in patient.series})) or "none"
        raise UserInputError(f"patient {patient.patient_id}: no usable series matches the channel map "
                             f"{dict(channel_map)} (series: {found}).", fix="adjust the channel map.")
    if skipped:
        log.warning("patient %s: series skipped: %s", patient.patient_id, " ".join(p.detail for p in skipped))
    return mapped


def _choose_structure(patient: _Patient, usable: list[Series], malformed: Mapping[str, UserInputError],
                      mapped: Mapping[str, list[Series]], channel_map: Mapping[str, str],
                      roi_name: str) -> _Contoured | None:
    """The structure set holding ``roi_name`` and the series it is drawn on (None without structure sets)."""
    if not patient.structures:
        return None
    with_roi: list[StructureSet] = []
    exact: list[StructureSet] = []
    for structure in patient.structures:
        try:
            match = structure.match_roi(roi_name)
        except UserInputError as exc:
            raise patient.error(exc) from None
        if match is not None:
            with_roi.append(structure)
            if match[1].strip() == roi_name.strip():
                exact.append(structure)
    if not with_roi:
        names = sorted({n for s in patient.structures for n in s.rois.values()})
        raise UserInputError(f"patient {patient.patient_id}: no ROI named '{roi_name}' in its RTSTRUCT "
                             f"(available: {', '.join(names) or 'none'}).", path=patient.structures[0].path,
                             fix="pass the ROI name to use with --roi.")
    channel_order = {s.uid: i for i, ch in enumerate(channel_map) for s in mapped.get(ch, [])}
    options: list[_Contoured] = []
    for candidates in (exact, with_roi):  # structure sets naming the ROI exactly first
        for structure in candidates:
            found = _contoured_series(structure, usable, roi_name, malformed)
            if found is not None:
                options.append(_Contoured(structure, *found))
        if options:
            break
    if not options:
        wanted = with_roi[0]
        refs = ", ".join(wanted.referenced_series_uids) or "none named"
        raise UserInputError(f"patient {patient.patient_id}: the images the RTSTRUCT was drawn on are not in the "
                             f"folder (referenced series: {refs}; no series of its frame of reference either).",
                             path=wanted.path, fix="export the contoured image series together with the RTSTRUCT.")
    chosen = min(options, key=lambda o: channel_order.get(o.series.uid, len(channel_map)))
    if chosen.series.uid in malformed:
        raise patient.error(malformed[chosen.series.uid], "the contoured series cannot be converted: ",
                            fix="repair or re-export the contoured series.")
    if chosen.match == FRAME_OF_REFERENCE:
        log.warning("patient %s: the series the RTSTRUCT references is not in the folder; drawing '%s' on %s "
                    "(%d slices, same frame of reference), chosen by the rule: %s", patient.patient_id, roi_name,
                    chosen.series.title, len(chosen.series.instances), FALLBACK_RULE)
    return chosen


def _rasterise(patient: _Patient, contoured: _Contoured, roi_name: str, reference_image: sitk.Image,
               allow_partial: bool) -> tuple[sitk.Image, dict[str, str]]:
    """The patient's mask on ``reference_image`` and the manifest columns that say how it was made."""
    fallback = contoured.match == FRAME_OF_REFERENCE
    try:
        roi = rasterise_structure(contoured.structure.path, roi_name, reference_image, allow_partial=allow_partial,
                                  contiguous=fallback)
    except UserInputError as exc:
        if not fallback:
            raise patient.error(exc) from None
        refs = ", ".join(contoured.structure.referenced_series_uids) or "not named"
        raise patient.error(exc, f"the series the RTSTRUCT references ({refs}) is not in the folder, and "
                            f"{contoured.series.title} of the same frame of reference does not fit its contours: ",
                            fix="export the series the contours were drawn on together with the RTSTRUCT.") from None
    notes = {"label_roi": roi.roi_name, "label_series": contoured.series.uid}
    if fallback:
        notes["label_series_fallback"] = FRAME_OF_REFERENCE
    if roi.dropped:
        notes["label_contours_dropped"] = str(roi.dropped)
    if roi.clipped:
        notes["label_contours_clipped"] = str(roi.clipped)
    return roi.image, notes


def _import_patient(patient: _Patient, *, out_dir: Path, roi_name: str, channel_map: Mapping[str, str],
                    suv: bool, allow_partial: bool = False) -> Case:
    if not patient.series:
        paths = ", ".join(str(s.path) for s in patient.structures)
        raise UserInputError(f"patient {patient.patient_id}: has a structure set ({paths}) but no image series in "
                             "the folder.", fix="export the contoured image series together with the RTSTRUCT.")
    usable = [s for s in patient.series if not s.is_localizer and len(s.instances) >= 2]
    malformed = {s.uid: problem for s in usable if (problem := _geometry_problem(s)) is not None}
    mapped = _map_channels(patient, usable, malformed, channel_map)
    contoured = _choose_structure(patient, usable, malformed, mapped, channel_map, roi_name)
    labelled = contoured.series if contoured is not None else None

    chosen: dict[str, Series] = {}
    for channel in channel_map:
        if channel in mapped:
            series_list = mapped[channel]
            chosen[channel] = labelled if labelled in series_list else max(series_list, key=lambda s: len(s.instances))

    extra: dict[str, str] = {"patient_id": patient.patient_id} if patient.case_id != patient.patient_id else {}
    images: dict[str, sitk.Image] = {}
    for channel, series in chosen.items():
        images[channel], notes = series_to_image(series, suv=suv)
        extra.update(notes)
    if labelled is not None and labelled not in chosen.values():
        reference_image, _ = series_to_image(labelled, suv=suv)
    else:
        reference_channel = next(ch for ch, s in chosen.items() if labelled is None or s is labelled)
        reference_image = images[reference_channel]
    reference_series = labelled or chosen[next(iter(chosen))]
    reference_geometry = Geometry.of(reference_image)

    resampled, unregistered = [], []
    for channel, series in chosen.items():
        if series.frame_of_reference != reference_series.frame_of_reference:
            unregistered.append(channel)
        if not Geometry.of(images[channel]).matches(reference_geometry):
            images[channel] = _resample_onto(images[channel], reference_image)
            resampled.append(channel)
    if resampled:
        extra["resampled"] = ",".join(resampled)
        extra["reference_series"] = reference_series.description or reference_series.uid
    if unregistered:
        extra["unregistered"] = ",".join(unregistered)
        log.warning("patient %s: channels %s are in another frame of reference than the contoured series; "
                    "resampled by scanner coordinates without registration", patient.patient_id, unregistered)

    # rasterise before writing anything, so that a failing case leaves no files behind
    mask = None
    if contoured is not None:
        mask, notes = _rasterise(patient, contoured, roi_name, reference_image, allow_partial)
        extra.update(notes)
    image_paths: dict[str, Path] = {}
    for channel, image in images.items():
        image_paths[channel] = write_image(image, out_dir / "images" / f"{patient.case_id}_{channel}.nii.gz").resolve()
    label_path = None
    if mask is not None:
        label_path = write_image(mask, out_dir / "labels" / f"{patient.case_id}.nii.gz").resolve()
    return Case(case_id=patient.case_id, images=image_paths, label=label_path, extra=extra)


def _patients(index: DicomIndex) -> list[_Patient]:
    patients = []
    taken: set[str] = set()
    for patient_id in index.patients():
        base = sanitise_case_id(patient_id) if patient_id.strip() else "anonymous"
        case_id, n = base, 1
        while case_id in taken:
            n += 1
            case_id = f"{base}_{n}"
        taken.add(case_id)
        patients.append(_Patient(case_id=case_id, patient_id=patient_id,
                                 series=[s for s in index.series.values() if s.patient_id == patient_id],
                                 structures=[s for s in index.structures if s.patient_id == patient_id]))
    return patients


@dataclass
class DicomImport:
    """What :func:`import_dicom_cohort` produced: the manifest and each patient's outcome.

    ``outcome`` holds the cases converted now, the patients kept from an earlier run (``skipped``) and
    the failures (patient case id -> reason, as in ``import_failures.json``); its ``exit_code`` is the
    command's exit status (1 when any patient failed).
    """

    manifest: Manifest
    outcome: CohortResult[Case]


def import_dicom(dicom_dir: str | Path, out_dir: str | Path, roi_name: str = "GTV_Mass",
                 channel_map: Mapping[str, str] | None = None, *, suv: bool = True,
                 out_manifest: str | Path | None = None, overwrite: bool = False,
                 allow_partial_masks: bool = False, show_progress: bool = True) -> Manifest:
    """Convert a DICOM folder (image series + RTSTRUCT) into NIfTI files and a manifest.

    The manifest of :func:`import_dicom_cohort` (see there for the arguments); failed patients are
    listed in ``{out_dir}/import_failures.json`` and left out.
    """
    return import_dicom_cohort(dicom_dir, out_dir, roi_name, channel_map, suv=suv, out_manifest=out_manifest,
                               overwrite=overwrite, allow_partial_masks=allow_partial_masks,
                               show_progress=show_progress).manifest


def import_dicom_cohort(dicom_dir: str | Path, out_dir: str | Path, roi_name: str = "GTV_Mass",
                        channel_map: Mapping[str, str] | None = None, *, suv: bool = True,
                        out_manifest: str | Path | None = None, overwrite: bool = False,
                        allow_partial_masks: bool = False, show_progress: bool = True) -> DicomImport:
    """Convert a DICOM folder (image series + RTSTRUCT) into NIfTI files and a manifest, per patient.

    Args:
        dicom_dir: folder with the DICOM files of one or more patients (any layout).
        out_dir: where ``images/``, ``labels/`` and ``manifest.csv`` are written.
        roi_name: the RTSTRUCT ROI to rasterise as the label: the ROI with exactly this name, else the
            only one matching it when case is ignored (several such ROIs fail the patient).
        channel_map: channel name -> pattern (see the module docstring), e.g.
            ``{"T1": "T1", "T2FS": "STIR|T2.*FS", "PET": "PT", "CT": "CT"}``; default by Modality.
        suv: convert PET in Bq/ml to body-weight SUV when the dose tags are present.
        out_manifest: where to save the manifest (default ``{out_dir}/manifest.csv``).
        overwrite: convert every patient again, even those an earlier run converted with the same
            inputs and settings (by default those are kept, so an interrupted import resumes).
        allow_partial_masks: keep patients whose contours reach beyond the image series (a truncated
            export) with the part of the mask inside it, recorded in the manifest; by default they fail.
        show_progress: show a progress bar.

    Returns:
        The manifest (one case per patient; channels are those of ``channel_map`` found in at least
        one patient, in the map's order; label values ``background=0, tumour=1``) and the outcome per
        patient.

    Raises:
        UserInputError: no DICOM image series in the folder, or no patient could be imported (the
            reasons listed). Patients that fail while others succeed are reported and skipped.
    """
    root = Path(dicom_dir)
    out = Path(out_dir)
    channel_map = dict(channel_map or DEFAULT_CHANNEL_MAP)
    for channel, pattern in channel_map.items():
        try:
            re.compile(pattern.partition(":")[2] if ":" in pattern else pattern)
        except re.error as exc:
            raise UserInputError(f"channel '{channel}' has an invalid pattern '{pattern}' ({exc}).",
                                 fix="write a Python regular expression.") from exc
    index = scan_dicom_folder(root)
    if index.multiframe:
        log.warning("%s: %d enhanced multi-frame file(s) skipped (not supported; convert them to single-frame "
                    "files, e.g. with dcm2niix or dcmtk's emf2sf)", root, index.multiframe)
    if not index.series:
        raise UserInputError(f"holds no single-frame DICOM image series ({index.unreadable} file(s) were not "
                             f"DICOM, {index.multiframe} enhanced multi-frame file(s) are not supported).",
                             path=root, fix="point at the folder with the exported DICOM studies (convert "
                             "multi-frame objects to single-frame files first).")

    settings = {"roi_name": roi_name, "channel_map": channel_map, "suv": suv,
                "allow_partial_masks": allow_partial_masks}
    patients = _patients(index)
    kept: dict[str, Case] = {}
    if not overwrite:
        for patient in patients:
            case = _load_record(out, patient, settings)
            if case is not None:
                kept[patient.case_id] = case

    def convert(patient: _Patient) -> Case:
        try:
            case = _import_patient(patient, out_dir=out, roi_name=roi_name, channel_map=channel_map, suv=suv,
                                   allow_partial=allow_partial_masks)
        except Exception:
            _discard_earlier_outputs(out, patient)  # no stale mask of a patient that now fails stays behind
            raise
        _save_record(out, patient, settings, case)
        return case

    result = run_per_case(patients, convert, name=lambda p: p.case_id, description="converting DICOM",
                          is_done=lambda p: p.case_id in kept, show_progress=show_progress)
    failures_file = out / "import_failures.json"
    if result.failures:
        result.print_summary()
        write_json(failures_file, result.failures)
    elif failures_file.exists():
        failures_file.unlink()  # from an earlier run whose failures are now fixed
    found = [result.results.get(p.case_id) or kept.get(p.case_id) for p in patients]
    cases = [c for c in found if c is not None]
    if not cases:
        raise UserInputError("no patient could be imported: " + " | ".join(list(result.failures.values())[:3]),
                             path=root, fix="fix the problems listed above.")
    channels = [ch for ch in channel_map if any(ch in c.images for c in cases)]
    manifest = Manifest(channels=channels, cases=cases, labels=dict(DEFAULT_LABELS))
    manifest.source = manifest.save(out_manifest if out_manifest is not None else out / MANIFEST_NAME)
    return DicomImport(manifest=manifest, outcome=result)


# ---------------------------------------------------------------------- resuming
def _inputs_key(patient: _Patient, settings: dict) -> dict:
    """What a converted case depends on: the import settings and the content of its series and structure sets.

    Content, not only names: a structure set corrected and saved under the same file name, or an image
    file replaced in place, changes the key and so converts the patient again.
    """
    return {**settings, "format": RECORD_FORMAT,
            "series": sorted(f"{s.uid}:{len(s.instances)}:{s.content_stamp()}" for s in patient.series),
            "structures": sorted(f"{st.path.resolve()}:{st.sop_uid}:{st.digest}" for st in patient.structures)}


def _record_path(out_dir: Path, patient: _Patient) -> Path:
    return out_dir / RECORDS_DIR / f"{patient.case_id}.json"


def _discard_earlier_outputs(out_dir: Path, patient: _Patient) -> None:
    """Delete the files and the record an earlier run wrote for ``patient`` (only those its record lists)."""
    path = _record_path(out_dir, patient)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    base = out_dir.resolve()
    written = [*dict(record.get("images") or {}).values(), record.get("label")]
    for relative in written:
        target = (base / str(relative)).resolve() if relative else None
        if target is not None and target.is_relative_to(base):
            target.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    log.warning("patient %s: files from an earlier import removed, as the patient now fails", patient.patient_id)


def _save_record(out_dir: Path, patient: _Patient, settings: dict, case: Case) -> None:
    base = out_dir.resolve()
    write_json(_record_path(out_dir, patient), {
        "inputs": _inputs_key(patient, settings),
        "images": {ch: str(p.relative_to(base)) for ch, p in case.images.items()},
        "label": str(case.label.relative_to(base)) if case.label is not None else None,
        "extra": case.extra,
    })


def _load_record(out_dir: Path, patient: _Patient, settings: dict) -> Case | None:
    """The case converted by an earlier run with the same inputs and settings, if its files are all there."""
    path = _record_path(out_dir, patient)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if record.get("inputs") != _inputs_key(patient, settings):
        return None
    base = out_dir.resolve()
    images = {ch: base / rel for ch, rel in record["images"].items()}
    label = base / record["label"] if record.get("label") else None
    if not all(p.is_file() for p in [*images.values(), *([label] if label else [])]):
        return None
    return Case(case_id=patient.case_id, images=images, label=label, extra=dict(record.get("extra", {})))
