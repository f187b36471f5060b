"""DICOM Segmentation objects (SEG) of predicted masks, so that PACS viewers show them over their source series.

A SEG is written with highdicom (``highdicom.seg.Segmentation``) from the source series' own headers: it
belongs to the source's patient and study, references the source series and, frame by frame, the source
image each frame was derived from, and copies the source's plane positions and orientation. Coding:

- one segment per foreground label of the plan (segment numbers 1, 2, ... in the order of the label values);
- a tumour label (its name mentions tumour/tumor, GTV, neoplasm, sarcoma, mass or lesion) is coded with
  SNOMED CT as category *Morphologically Abnormal Structure* (49755003) and type *Neoplasm* (108369006), the
  pair DICOM's CID 7150/7151 and the viewers (OHIF, 3D Slicer) use for tumours; other labels as *Tissue*
  (85756007) with the plan's label name as segment label;
- the segmentation type is BINARY, with one frame per source slice and segment, empty frames kept, so that
  the frames line up one to one with the source slices;
- algorithm identification: name ``sarcomakit``, its version, family *Artificial Intelligence* (DCM 123110),
  and the model's run, folds and checkpoint as parameters; the device serial number carries the model key
  (:meth:`~sarcomakit.inference.predictor.Predictor.output_key`), which identifies the exact checkpoints;
- content qualification RESEARCH: sarcomakit is research software, not a cleared medical device.

Exported series often lack type-2 patient and study attributes (an anonymiser drops them); highdicom
needs them present, so missing ones are added empty to the in-memory copies of the headers (the source files
are only read).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from sarcomakit import __version__
from sarcomakit.core.io.atomic import atomic_path

TUMOUR_NAME = re.compile(r"tumou?r|gtv|neoplasm|sarcoma|mass|lesion", re.IGNORECASE)
# type-2 attributes highdicom copies from the first source image (absent in many anonymised exports)
TYPE_2_ATTRIBUTES = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                     "StudyDate", "StudyTime", "ReferringPhysicianName")
SERIES_NUMBER_OFFSET = 1000  # the SEG series is numbered after its source: viewers list it beside it


def segment_codes(label_name: str) -> tuple[Code, Code]:
    """The SNOMED CT (category, type) of a plan label: Neoplasm for a tumour label, Tissue otherwise."""
    if TUMOUR_NAME.search(label_name):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    return codes.SCT.Tissue, codes.SCT.Tissue


def algorithm_identification(parameters: Mapping[str, str] | None = None) -> hd.AlgorithmIdentificationSequence:
    """sarcomakit and its version as the segmenting algorithm, with the model's parameters."""
    return hd.AlgorithmIdentificationSequence(name="sarcomakit", family=codes.cid7162.ArtificialIntelligence,
                                              version=__version__, parameters=dict(parameters or {}) or None)


def read_source_headers(files: Sequence[str | Path]) -> list[pydicom.Dataset]:
    """The source images' headers (no pixel data), with missing type-2 patient/study attributes added empty."""
    headers: list[pydicom.Dataset] = []
    for file in files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        for keyword in TYPE_2_ATTRIBUTES:
            if keyword not in ds:
                setattr(ds, keyword, "")
        headers.append(ds)
    return headers


def write_dicom_seg(mask: np.ndarray, source_files: Sequence[str | Path], labels: Mapping[str, int],
                    path: str | Path, *, parameters: Mapping[str, str] | None = None, model_key: str = "") -> Path:
    """Write ``mask`` as a DICOM SEG over the single-frame source slices ``source_files``.

    Args:
        mask: (z, y, x) label values; slice ``k`` lies on ``source_files[k]`` (same rows and columns).
        source_files: the source series' files, in the mask's slice order.
        labels: the plan's label name -> value (0 is background and gets no segment).
        path: the SEG file to write (atomically).
        parameters: what made the mask (run, folds, checkpoint), stored in the algorithm identification.
        model_key: identifies the model's checkpoints; stored as the device serial number.

    Raises:
        ValueError: the mask does not have one slice per source file, or not their rows and columns.
    """
    sources = read_source_headers(source_files)
    if mask.ndim != 3 or mask.shape[0] != len(sources) or \
            any((int(ds.Rows), int(ds.Columns)) != mask.shape[1:] for ds in sources):
        raise ValueError(f"mask of shape {mask.shape} does not match {len(sources)} source slices")
    foreground = sorted((value, name) for name, value in labels.items() if value > 0)
    algorithm = algorithm_identification(parameters)
    segment_map = np.zeros(mask.shape, dtype=np.uint8 if len(foreground) < 256 else np.uint16)
    descriptions = []
    for number, (value, name) in enumerate(foreground, start=1):
        segment_map[mask == value] = number
        category, kind = segment_codes(name)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm))
    source_number = sources[0].get("SeriesNumber")
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=segment_map, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER_OFFSET + (int(source_number) if source_number not in (None, "") else 0),
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer="sarcomakit",
        manufacturer_model_name="sarcomakit", software_versions=__version__,
        device_serial_number=model_key[:64] or "unknown", content_label="SARCOMAKIT",
        content_description="Tumour segmentation by sarcomakit", series_description="sarcomakit segmentation",
        content_qualification=hd.ContentQualificationValues.RESEARCH, omit_empty_frames=False)
    target = Path(path)
    with atomic_path(target) as tmp:
        seg.save_as(tmp)
    return target
