"""Preprocess cases with a plan, and restore network outputs to the input geometry.

Order of operations (nnU-Net's, with reorientation first):

1. reorient every channel and the label to ``plan.orientation`` (an exact permutation / flip of axes);
2. crop to the bounding box of the voxels nonzero in any channel;
3. normalise each channel (before resampling, so that the nonzero mask still fits the image);
4. resample images and label to the target spacing (see :mod:`sarcomakit.planning.resample`), unless
   the plan leaves resampling to the network (``plan.resample`` false: the case keeps its native grid).

:func:`restore_to_input_geometry` undoes 4, 2 and 1 in one physical-space resampling onto the
original grid; voxels outside the crop get background probability 1.

On disk, a preprocessed case is ``{case_id}_data.npy`` (float32, C x Z x Y x X), ``{case_id}_seg.npy``
(uint8, Z x Y x X, when labelled) and ``{case_id}.json`` (geometries, crop box, properties), the JSON
written last so that its presence marks a complete case. :func:`preprocess_cohort` also records in
``properties["inputs"]`` what the case was made from (the plan's digest and each input file's SHA-256,
see :mod:`sarcomakit.core.provenance`), and reuses a cached case only when both still match: a cache keyed on
the case id alone would serve a case preprocessed with another plan, or from other images, as current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.cohort_runner import CohortResult, run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path, write_json
from sarcomakit.core.io.image import Geometry
from sarcomakit.core.provenance import case_files, file_digests, json_digest
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.planning.fingerprint import check_same_grid, load_case_images, missing_channels
from sarcomakit.planning.normalize import nonzero_mask, normalize
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.resample import (
    bbox_slices,
    cropped_geometry,
    nonzero_bbox,
    orientation_of,
    reorient,
    resample_channels,
    resample_label,
)


@dataclass
class PreprocessedCase:
    """A case on the plan's grid, with what is needed to map results back to the input.

    Attributes:
        case_id: the case's identifier.
        data: (C, Z, Y, X) float32, channels in plan order.
        label: (Z, Y, X) uint8, or None for an unlabelled case.
        geometry: the preprocessed grid (SimpleITK conventions).
        reference: the original input grid.
        crop_bbox: ``[[z0, z1], [y0, y1], [x0, x1]]`` (exclusive stops) of the crop, in the reoriented
            input grid.
        properties: further facts (reoriented grid, shapes, original orientation, normalisation used).
    """

    case_id: str
    data: np.ndarray
    label: np.ndarray | None
    geometry: Geometry
    reference: Geometry
    crop_bbox: list[list[int]]
    properties: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def files(folder: str | Path, case_id: str) -> dict[str, Path]:
        """Paths of a case's files in ``folder``: ``data``, ``seg`` and ``meta``."""
        folder = Path(folder)
        return {"data": folder / f"{case_id}_data.npy", "seg": folder / f"{case_id}_seg.npy",
                "meta": folder / f"{case_id}.json"}

    def save(self, folder: str | Path) -> Path:
        """Write the case's files into ``folder`` (atomically, JSON last); returns the JSON path."""
        paths = self.files(folder, self.case_id)
        _save_npy(paths["data"], self.data.astype(np.float32, copy=False))
        if self.label is not None:
            _save_npy(paths["seg"], self.label.astype(np.uint8, copy=False))
        meta = {"case_id": self.case_id, "has_label": self.label is not None, "shape": list(self.data.shape),
                "geometry": self.geometry.to_dict(), "reference": self.reference.to_dict(),
                "crop_bbox": self.crop_bbox, "properties": self.properties}
        return write_json(paths["meta"], meta)

    @classmethod
    def load(cls, folder: str | Path, case_id: str, mmap: bool = True) -> PreprocessedCase:
        """Read a case written by :meth:`save`; arrays are memory-mapped when ``mmap``.

        Raises:
            UserInputError: the case's files are missing or unreadable.
        """
        paths = cls.files(folder, case_id)
        if not paths["meta"].is_file() or not paths["data"].is_file():
            raise UserInputError(f"preprocessed case {case_id} not found.", path=Path(folder),
                                 fix="run 'sarcomakit preprocess' for this cohort and plan.")
        try:
            meta = json.loads(paths["meta"].read_text(encoding="utf-8"))
            mode: Literal["r"] | None = "r" if mmap else None
            data = np.load(paths["data"], mmap_mode=mode)
            label = np.load(paths["seg"], mmap_mode=mode) if meta.get("has_label") else None
        except (OSError, ValueError, KeyError) as exc:
            raise UserInputError(f"preprocessed case {case_id} cannot be read ({exc}).", path=paths["meta"],
                                 fix="rerun 'sarcomakit preprocess --overwrite'.") from exc
        return cls(case_id=meta["case_id"], data=data, label=label,
                   geometry=Geometry.from_dict(meta["geometry"]),
                   reference=Geometry.from_dict(meta["reference"]), crop_bbox=meta["crop_bbox"],
                   properties=meta.get("properties", {}))

    @classmethod
    def is_saved(cls, folder: str | Path, case_id: str, with_label: bool) -> bool:
        """True when the case's files are all present in ``folder``."""
        paths = cls.files(folder, case_id)
        complete = paths["meta"].is_file() and paths["data"].is_file()
        return complete and (not with_label or paths["seg"].is_file())


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, np.ascontiguousarray(array))


# ---------------------------------------------------------------------------- one case
def preprocess_case(images: dict[str, sitk.Image] | Case, plan: Plan, label: sitk.Image | None = None, *,
                    case_id: str | None = None, allow_missing_channels: bool = False) -> PreprocessedCase:
    """Reorient, crop, normalise and resample one case with ``plan`` (module docstring).

    Args:
        images: one image per plan channel, or a manifest :class:`Case` (its files are read).
        plan: the plan.
        label: the label image when ``images`` is a dict (a Case brings its own).
        case_id: identifier for a dict input (default ``"case"``).
        allow_missing_channels: a missing modality is zero-filled (0 after normalisation) and listed in
            ``properties["missing_channels"]`` instead of being an error; one channel must be present.

    Raises:
        UserInputError: a channel is missing, or the images/label disagree in geometry.
    """
    if isinstance(images, Case):
        missing = missing_channels(images, plan.channels)
        channel_images, label_image, reference = load_case_images(images, plan.channels, plan.orientation,
                                                                  allow_missing=allow_missing_channels)
        case_id = images.case_id
    else:
        missing = [ch for ch in plan.channels if ch not in images]
        if missing and (not allow_missing_channels or len(missing) == len(plan.channels)):
            raise UserInputError(f"no image for channel(s) {', '.join(missing)}.",
                                 fix=f"give one image per plan channel: {', '.join(plan.channels)}.")
        present = {ch: sitk.Cast(images[ch], sitk.sitkFloat32) for ch in plan.channels if ch not in missing}
        check_same_grid(present, label)
        first = next(iter(present.values()))
        raw = [present[ch] if ch in present else first * 0.0 for ch in plan.channels]
        reference = Geometry.of(raw[0])
        channel_images = [reorient(im, plan.orientation) for im in raw]
        label_image = reorient(label, plan.orientation) if label is not None else None
    case_id = case_id or "case"
    reoriented = Geometry.of(channel_images[0])
    data = np.stack([sitk.GetArrayViewFromImage(im) for im in channel_images])
    seg = _label_array(label_image, plan, case_id) if label_image is not None else None

    bbox = nonzero_bbox(data) if plan.crop_to_nonzero else [[0, n] for n in data.shape[1:]]
    crop = bbox_slices(bbox)
    data = data[(slice(None), *crop)]
    seg = seg[crop] if seg is not None else None
    crop_geometry = cropped_geometry(reoriented, bbox)

    mask = None
    if any(n.use_nonzero_mask for n in plan.normalization):
        mask = nonzero_mask(data)
        if seg is not None:
            mask |= seg > 0
    data = normalize(data, plan.normalization, mask)
    for channel in missing:  # zero-filled modality: exactly 0 after normalisation, flagged below
        data[plan.channels.index(channel)] = 0.0

    if plan.resample:
        out, geometry = resample_channels(data, crop_geometry, plan.target_spacing)
        out_label = resample_label(seg, crop_geometry, plan.target_spacing) if seg is not None else None
    else:
        out, geometry, out_label = data, crop_geometry, seg
    properties = {
        "channels": list(plan.channels),
        "missing_channels": missing,
        "original_orientation": orientation_of(reference),
        "reoriented_geometry": reoriented.to_dict(),
        "shape_before_crop": list(reoriented.array_shape),
        "shape_after_crop": [int(n) for n in data.shape[1:]],
        "spacing_before_resampling": list(reoriented.array_spacing),
    }
    return PreprocessedCase(case_id=case_id, data=out, label=out_label, geometry=geometry,
                            reference=reference, crop_bbox=bbox, properties=properties)


def _label_array(label: sitk.Image, plan: Plan, case_id: str) -> np.ndarray:
    """The label's (Z, Y, X) uint8 array; raises UserInputError on values the plan does not declare."""
    array = sitk.GetArrayViewFromImage(label)
    low, high = int(array.min()), int(array.max())
    seg = array.astype(np.uint8)
    declared = set(plan.labels.values())
    if low >= 0 and set(range(low, high + 1)) <= declared:  # the common case, without counting voxels
        return seg
    present = set(np.flatnonzero(np.bincount(seg.ravel()))) if low >= 0 and high <= 255 else {low, high}
    unknown = sorted(int(v) for v in present - declared)
    if unknown:
        raise UserInputError(f"case {case_id}: label values {unknown} are not declared in the plan "
                             f"({plan.labels}).", fix="fix the mask, or declare the labels in the manifest.")
    return seg


# ---------------------------------------------------------------------------- cohort
def preprocess_cohort(manifest: Manifest, plan: Plan, out_dir: str | Path, *, overwrite: bool = False,
                      allow_missing_channels: bool = False,
                      show_progress: bool = True) -> CohortResult[Path]:
    """Preprocess every case of ``manifest`` into ``out_dir`` (see :meth:`PreprocessedCase.save`).

    Resumable: a case whose files are all present and were made from the same plan and input files
    (module docstring) is skipped unless ``overwrite``; any other is preprocessed again. One failing
    case is reported in the result and the others finish. The plan is copied to ``out_dir/plan.json``.

    Raises:
        UserInputError: the manifest's channels differ from the plan's.
    """
    if list(manifest.channels) != list(plan.channels):
        raise UserInputError(f"the manifest's channels {manifest.channels} differ from the plan's "
                             f"{plan.channels}.", path=manifest.source,
                             fix="plan this cohort, or give the cohort the plan was made for.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")

    plan_digest = json_digest(plan.model_dump(mode="json"))
    inputs: dict[str, dict[str, Any]] = {}

    def inputs_of(case: Case, known: dict[str, Any] | None = None) -> dict[str, Any]:
        if case.case_id not in inputs:
            inputs[case.case_id] = {"plan_sha256": plan_digest, "files": case_files(case, plan.channels, known)}
        return inputs[case.case_id]

    def done(case: Case) -> bool:
        if overwrite or not PreprocessedCase.is_saved(out, case.case_id, case.label is not None):
            return False
        recorded = _recorded_inputs(out, case.case_id)
        if not recorded or recorded.get("plan_sha256") != plan_digest:
            return False
        current = inputs_of(case, recorded.get("files"))
        return file_digests(recorded.get("files", {})) == file_digests(current["files"])

    def run(case: Case) -> Path:
        record = inputs_of(case)  # before reading the images: a file changed meanwhile is redone next time
        preprocessed = preprocess_case(case, plan, allow_missing_channels=allow_missing_channels)
        preprocessed.properties["inputs"] = record
        return preprocessed.save(out)

    return run_per_case(manifest.cases, run, name=lambda c: c.case_id, description="preprocess", is_done=done,
                        show_progress=show_progress)


def _recorded_inputs(folder: Path, case_id: str) -> dict[str, Any] | None:
    """``properties["inputs"]`` of a cached case (None when absent or unreadable: the case is redone)."""
    try:
        meta = json.loads(PreprocessedCase.files(folder, case_id)["meta"].read_text(encoding="utf-8"))
        return meta.get("properties", {}).get("inputs")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------------- restore
def restore_to_input_geometry(probabilities: np.ndarray,
                              case: PreprocessedCase | tuple[Geometry, Geometry]) -> np.ndarray:
    """Map class probabilities from the preprocessed grid back onto the original input grid.

    Each class map is resampled in physical space onto the reference grid with linear interpolation
    (one ``sitk.Resample`` of a vector image); this undoes resampling, cropping and reorientation at
    once. Voxels outside the crop get probability 1 for class 0 (background) and 0 for the others.

    Args:
        probabilities: (K, Z, Y, X) on ``case.geometry``; class 0 is background.
        case: the preprocessed case, or ``(geometry, reference)``. With the tuple, the crop region is
            the extent of ``geometry``.

    Returns:
        (K, z, y, x) float32 on the reference grid (``reference.array_shape``).
    """
    if isinstance(case, PreprocessedCase):
        geometry, reference = case.geometry, case.reference
    else:
        geometry, reference = case
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 4 or tuple(probabilities.shape[1:]) != tuple(geometry.array_shape):
        raise ValueError(f"probabilities of shape {probabilities.shape} do not fit the preprocessed grid "
                         f"(K, {', '.join(map(str, geometry.array_shape))})")
    # Background is resampled implicitly as 1 - sum(foreground): linear weights sum to one, so this
    # equals resampling it, at the cost of one map less. Maps go one by one as scalar images (faster).
    target = reference.reference_image()
    out = np.empty((probabilities.shape[0], *reference.array_shape), dtype=np.float32)
    for k in range(1, probabilities.shape[0]):
        image = geometry.apply(sitk.GetImageFromArray(probabilities[k]))
        resampled = sitk.Resample(image, target, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32,
                                  True)  # nearest-neighbour extrapolation at the rim; the crop mask decides
        out[k] = sitk.GetArrayViewFromImage(resampled)
    out[0] = 1.0 - out[1:].sum(axis=0)
    outside = _outside_crop(case, geometry, target)
    if outside is not None:
        out[:, outside] = 0.0
        out[0, outside] = 1.0
    return out


def _outside_crop(case: PreprocessedCase | tuple[Geometry, Geometry], geometry: Geometry,
                  target: sitk.Image) -> np.ndarray | None:
    """Boolean (z, y, x) mask on the reference grid of the voxels outside the crop; None when there are none."""
    if isinstance(case, PreprocessedCase) and "reoriented_geometry" in case.properties:
        reoriented = Geometry.from_dict(case.properties["reoriented_geometry"])
        if [list(b) for b in case.crop_bbox] == [[0, n] for n in reoriented.array_shape]:
            return None
        box = np.zeros(reoriented.array_shape, dtype=np.uint8)
        box[bbox_slices(case.crop_bbox)] = 1
        source = reoriented.apply(sitk.GetImageFromArray(box))
    else:
        source = geometry.apply(sitk.GetImageFromArray(np.ones(geometry.array_shape, dtype=np.uint8)))
    mask = sitk.Resample(source, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(mask) == 0
