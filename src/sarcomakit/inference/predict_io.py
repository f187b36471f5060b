"""Predict every image under an input folder into an output folder laid out as pipelines expect (Grand Challenge).

Challenge platforms and PACS integrations run an algorithm as a container with two mounts: it reads
``/input`` and writes ``/output``. This module follows Grand Challenge's algorithm conventions:

- inputs: images under ``/input/images/<interface-slug>/<uuid>.mha`` (other values as ``/input/*.json``,
  which are ignored here);
- outputs: images under ``/output/images/<interface-slug>/<name>.mha`` and values as ``/output/<name>.json``;
  ``results.json`` is the file Grand Challenge shows on a job's page.

**What is read** (everything under INPUT, recursively; INPUT is only read):

- image files: NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``), MetaImage (``.mha``, ``.mhd``);
- DICOM series: single-frame image files, with or without a ``.dcm`` suffix, grouped by SeriesInstanceUID
  (the DICOM importer's scan, :func:`~sarcomakit.data.importers.dicom.scan_dicom_folder`, and its conversion
  to a volume, :func:`~sarcomakit.data.importers.dicom.series_to_image`, so a series becomes exactly the
  volume ``sarcomakit import dicom`` makes of it); localizers and non-image objects (SEG, RTSTRUCT, ...)
  are left out;
- names starting with ``.`` and every other file (JSON, text) are ignored.

**Channels.** A single-channel model takes every image as one case. A multi-channel model finds each
channel in a folder named after it (``images/T1/``, ``images/t2fs/``: case, hyphens and underscores do not
count), or after the folder name mapped to it (``--channel-folder T1=t1-weighted-mri``, for Grand Challenge's
interface slugs), at any depth; failing that, a file named nnU-Net style, ``{case}_{XXXX}``, is channel ``XXXX`` (the
plan's channel order). Images are matched into cases by their name below the channel folder (the file name
without suffix; for a DICOM series, its folder). When every channel folder holds one image, the images form
one case whatever their names (Grand Challenge gives each input a new UUID). A case whose channel is missing,
or given twice, and an image in no channel's folder, fail with the reason; the other cases go on.

**Case ids** are the image names (the last path component; the whole relative path, ``/`` replaced by
``_``, where two images share a name; a DICOM series directly under INPUT is named by its PatientID).

**What is written** (atomically; earlier files of the same names are replaced: the folder is a job's output,
not a resumable cohort run, for which ``sarcomakit predict`` is the command):

- ``OUTPUT/images/<mask-slug>/<case_id>.mha``: the mask (uint8 label values of the plan) on the grid of
  the case's first channel, for every case whatever its input format. MetaImage is the format Grand
  Challenge accepts, keeps the geometry in double precision and is read by every tool of the field;
- ``OUTPUT/dicom-seg/<case_id>.dcm``: for a case whose first channel is a DICOM series, the mask as a
  DICOM SEG over that series (:mod:`~sarcomakit.inference.dicom_seg`), for PACS viewers;
- ``OUTPUT/results.json``: per case its inputs, outputs, status (``done`` or ``failed`` with the error),
  tumour volume in ml (every foreground voxel; per label as well), and the task's case-level
  predictions (for a multi-task run: grade probabilities, predicted grade, log-risk and risk group, the row
  ``sarcomakit predict`` writes to ``clinical_predictions.csv``). Rewritten after each case.

Prediction is :meth:`~sarcomakit.inference.predictor.Predictor.predict_case`, the one ``sarcomakit predict``
uses, so the masks are the same. Exit status: that of every cohort command
(:attr:`~sarcomakit.core.cohort_runner.CohortResult.exit_code`).
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from rich.console import Console

from sarcomakit import __version__
from sarcomakit.core.cohort_runner import CohortResult, run_per_case
from sarcomakit.core.errors import SarcomakitError, UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.io.image import SUPPORTED_SUFFIXES, is_image_path, write_image
from sarcomakit.data.importers._common import sanitise_case_id, unique_names
from sarcomakit.data.importers.dicom import Series, scan_dicom_folder, series_geometry, series_to_image
from sarcomakit.data.manifest import Case
from sarcomakit.inference.dicom_seg import write_dicom_seg
from sarcomakit.inference.predictor import Prediction, Predictor
from sarcomakit.runs.folder import RunFolder

MASK_SLUG = "tumour-segmentation"
SEG_FOLDER = "dicom-seg"
RESULTS_NAME = "results.json"
RESULTS_FORMAT = "sarcomakit.predict-io/1"
_SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NNUNET_NAME = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")
_FORMATS = {".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage",
            ".mhd": "metaimage"}


@dataclass(frozen=True)
class ImageSource:
    """One input image: an image file, or a DICOM series (``path`` is then the folder holding its files).

    ``tag`` tells apart several series that share one folder (their description, else their UID).
    """

    path: Path
    relative: Path
    series: Series | None = None
    tag: str = ""

    @property
    def folders(self) -> tuple[str, ...]:
        """The folders from INPUT down to the image (for a series, down to and including its own)."""
        parts = self.relative.parts if self.series is not None else self.relative.parent.parts
        return tuple(p for p in parts if p != ".")

    @property
    def leaf(self) -> str:
        """What names the image inside its folder: a file's name without suffix; a series' tag (often empty)."""
        return self.tag if self.series is not None else image_stem(self.path)

    def describe(self) -> dict[str, Any]:
        """The image as ``results.json`` lists it (its path relative to INPUT)."""
        if self.series is None:
            return {"path": self.relative.as_posix(), "format": _FORMATS[_suffix(self.path)]}
        return {"path": self.relative.as_posix(), "format": "dicom", "series_instance_uid": self.series.uid,
                "instances": len(self.series.instances)}


@dataclass
class InputCase:
    """A case to predict: its images by channel, or why it cannot be predicted (``problem`` and ``fix``).

    ``others`` are images found for the case that cannot be used (a channel given twice, no channel).
    """

    case_id: str
    sources: dict[str, ImageSource]
    others: list[ImageSource] = field(default_factory=list)
    problem: str | None = None
    fix: str | None = None


def image_stem(path: Path) -> str:
    """A file's name without its image suffix (``a.nii.gz`` -> ``a``)."""
    return path.name[: len(path.name) - len(_suffix(path))]


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


# ---------------------------------------------------------------------- finding the inputs
def check_input_folder(input_dir: str | Path) -> Path:
    """The input folder, resolved; a missing path or a file is a :class:`UserInputError`."""
    root = Path(input_dir)
    if not root.exists():
        raise UserInputError("input folder not found.", path=root,
                             fix="check the path, or mount the folder (e.g. -v /data/cases:/input:ro).")
    if not root.is_dir():
        raise UserInputError("is a file, not a folder.", path=root,
                             fix="give the folder holding the images (or predict one file with 'sarcomakit "
                                 "predict').")
    return root.resolve()


def find_images(root: Path) -> list[ImageSource]:
    """Every image file and DICOM image series under ``root`` (see the module docstring).

    Raises:
        UserInputError: there is none.
    """
    files = [ImageSource(p, p.relative_to(root)) for p in sorted(root.rglob("*"))
             if p.is_file() and is_image_path(p) and not _hidden(p.relative_to(root))]
    index = scan_dicom_folder(root)
    by_folder: dict[Path, list[Series]] = defaultdict(list)
    for series in index.series.values():
        if not series.is_localizer:
            by_folder[Path(os.path.commonpath([i.path.parent for i in series.instances]))].append(series)
    dicom = []
    for folder, in_folder in sorted(by_folder.items()):
        if _hidden(folder.relative_to(root)):
            continue
        descriptions = Counter(s.description for s in in_folder)
        for series in sorted(in_folder, key=lambda s: s.uid):
            tag = "" if len(in_folder) == 1 else \
                sanitise_case_id(series.description) if series.description and descriptions[series.description] == 1 \
                else series.uid
            dicom.append(ImageSource(folder, folder.relative_to(root), series=series, tag=tag))
    sources = files + dicom
    if not sources:
        others = [p.relative_to(root).as_posix() for p in sorted(root.rglob("*")) if p.is_file()]
        found = f"{len(others)} other file(s), e.g. {', '.join(others[:3])}" if others else "nothing"
        if index.multiframe:
            found += f"; {index.multiframe} enhanced multi-frame DICOM file(s), which are not supported"
        raise UserInputError(f"holds no images (NIfTI, NRRD, MetaImage or a DICOM series); found {found}.",
                             path=root, fix="put the images under the input folder, e.g. "
                                            "images/<name>/<case>.mha or a folder of DICOM files.")
    return sources


def _channel_key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _join(parts: Sequence[str], leaf: str) -> str:
    return "/".join([*parts, leaf] if leaf else parts)


def channel_folder_keys(channels: Sequence[str], channel_folders: Mapping[str, str] | None = None) -> dict[str, str]:
    """Which folder names select which channel: each channel's own name and the folder mapped to it.

    Raises:
        UserInputError: a mapped channel is not one of the model's.
    """
    mapping = dict(channel_folders or {})
    unknown = [ch for ch in mapping if ch not in channels]
    if unknown:
        raise UserInputError(f"--channel-folder names channel(s) {', '.join(unknown)} that the model does not have.",
                             fix=f"map the model's channels: {', '.join(channels)}.")
    keys = {_channel_key(ch): ch for ch in channels}
    keys.update({_channel_key(folder): ch for ch, folder in mapping.items()})
    return keys


def _assign_channel(source: ImageSource, channels: Sequence[str], keys: Mapping[str, str]) -> tuple[str, str] | None:
    """(channel, name of the image below the channel's folder), or None when the image names no channel."""
    folders = source.folders
    for depth in range(len(folders) - 1, -1, -1):
        channel = keys.get(_channel_key(folders[depth]))
        if channel is not None:
            return channel, _join(folders[depth + 1:], source.leaf)
    match = _NNUNET_NAME.match(source.leaf) if source.series is None else None
    if match and int(match["index"]) < len(channels):
        return channels[int(match["index"])], _join(folders, match["case"])
    return None


def group_cases(sources: Sequence[ImageSource], channels: Sequence[str], root: Path, *,
                allow_missing: bool = False, channel_folders: Mapping[str, str] | None = None) -> list[InputCase]:
    """The cases of the images found, for a model with ``channels`` (rules in the module docstring).

    ``channel_folders`` maps a channel to a folder name that holds it besides its own name (a Grand Challenge
    interface slug such as ``t1-weighted-mri``); ``allow_missing`` accepts cases with some channels missing.
    """
    keys = channel_folder_keys(channels, channel_folders)
    if len(channels) == 1:
        return _named_cases([(_join(s.folders, s.leaf), {channels[0]: [s]}, []) for s in sources], root,
                            channels, allow_missing)
    assigned: dict[str, list[tuple[str, ImageSource]]] = {ch: [] for ch in channels}
    unassigned = []
    for source in sources:
        found = _assign_channel(source, channels, keys)
        if found is None:
            unassigned.append(source)
        else:
            assigned[found[0]].append((found[1], source))
    groups: dict[str, dict[str, list[ImageSource]]] = defaultdict(lambda: defaultdict(list))
    present = [ch for ch in channels if assigned[ch]]
    if present and all(len(assigned[ch]) == 1 for ch in present):
        name = assigned[present[0]][0][0]  # one image per channel: one case, named after its first channel
        for ch in present:
            groups[name][ch].append(assigned[ch][0][1])
    else:
        for ch in present:
            for name, source in assigned[ch]:
                groups[name][ch].append(source)
    named: list[tuple[str, dict[str, list[ImageSource]], list[ImageSource]]] = \
        [(name, dict(by_channel), []) for name, by_channel in groups.items()]
    named += [(_join(s.folders, s.leaf), {}, [s]) for s in unassigned]
    return _named_cases(named, root, channels, allow_missing)


def _named_cases(named: list[tuple[str, dict[str, list[ImageSource]], list[ImageSource]]], root: Path,
                 channels: Sequence[str], allow_missing: bool) -> list[InputCase]:
    """Cases with ids from their names, each checked for missing, repeated or unassigned images."""
    ids = _case_ids([(name, [*(s for v in by_channel.values() for s in v), *loose])
                     for name, by_channel, loose in named], root)
    cases = []
    for case_id, (_name, by_channel, loose) in zip(ids, named, strict=True):
        case = InputCase(case_id, {ch: v[0] for ch, v in by_channel.items() if len(v) == 1}, others=list(loose))
        repeated = {ch: v for ch, v in by_channel.items() if len(v) > 1}
        missing = [ch for ch in channels if ch not in by_channel]
        if loose:
            case.problem = (f"{loose[0].relative.as_posix()} is in no folder named after a channel of the model "
                            f"({', '.join(channels)}) and not named {{case}}_{{XXXX}}.")
            case.fix = f"put each channel's images in a folder named after it ({', '.join(f'{c}/' for c in channels)})."
        elif repeated:
            case.others = [s for v in repeated.values() for s in v]
            ch, images = next(iter(repeated.items()))
            case.problem = (f"case {case_id} has {len(images)} images for channel {ch} "
                            f"({', '.join(s.relative.as_posix() for s in images)}).")
            case.fix = "keep one image per channel and case (one file format, one series)."
        elif missing and (not allow_missing or len(missing) == len(channels)):
            have = ", ".join(f"{ch}: {s.relative.as_posix()}" for ch, s in case.sources.items())
            case.problem = f"case {case_id} has no image for channel(s) {', '.join(missing)} (found {have})."
            case.fix = (f"put them in folders named {', '.join(f'{c}/' for c in missing)} with the same file name "
                        "as the case's other channels.")
        cases.append(case)
    return sorted(cases, key=lambda c: c.case_id)


def _case_ids(named: list[tuple[str, list[ImageSource]]], root: Path) -> list[str]:
    """Short ids (the last part of each name) where unique, else the whole relative name; repeats suffixed."""
    def fallback(images: list[ImageSource]) -> str:
        series = next((s.series for s in images if s.series is not None), None)
        return series.patient_id if series is not None and series.patient_id.strip() else root.name

    short = [sanitise_case_id(name.rsplit("/", 1)[-1] if name else fallback(images)) for name, images in named]
    counts = Counter(short)
    ids = [s if counts[s] == 1 or not name else sanitise_case_id(name.replace("/", "_"))
           for s, (name, _images) in zip(short, named, strict=True)]
    return unique_names(ids)


# ---------------------------------------------------------------------- the output folder
def prepare_output_folder(output_dir: str | Path, input_root: Path, mask_slug: str) -> Path:
    """Create the output folder and check that it can be written, before any work.

    Raises:
        UserInputError: the slug is not a plain folder name; the output would fall inside INPUT (or INPUT
            inside a folder written to); it is a file; it cannot be created or written.
    """
    if not _SLUG.match(mask_slug):
        raise UserInputError(f"'{mask_slug}' is not a folder name.", fix="give a slug such as tumour-segmentation.")
    out = Path(output_dir)
    resolved = out.resolve()
    written = (resolved / "images" / mask_slug, resolved / SEG_FOLDER)
    if resolved.is_relative_to(input_root) or any(input_root.is_relative_to(w) for w in written):
        raise UserInputError(f"overlaps the input folder {input_root}; predict-io never writes into its input.",
                             path=out, fix="give an output folder outside the input folder.")
    if out.exists() and not out.is_dir():
        raise UserInputError("is a file, not a folder.", path=out, fix="give a folder for the outputs.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(prefix=".sarcomakit-write-test.", dir=out)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UserInputError(f"cannot be written to ({exc.strerror or exc}).", path=out,
                             fix=f"create it writable for user id {os.getuid()} (a container's non-root user needs "
                                 "write access to the mounted output folder).") from exc
    return out


# ---------------------------------------------------------------------- predicting
def predict_io(input_dir: str | Path, output_dir: str | Path, run_dir: str | Path, *,
               folds: Sequence[int] | None = None, checkpoint: str = "best", mirror: bool = False,
               largest_component: bool = False, device: str = "auto", mask_slug: str = MASK_SLUG,
               channel_folders: Mapping[str, str] | None = None,
               console: Console | None = None) -> CohortResult[dict[str, Any]]:
    """Predict every image under ``input_dir`` with the run ``run_dir`` into ``output_dir``.

    Layout, rules and outputs in the module docstring; ``channel_folders`` maps a channel to the folder name
    that holds it when that is not the channel's own name (e.g. ``{"T1": "t1-weighted-mri"}``). Returns each
    case's ``results.json`` entry (by case id) and the failures; a failing case is reported and the others
    are predicted.

    Raises:
        UserInputError: before any work: INPUT missing or holding no image, OUTPUT not writable or
            overlapping INPUT, the run or its folds not found.
    """
    root = check_input_folder(input_dir)
    sources = find_images(root)
    out = prepare_output_folder(output_dir, root, mask_slug)
    predictor = Predictor.from_run(run_dir, folds=folds, checkpoint=checkpoint, device=device, mirror=mirror,
                                   largest_component=largest_component)
    plan = predictor.plan
    cases = group_cases(sources, plan.channels, root, channel_folders=channel_folders,
                        allow_missing=predictor.task.requirements.allow_missing_channels)
    used_folds = sorted(folds) if folds is not None else sorted(RunFolder.open(run_dir).trained_folds(checkpoint))
    key = predictor.output_key()
    model = {"run": str(Path(run_dir).resolve()), "task": predictor.task.name, "folds": used_folds,
             "checkpoint": checkpoint, "channels": list(plan.channels), "labels": dict(plan.labels), "key": key}
    seg_parameters = {"run": Path(run_dir).resolve().name, "folds": ",".join(map(str, used_folds)),
                      "checkpoint": checkpoint}
    entries: dict[str, dict[str, Any]] = {}

    def save_results() -> None:
        listed = [entries[c.case_id] for c in cases if c.case_id in entries]
        write_json(out / RESULTS_NAME, {
            "format": RESULTS_FORMAT, "sarcomakit_version": __version__, "input": str(root),
            "output": str(out.resolve()), "model": model,
            "summary": {status: sum(e["status"] == status for e in listed) for status in ("done", "failed")},
            "cases": listed})

    def one(case: InputCase) -> dict[str, Any]:
        entry: dict[str, Any] = {"case_id": case.case_id, "status": "failed",
                                 "inputs": {ch: s.describe() for ch, s in case.sources.items()}}
        if case.others:
            entry["unused_inputs"] = [s.describe() for s in case.others]
        entries[case.case_id] = entry
        try:
            if case.problem is not None:
                raise UserInputError(case.problem, path=root, fix=case.fix)
            entry.update(_predict_case(predictor, case, out, mask_slug, seg_parameters, key))
            entry["status"] = "done"
        except Exception as exc:
            entry["error"] = str(exc) if isinstance(exc, SarcomakitError) else f"{type(exc).__name__}: {exc}"
            raise
        finally:
            save_results()
        return entry

    return run_per_case(cases, one, name=lambda c: c.case_id, description="predicting", console=console)


def _predict_case(predictor: Predictor, case: InputCase, out: Path, mask_slug: str,
                  seg_parameters: dict[str, str], model_key: str) -> dict[str, Any]:
    """Predict one case, write its mask (and DICOM SEG), and return its outputs, volumes and predictions."""
    with tempfile.TemporaryDirectory(prefix="sarcomakit-predict-io-") as tmp:
        images = {}
        for index, (channel, source) in enumerate(case.sources.items()):
            if source.series is None:
                images[channel] = source.path
            else:  # the importer's volume, written losslessly (MetaImage keeps double-precision geometry)
                volume, _notes = series_to_image(source.series)
                images[channel] = write_image(volume, Path(tmp) / f"channel{index}.mha", compress=False)
        prediction = predictor.predict_case(Case(case_id=case.case_id, images=images))
    mask_file = Path("images") / mask_slug / f"{case.case_id}.mha"
    write_image(prediction.mask, out / mask_file)
    outputs = {"mask": mask_file.as_posix()}
    # the mask lies on the grid of the first of the plan's channels the case has (as the predictor reads them)
    reference = next(case.sources[ch] for ch in predictor.plan.channels if ch in case.sources)
    if reference.series is not None:
        instances, _geometry = series_geometry(reference.series)  # the slice order of the volume, hence the mask
        seg_file = Path(SEG_FOLDER) / f"{case.case_id}.dcm"
        write_dicom_seg(sitk.GetArrayViewFromImage(prediction.mask), [i.path for i in instances],
                        predictor.plan.labels, out / seg_file, parameters=seg_parameters, model_key=model_key)
        outputs["dicom_seg"] = seg_file.as_posix()
    return {"outputs": outputs, **volumes_ml(prediction, predictor.plan.labels),
            "predictions": _json_values({k: v for k, v in prediction.row.items() if k != "case_id"})}


def volumes_ml(prediction: Prediction, labels: dict[str, int]) -> dict[str, Any]:
    """The tumour volume in ml (every foreground voxel) and the volume of each foreground label."""
    mask = sitk.GetArrayViewFromImage(prediction.mask)
    voxel_ml = math.prod(prediction.mask.GetSpacing()) / 1000.0
    counts = np.bincount(mask.ravel(), minlength=max(labels.values(), default=0) + 1)
    return {"tumour_volume_ml": float(counts[1:].sum() * voxel_ml),
            "label_volumes_ml": {name: float(counts[value] * voxel_ml)
                                 for name, value in labels.items() if value > 0}}


def _json_values(row: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON values: numpy scalars as Python numbers, NaN and infinities as null."""
    values: dict[str, Any] = {}
    for key, value in row.items():
        item = value.item() if isinstance(value, np.generic) else value
        values[key] = None if isinstance(item, float) and not math.isfinite(item) else item
    return values
