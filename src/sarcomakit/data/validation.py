"""Check a cohort manifest and report every problem at once, with the fix for each.

:func:`validate_manifest` never stops at the first problem: one unreadable file does not hide
the others. Problems are :class:`ValidationIssue` records with a severity:

- ``error``: the cohort cannot be used as is (training or evaluation would fail or be wrong);
- ``warning``: usable, but probably not what the user meant (an empty mask, a mask an importer
  recorded as partial, a cohort without any observed event, folds given for some cases only).

Geometry is read from the image headers only; voxels are read, one image at a time, only for the
NaN/Inf and label-value checks (through :func:`~sarcomakit.core.io.image.read_image`, which refuses
truncated files and keeps NaN/Inf so that they can be counted here).

Two checks also run outside ``validate``, in every command that reads a case, and live here so that
both say the same thing: :func:`check_case_grid` (channels and label on one grid) and
:func:`check_case_headers` (the same from the headers alone). Duplicate case ids are refused by
:meth:`Manifest.load <sarcomakit.data.manifest.Manifest.load>`.

Example:
    >>> report = validate_manifest(Manifest.load("cohort/manifest.csv"))  # doctest: +SKIP
    >>> report.print()  # doctest: +SKIP
    >>> report.ok  # doctest: +SKIP
    False
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import SimpleITK as sitk
from rich.console import Console
from rich.table import Table

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry, ImageHeader, read_header, read_image
from sarcomakit.data.manifest import GRADES, Case, Manifest

Severity = Literal["error", "warning"]

# Columns in which an importer records that a mask holds only part of its contours (DICOM import
# with --allow-partial-masks), and what the count means.
PARTIAL_LABEL_COLUMNS: dict[str, str] = {
    "label_contours_dropped": "lying outside the images were dropped",
    "label_contours_clipped": "reaching past the images' field of view were cut",
}

@dataclass(frozen=True)
class ValidationIssue:
    """One problem found in a manifest.

    Attributes:
        severity: ``"error"`` or ``"warning"``.
        case_id: the case concerned, or None for a cohort-wide problem.
        path: the file concerned, if any.
        message: what is wrong, with the values involved.
        fix: what to do about it.
        check: a short stable name of the check that found it (e.g. ``"geometry_mismatch"``).
    """

    severity: Severity
    case_id: str | None
    path: Path | None
    message: str
    fix: str
    check: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"severity": self.severity, "check": self.check, "case_id": self.case_id,
                "path": str(self.path) if self.path is not None else None,
                "message": self.message, "fix": self.fix}


@dataclass
class ValidationReport:
    """All problems found in one manifest."""

    issues: list[ValidationIssue] = field(default_factory=list)
    n_cases: int = 0
    source: Path | None = None

    @property
    def errors(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ValidationIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    def checks(self) -> set[str]:
        """Names of the checks that reported something."""
        return {i.check for i in self.issues}

    def summary(self) -> str:
        return (f"{self.n_cases} case(s) checked: {len(self.errors)} error(s), "
                f"{len(self.warnings)} warning(s).")

    def to_dict(self) -> dict[str, Any]:
        return {"manifest": str(self.source) if self.source else None, "ok": self.ok,
                "n_cases": self.n_cases, "n_errors": len(self.errors), "n_warnings": len(self.warnings),
                "issues": [i.to_dict() for i in self.issues]}

    def _shown(self, path: Path) -> str:
        """A path as short as it can be shown: relative to the manifest's folder when inside it."""
        if self.source is not None:
            try:
                return str(path.resolve().relative_to(self.source.parent.resolve()))
            except ValueError:
                pass
        return str(path)

    def print(self, console: Console | None = None) -> None:
        """Print the problems as a table (errors first), then a one-line summary."""
        console = console or Console()
        if self.issues:
            table = Table(show_lines=False, expand=False)
            for column in ("severity", "case", "problem", "fix"):
                table.add_column(column, overflow="fold")
            ordered = sorted(self.issues, key=lambda i: (i.severity != "error",))
            for issue in ordered:
                colour = "red" if issue.severity == "error" else "yellow"
                problem = issue.message if issue.path is None else f"{self._shown(issue.path)}: {issue.message}"
                table.add_row(f"[{colour}]{issue.severity}[/{colour}]", issue.case_id or "(cohort)",
                              problem, issue.fix)
            console.print(table)
        style = "green" if self.ok and not self.warnings else ("yellow" if self.ok else "red")
        console.print(f"[{style}]{self.summary()}[/{style}]", highlight=False)


class _Collector:
    """Accumulates issues; a small helper so each check reads as one line per finding."""

    def __init__(self) -> None:
        self.issues: list[ValidationIssue] = []

    def error(self, check: str, case_id: str | None, message: str, fix: str, path: Path | None = None) -> None:
        self.issues.append(ValidationIssue("error", case_id, path, message, fix, check))

    def warning(self, check: str, case_id: str | None, message: str, fix: str, path: Path | None = None) -> None:
        self.issues.append(ValidationIssue("warning", case_id, path, message, fix, check))


def validate_manifest(manifest: Manifest, *, check_images: bool = True, check_voxels: bool = True,
                      progress: Callable[[Iterator[Case]], Iterator[Case]] | None = None) -> ValidationReport:
    """Check a manifest and collect every problem.

    Args:
        manifest: the cohort to check.
        check_images: read the image and label files (headers for geometry; voxels for NaN/Inf,
            label values and empty masks). When False only the table itself, the clinical fields and
            the existence of the files are checked.
        check_voxels: with ``check_images``, also read voxels (set False for a header-only pass).
        progress: optional wrapper around the case iterator (e.g. a progress bar).

    Returns:
        A :class:`ValidationReport` with one issue per problem.
    """
    out = _Collector()
    _check_cohort_table(manifest, out)
    cases: Iterator[Case] = iter(manifest.cases)
    if progress is not None:
        cases = progress(cases)
    for case in cases:
        _check_clinical(case, out)
        _check_partial_label(case, out)
        _check_case_files(case, manifest, out, check_images=check_images, check_voxels=check_voxels)
    _check_cohort_clinical(manifest, out)
    return ValidationReport(issues=out.issues, n_cases=len(manifest.cases), source=manifest.source)


# ---------------------------------------------------------------------- cohort-wide checks
def _check_cohort_table(manifest: Manifest, out: _Collector) -> None:
    for case_id, n in manifest.duplicate_ids().items():
        out.error("duplicate_case_id", case_id, f"case id appears {n} times.",
                  "give every case a unique case_id (e.g. append the study date).")
    values = list(manifest.labels.values())
    if 0 not in values:
        out.error("labels_declaration", None, f"declared labels {manifest.labels} have no background value 0.",
                  "declare background=0 in the label map.")
    for value, n in Counter(values).items():
        if n > 1:
            names = [k for k, v in manifest.labels.items() if v == value]
            out.error("labels_declaration", None, f"label value {value} is declared {n} times ({names}).",
                      "give each label name its own integer value.")
    if len(set(manifest.channels)) != len(manifest.channels):
        out.error("channels_declaration", None, f"channel names repeat: {manifest.channels}.",
                  "give each channel a unique name.")


def _check_cohort_clinical(manifest: Manifest, out: _Collector) -> None:
    with_event = [c for c in manifest.cases if c.event is not None]
    if with_event and not any(c.event == 1 for c in with_event):
        out.warning("no_events", None, f"no observed event among the {len(with_event)} case(s) with an event "
                    "value: survival cannot be learned or evaluated.",
                    "check the event column and its mapping (1 = death/event, 0 = censored).")
    given = [c.fold for c in manifest.cases if c.fold is not None]
    invalid = [c for c in manifest.cases if "fold" in c.invalid_fields]
    if given or invalid:
        missing = [c.case_id for c in manifest.cases if c.fold is None and "fold" not in c.invalid_fields]
        if missing:
            out.error("invalid_fold", None,
                      f"fold is given for {len(given)} case(s) but missing for {len(missing)} "
                      f"({', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}).",
                      "give every case a fold, or leave the fold column empty for all to split automatically.")
        distinct = sorted(set(given))
        if len(distinct) == 1 and len(manifest.cases) > 1:
            out.warning("invalid_fold", None, f"all cases are in fold {distinct[0]}: no case is left for "
                        "validation.", "assign at least two folds (e.g. 0..4).")
        elif distinct and distinct != list(range(distinct[-1] + 1)):
            out.warning("invalid_fold", None, f"fold numbers {distinct} are not consecutive from 0.",
                        "number folds 0..K-1 so that '--fold K' selects what you expect.")


# ---------------------------------------------------------------------- per-case clinical
def _check_clinical(case: Case, out: _Collector) -> None:
    cid = case.case_id
    invalid = case.invalid_fields
    if "grade" in invalid:
        out.error("unknown_grade", cid, f"grade '{invalid['grade']}' is not one of {', '.join(GRADES)}.",
                  "map the hospital's grade labels to low/intermediate/high (clinical mapping file, "
                  "'grade.map'), or leave the grade empty when unknown.")
    if "survival_time" in invalid:
        out.error("invalid_survival_time", cid, f"survival_time '{invalid['survival_time']}' is not a number.",
                  "give survival_time in days as a number, or leave it empty.")
    if "event" in invalid:
        out.error("invalid_event", cid, f"event '{invalid['event']}' is not 0 or 1.",
                  "use 1 for an observed event (death) and 0 for censored; map status words such as "
                  "D/NED/AWD with the clinical mapping file ('event.map').")
    if "fold" in invalid:
        out.error("invalid_fold", cid, f"fold '{invalid['fold']}' is not a non-negative integer.",
                  "use fold numbers 0..K-1.")
    if case.survival_time is not None and case.survival_time < 0:
        out.error("negative_survival_time", cid, f"survival_time is negative ({case.survival_time:g} days).",
                  "check the follow-up dates; survival_time counts days from diagnosis/baseline.")
    time_missing = case.survival_time is None and "survival_time" not in invalid
    if case.event is not None and time_missing:
        out.error("event_without_time", cid, f"event is {case.event} but survival_time is missing.",
                  "give the days to event or last follow-up, or clear the event.")
    if case.survival_time is not None and case.event is None and "event" not in invalid:
        out.warning("time_without_event", cid, "survival_time is given without an event status; the case "
                    "is left out of the survival task.", "give event 1 (death) or 0 (censored).")


def _check_partial_label(case: Case, out: _Collector) -> None:
    """Warn about a mask imported from contours that lay partly outside the images (see PARTIAL_LABEL_COLUMNS)."""
    found = []
    for column, meaning in PARTIAL_LABEL_COLUMNS.items():
        try:
            count = int(float(str(case.extra.get(column, 0))))
        except ValueError:
            count = 0
        if count > 0:
            found.append(f"{count} contour(s) {meaning}")
    if found:
        out.warning("partial_label", case.case_id, f"label is a partial mask: {'; '.join(found)} when it was "
                    "imported.", "re-export the complete image series and import again, or keep the case out of "
                    "segmentation training and evaluation.", case.label)


# ---------------------------------------------------------------------- checks shared with the commands
def grid_mismatch(name: str, geometry: Geometry, reference_name: str, reference: Geometry) -> str | None:
    """One line saying how ``name`` (e.g. "channel T2", "label") departs from ``reference_name``'s grid,
    or None when both coincide within the tolerances of :meth:`Geometry.differences`."""
    diffs = reference.differences(geometry)
    if not diffs:
        return None
    return f"{name} is not on the grid of channel {reference_name}: {'; '.join(diffs)}"


def _channel_fix(channel: str, reference: str) -> str:
    return f"resample channel {channel} onto channel {reference}'s grid (register it first if they are not aligned)."


LABEL_GRID_FIX = ("resample the label onto the image grid with nearest-neighbour interpolation, or re-export it "
                  "from the image it was drawn on.")


def check_case_grid(geometries: Mapping[str, Geometry], label: Geometry | None = None, *,
                    paths: Mapping[str, Path] | None = None, label_path: Path | None = None) -> None:
    """Refuse a case whose channels (by name, in order) or label do not share the first channel's grid.

    Raises:
        UserInputError: naming the first channel off the grid (or the label), the mismatch in one line
            and the file when ``paths`` are given.
    """
    names = list(geometries)
    if not names:
        return
    reference = names[0]
    for name in names[1:]:
        problem = grid_mismatch(f"channel {name}", geometries[name], reference, geometries[reference])
        if problem:
            raise UserInputError(problem + ".", path=(paths or {}).get(name), fix=_channel_fix(name, reference))
    if label is not None:
        problem = grid_mismatch("label", label, reference, geometries[reference])
        if problem:
            raise UserInputError(problem + ".", path=label_path, fix=LABEL_GRID_FIX)


def check_case_headers(case: Case, channels: Sequence[str]) -> None:
    """:func:`check_case_grid` from the image headers alone, for commands that do not read the channels.

    Raises:
        UserInputError: a file is missing, a folder or unreadable, or the grids disagree.
    """
    present = [ch for ch in channels if ch in case.images]
    geometries = {ch: read_header(case.images[ch]).geometry for ch in present}
    label = read_header(case.label).geometry if case.label is not None else None
    check_case_grid(geometries, label, paths={ch: case.images[ch] for ch in present}, label_path=case.label)


# ---------------------------------------------------------------------- per-case files
def _reason(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def _open(path: Path | None, what: str, cid: str, out: _Collector, *, check_images: bool) -> ImageHeader | None:
    """Header of ``path``, or None after reporting why it cannot be used."""
    if path is None:
        return None
    if not path.exists():
        out.error("missing_file", cid, f"{what} file not found.",
                  "check the path in the manifest (relative paths start at the manifest's folder).", path)
        return None
    if path.is_dir():
        out.error("unreadable_file", cid, f"{what} path is a folder, not an image file.",
                  "convert DICOM series with 'sarcomakit import dicom' and point at the NIfTI files.", path)
        return None
    if not check_images:
        return None
    try:
        header = read_header(path)
    except UserInputError as exc:
        out.error("unreadable_file", cid, f"{what} {exc.detail}", exc.fix or "", path)
        return None
    except Exception as exc:  # nothing about one file may stop the others
        out.error("unreadable_file", cid, f"{what} cannot be read as an image ({_reason(exc)}).",
                  "replace the file with a readable NIfTI/NRRD/MHA image.", path)
        return None
    if header.dimension != 3:
        out.error("not_3d", cid, f"{what} has {header.dimension} dimensions (size {header.geometry.size}); "
                  "one 3D volume per channel is expected.",
                  "split multi-channel 4D images into one 3D file per channel ('sarcomakit import msd' does).",
                  path)
        return None
    if header.components != 1:
        out.error("not_scalar", cid, f"{what} has {header.components} components per voxel (RGB/vector).",
                  "give a scalar (grey-level) image.", path)
        return None
    return header


def _read_voxels(path: Path, what: str, cid: str, out: _Collector) -> np.ndarray | None:
    """Voxel values as stored, NaN/Inf included (so that they can be counted); None after reporting why not."""
    try:
        return sitk.GetArrayFromImage(read_image(path, check_finite=False))  # a copy: the image is temporary
    except UserInputError as exc:
        out.error("unreadable_file", cid, f"{what} {exc.detail}", exc.fix or "", path)
    except Exception as exc:  # a damaged file may raise anything; report, never stop
        out.error("unreadable_file", cid, f"{what} voxels cannot be read ({_reason(exc)}).",
                  "replace the file with a readable image (it may be truncated).", path)
    return None


def _check_case_files(case: Case, manifest: Manifest, out: _Collector, *, check_images: bool,
                      check_voxels: bool) -> None:
    cid = case.case_id
    absent = [channel for channel in manifest.channels if channel not in case.images]
    for channel in absent:
        if len(absent) == len(manifest.channels):
            out.error("missing_channel", cid, f"no image for declared channel '{channel}' (the case has none).",
                      f"add the path in column image_{channel}, or drop the case.")
        else:  # the multi-task model zero-fills and flags a missing modality; segmentation training refuses it
            out.warning("missing_channel", cid, f"no image for declared channel '{channel}': the multi-task "
                        "model zero-fills it, segmentation-only training cannot use the case.",
                        f"add the path in column image_{channel} if the modality exists.")
    reference: tuple[str, Geometry] | None = None
    for channel in manifest.channels:
        path = case.images.get(channel)
        header = _open(path, f"channel {channel}", cid, out, check_images=check_images)
        if header is None or path is None:
            continue
        if reference is None:
            reference = (channel, header.geometry)
        else:
            problem = grid_mismatch(f"channel {channel}", header.geometry, *reference)
            if problem:
                out.error("geometry_mismatch", cid, problem + ".", _channel_fix(channel, reference[0]), path)
        if check_voxels:
            array = _read_voxels(path, f"channel {channel}", cid, out)
            if array is not None and np.issubdtype(array.dtype, np.floating):
                n_nan = int(np.isnan(array).sum())
                n_inf = int(np.isinf(array).sum())
                if n_nan or n_inf:
                    out.error("non_finite_voxels", cid,
                              f"channel {channel} has {n_nan} NaN and {n_inf} infinite voxel(s); every command "
                              "refuses it.",
                              "recompute the image, or replace those voxels deliberately (e.g. with 0) and save "
                              "it again.", path)

    header = _open(case.label, "label", cid, out, check_images=check_images)
    if header is None or case.label is None:
        return
    if reference is not None:
        problem = grid_mismatch("label", header.geometry, *reference)
        if problem:
            out.error("label_geometry_mismatch", cid, problem + ".", LABEL_GRID_FIX, case.label)
    if check_voxels:
        _check_label_values(case, manifest, out)


def _check_label_values(case: Case, manifest: Manifest, out: _Collector) -> None:
    cid, path = case.case_id, case.label
    assert path is not None
    array = _read_voxels(path, "label", cid, out)
    if array is None:
        return
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            out.error("non_finite_voxels", cid, f"label has {int((~finite).sum())} NaN/infinite voxel(s).",
                      "rewrite the label as integers.", path)
            array = np.where(finite, array, 0)
        if not np.array_equal(array, np.round(array)):
            out.error("label_values", cid, "label has non-integer values (an interpolated or probability "
                      "map?).", "write labels as integers; resample labels with nearest-neighbour.", path)
            return
    values = {int(v) for v in np.unique(array)}
    declared = set(manifest.labels.values())
    unknown = sorted(values - declared)
    if unknown:
        out.error("label_values", cid, f"label has values {unknown} outside the declared labels "
                  f"{manifest.labels}.", "declare these values in the label map, or fix the mask.", path)
    if values <= {0}:
        out.warning("empty_label", cid, "label mask is empty (background only).",
                    "check the mask; an empty mask is fine only for a case without tumour.", path)
