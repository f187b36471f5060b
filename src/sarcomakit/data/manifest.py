"""The cohort manifest: one row per case, the contract between importers and everything else.

A manifest declares its channel names once (e.g. ``T1, T2FS, PET, CT``) and its label map
(``{"background": 0, "tumour": 1}``), then lists cases. Each case has one image per channel,
an optional label mask and optional clinical fields (``grade``, ``survival_time`` in days,
``event`` 0/1, ``site``, ``fold``); any further columns are kept in ``extra``.

Two file forms, same content:

- JSON: ``{"format": "sarcomakit-manifest", "version": 1, "channels": [...], "labels": {...}, "cases": [...]}``
- CSV: columns ``case_id, image_<CHANNEL>..., label, grade, survival_time, event, site, fold, ...``;
  channels are the ``image_*`` columns in order; the label map sits in an optional first line
  ``# labels: background=0,tumour=1`` (default: background=0, tumour=1).

Relative paths are relative to the manifest file's folder; they are written relative when the
file lies beside or above the images, so a cohort folder can be moved whole.

Case ids are unique: :meth:`Manifest.load` refuses a file that lists an id twice (the case would be
pooled twice into the fingerprint and could land on both sides of a split).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text
from sarcomakit.core.io.image import is_image_path

GRADES: tuple[str, ...] = ("low", "intermediate", "high")
CLINICAL_FIELDS: tuple[str, ...] = ("grade", "survival_time", "event", "site", "fold")
DEFAULT_LABELS: dict[str, int] = {"background": 0, "tumour": 1}
IMAGE_PREFIX = "image_"
FORMAT_NAME = "sarcomakit-manifest"


@dataclass
class Case:
    """One case of a cohort. Paths are absolute once loaded; clinical fields are raw but typed.

    ``grade`` is one of :data:`GRADES` or None; ``survival_time`` is in days; ``event`` is 1 for an
    observed event (death), 0 for censored. Values that failed to parse are kept as strings in
    ``extra["_invalid"]`` so that validation can report them rather than the loader crashing.
    """

    case_id: str
    images: dict[str, Path]
    label: Path | None = None
    grade: str | None = None
    survival_time: float | None = None
    event: int | None = None
    site: str | None = None
    fold: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def invalid_fields(self) -> dict[str, str]:
        return dict(self.extra.get("_invalid", {}))


@dataclass
class Manifest:
    """A cohort: declared channels and labels, and its cases in order."""

    channels: list[str]
    cases: list[Case]
    labels: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_LABELS))
    source: Path | None = None

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.cases)

    def __iter__(self) -> Iterator[Case]:
        return iter(self.cases)

    def __getitem__(self, case_id: str) -> Case:
        for case in self.cases:
            if case.case_id == case_id:
                return case
        raise KeyError(case_id)

    @property
    def case_ids(self) -> list[str]:
        return [c.case_id for c in self.cases]

    @property
    def has_labels(self) -> bool:
        return any(c.label is not None for c in self.cases)

    def duplicate_ids(self) -> dict[str, int]:
        """Case ids listed more than once, with how many times, in order of first appearance."""
        return {cid: n for cid, n in Counter(self.case_ids).items() if n > 1}

    def subset(self, case_ids: Iterable[str]) -> Manifest:
        """A manifest of the given cases, in the given order."""
        wanted = list(case_ids)
        by_id = {c.case_id: c for c in self.cases}
        missing = [cid for cid in wanted if cid not in by_id]
        if missing:
            raise KeyError(f"cases not in manifest: {missing}")
        return replace(self, cases=[by_id[cid] for cid in wanted])

    # ------------------------------------------------------------------ rows
    def to_rows(self, relative_to: Path | None = None) -> list[dict[str, Any]]:
        """One flat dict per case (CSV column names), paths relative to ``relative_to`` when given."""
        rows = []
        for case in self.cases:
            row: dict[str, Any] = {"case_id": case.case_id}
            for ch in self.channels:
                row[IMAGE_PREFIX + ch] = _path_out(case.images.get(ch), relative_to)
            row["label"] = _path_out(case.label, relative_to)
            for name in CLINICAL_FIELDS:
                row[name] = getattr(case, name)
            row.update({k: v for k, v in case.extra.items() if not k.startswith("_")})
            invalid = case.invalid_fields
            row.update(invalid)  # write back what the user wrote, unchanged
            rows.append(row)
        return rows

    @classmethod
    def from_rows(cls, rows: list[dict[str, Any]], *, channels: list[str] | None = None,
                  labels: dict[str, int] | None = None, base: Path | None = None,
                  source: Path | None = None) -> Manifest:
        """Build a manifest from flat rows (as read from CSV or given by an importer)."""
        if channels is None:
            keys: list[str] = []
            for row in rows:
                keys.extend(k for k in row if k.startswith(IMAGE_PREFIX) and k not in keys)
            channels = [k[len(IMAGE_PREFIX):] for k in keys]
        where = source or Path("manifest")
        if not channels:
            raise UserInputError("declares no image channels (no 'image_<CHANNEL>' column).", path=where,
                                 fix="add one column per channel, e.g. image_T1, image_T2FS.")
        cases = [_case_from_row(row, channels, base, where, i) for i, row in enumerate(rows)]
        return cls(channels=list(channels), cases=cases, labels=dict(labels or DEFAULT_LABELS), source=source)

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | Path, *, allow_duplicate_ids: bool = False) -> Manifest:
        """Read a manifest from ``.csv`` or ``.json`` (see the module docstring for both forms).

        Args:
            path: the manifest file.
            allow_duplicate_ids: keep a manifest that lists a case id twice (``validate`` does, to
                report it with every other problem); every other command refuses it.

        Raises:
            UserInputError: the file is missing, a folder or an image, unreadable, or lists a case id twice.
        """
        p = Path(path)
        _check_manifest_path(p)
        manifest = cls._read(p)
        duplicates = manifest.duplicate_ids()
        if duplicates and not allow_duplicate_ids:
            listed = ", ".join(f"{cid} ({n}x)" for cid, n in list(duplicates.items())[:8])
            more = f" and {len(duplicates) - 8} more" if len(duplicates) > 8 else ""
            raise UserInputError(f"lists case id(s) more than once: {listed}{more}.", path=p,
                                 fix="give every case a unique case_id (e.g. append the study date), or drop the "
                                     "repeated rows.")
        return manifest

    @classmethod
    def _read(cls, p: Path) -> Manifest:
        base = p.parent.resolve()
        text = p.read_text(encoding="utf-8-sig")
        if p.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                raise UserInputError(f"is not valid JSON ({exc.msg}, line {exc.lineno}).", path=p,
                                     fix="repair the file or re-export the manifest.") from exc
            if not isinstance(data, dict) or "cases" not in data:
                raise UserInputError("is not a sarcomakit manifest (no 'cases' list).", path=p,
                                     fix="write it with Manifest.save or an importer.")
            labels = {str(k): int(v) for k, v in data.get("labels", DEFAULT_LABELS).items()}
            rows = [_flatten_json_case(c) for c in data["cases"]]
            return cls.from_rows(rows, channels=data.get("channels"), labels=labels, base=base, source=p)
        if p.suffix.lower() == ".csv":
            labels = dict(DEFAULT_LABELS)
            lines = text.splitlines()
            if lines and lines[0].startswith("#"):
                labels = _parse_label_comment(lines[0], p)
                text = "\n".join(lines[1:])
            rows = list(csv.DictReader(io.StringIO(text)))
            if rows and "case_id" not in rows[0]:
                raise UserInputError("has no 'case_id' column.", path=p,
                                     fix="name the column that identifies each case 'case_id'.")
            return cls.from_rows(rows, labels=labels, base=base, source=p)
        raise UserInputError("unsupported manifest format.", path=p, fix="use a .csv or .json manifest.")

    def save(self, path: str | Path) -> Path:
        """Write the manifest atomically as ``.csv`` or ``.json`` (paths relative to its folder)."""
        p = Path(path)
        base = p.parent.resolve()
        rows = self.to_rows(relative_to=base)
        if p.suffix.lower() == ".json":
            cases = []
            for row in rows:
                case = {"case_id": row.pop("case_id"),
                        "images": {ch: row.pop(IMAGE_PREFIX + ch) for ch in self.channels},
                        "label": row.pop("label")}
                case.update({k: v for k, v in row.items() if v is not None})
                cases.append(case)
            data = {"format": FORMAT_NAME, "version": 1, "channels": self.channels,
                    "labels": self.labels, "cases": cases}
            return write_text(p, json.dumps(data, indent=2) + "\n")
        if p.suffix.lower() == ".csv":
            columns = ["case_id", *[IMAGE_PREFIX + ch for ch in self.channels], "label", *CLINICAL_FIELDS]
            for row in rows:
                columns.extend(k for k in row if k not in columns)
            buffer = io.StringIO()
            buffer.write("# labels: " + ",".join(f"{k}={v}" for k, v in self.labels.items()) + "\n")
            writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
            return write_text(p, buffer.getvalue())
        raise UserInputError("unsupported manifest format.", path=p, fix="use a .csv or .json suffix.")


# ---------------------------------------------------------------------- helpers
def _check_manifest_path(p: Path) -> None:
    """Refuse what is not a manifest file with a message saying what it is instead."""
    if p.is_dir():
        inside = [p / name for name in ("manifest.csv", "manifest.json") if (p / name).is_file()]
        fix = f"give {inside[0]}." if inside else "give the path of the manifest .csv or .json file."
        raise UserInputError("is a folder, not a manifest file.", path=p, fix=fix)
    if not p.is_file():
        raise UserInputError("manifest not found.", path=p,
                             fix="give the path of a manifest .csv or .json (e.g. from 'sarcomakit synth').")
    if is_image_path(p):
        raise UserInputError("is an image, not a manifest.", path=p,
                             fix="list it in a manifest (columns case_id, image_<CHANNEL>, label), e.g. with "
                                 "'sarcomakit import table'.")


def _path_out(path: Path | None, relative_to: Path | None) -> str | None:
    if path is None:
        return None
    if relative_to is None:
        return str(path)
    try:
        return os.path.relpath(Path(path).resolve(), relative_to)
    except ValueError:  # another drive on Windows
        return str(path)


def _path_in(value: Any, base: Path | None) -> Path | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    p = Path(str(value).strip()).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return p


def _blank(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in ("", "na", "nan", "none", "null")


def _case_from_row(row: dict[str, Any], channels: list[str], base: Path | None, where: Path, index: int) -> Case:
    case_id = row.get("case_id")
    if _blank(case_id):
        raise UserInputError(f"row {index + 1} has no case_id.", path=where, fix="give every row a unique case_id.")
    images = {}
    for ch in channels:
        p = _path_in(row.get(IMAGE_PREFIX + ch), base)
        if p is not None:
            images[ch] = p
    invalid: dict[str, str] = {}
    values: dict[str, Any] = {}

    grade = row.get("grade")
    if not _blank(grade):
        g = str(grade).strip().lower()
        if g in GRADES:
            values["grade"] = g
        else:
            invalid["grade"] = str(grade)
    survival: Any = row.get("survival_time")  # a cell holds any JSON or CSV value: float() is guarded
    if not _blank(survival):
        try:
            values["survival_time"] = float(survival)
            if not math.isfinite(values["survival_time"]):
                raise ValueError
        except (TypeError, ValueError):
            values.pop("survival_time", None)
            invalid["survival_time"] = str(survival)
    event: Any = row.get("event")
    if not _blank(event):
        try:
            e = float(event)
            if e not in (0.0, 1.0):
                raise ValueError
            values["event"] = int(e)
        except (TypeError, ValueError):
            invalid["event"] = str(event)
    site = row.get("site")
    if not _blank(site):
        values["site"] = str(site).strip()
    fold: Any = row.get("fold")
    if not _blank(fold):
        try:
            f = float(fold)
            if f != int(f) or f < 0:
                raise ValueError
            values["fold"] = int(f)
        except (TypeError, ValueError):
            invalid["fold"] = str(fold)

    known = {"case_id", "label", *CLINICAL_FIELDS, *(IMAGE_PREFIX + ch for ch in channels)}
    extra: dict[str, Any] = {k: v for k, v in row.items() if k not in known and not _blank(v)}
    if invalid:
        extra["_invalid"] = invalid
    return Case(case_id=str(case_id).strip(), images=images, label=_path_in(row.get("label"), base),
                extra=extra, **values)


def _flatten_json_case(case: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in case.items() if k != "images"}
    for ch, path in (case.get("images") or {}).items():
        row[IMAGE_PREFIX + ch] = path
    return row


def _parse_label_comment(line: str, where: Path) -> dict[str, int]:
    body = line.lstrip("#").strip()
    if not body.lower().startswith("labels:"):
        return dict(DEFAULT_LABELS)
    labels: dict[str, int] = {}
    for item in body.split(":", 1)[1].split(","):
        if not item.strip():
            continue
        try:
            name, value = item.split("=")
            labels[name.strip()] = int(value)
        except ValueError as exc:
            raise UserInputError(f"label declaration '{item.strip()}' is not name=value.", path=where,
                                 fix="write the first line as '# labels: background=0,tumour=1'.") from exc
    return labels
