"""Build a manifest from a plain table (CSV/XLSX), and merge a hospital's clinical spreadsheet into one.

A small mapping file (JSON; YAML too when PyYAML is installed) says which column holds what and
how the hospital's words map onto the manifest's clinical fields::

    {
      "id_column": "Patient ID",
      "images": {"T1": "t1_path", "T2FS": "t2fs_path"},
      "label": "mask_path",
      "grade": {"column": "Grade", "map": {"G1": "low", "G2": "intermediate", "G3": "high"}},
      "survival_time": {"column": "Days to last follow-up", "unit": "days"},
      "event": {"column": "Vital status", "map": {"D": 1, "NED": 0, "AWD": 0}},
      "site": "Centre",
      "fold": "Fold",
      "keep": ["Age", "Sex"]
    }

- ``images`` and ``label`` are used by :func:`import_table` only (paths relative to the table's folder).
- ``grade.map``: the table's grade words (matched ignoring case and surrounding spaces) to
  ``low``/``intermediate``/``high``; words already equal to one of those pass unchanged.
- ``survival_time``: ``column`` (or ``columns``, a list whose first non-empty value is taken, e.g.
  days to death then days to last follow-up) and ``unit`` (``days``, ``weeks``, ``months`` = 30.4375
  days, ``years`` = 365.25 days). The manifest stores days.
- ``event.map``: status words to 1 (event, e.g. died: ``D``) or 0 (censored: alive with or without
  disease, ``AWD``/``NED``); 0/1 pass unchanged.
- ``site``/``fold``: a column name (or ``{"column": ...}``).
- ``keep``: further columns copied into the manifest as extra columns.

Values that cannot be mapped are kept as written, so that ``sarcomakit validate`` names them
(unknown grade words, status words missing from the map, non-numeric times); nothing is dropped silently.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.importers._common import sanitise_case_id
from sarcomakit.data.manifest import DEFAULT_LABELS, GRADES, IMAGE_PREFIX, Manifest

log = logging.getLogger("sarcomakit")

TIME_UNITS_IN_DAYS: dict[str, float] = {"days": 1.0, "day": 1.0, "d": 1.0, "weeks": 7.0, "week": 7.0,
                                        "months": 30.4375, "month": 30.4375, "years": 365.25, "year": 365.25}


@dataclass
class ClinicalMapping:
    """How a spreadsheet's columns map onto the manifest's clinical fields (see the module docstring)."""

    grade_column: str | None = None
    grade_map: dict[str, str] = field(default_factory=dict)
    time_columns: list[str] = field(default_factory=list)
    time_unit: str = "days"
    event_column: str | None = None
    event_map: dict[str, int] = field(default_factory=dict)
    site_column: str | None = None
    fold_column: str | None = None
    keep_columns: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path | None = None) -> ClinicalMapping:
        """Parse the clinical keys of a mapping: grade, survival_time, event, site, fold, keep."""
        grade = _field(data.get("grade"), "grade", where)
        time = _field(data.get("survival_time"), "survival_time", where)
        event = _field(data.get("event"), "event", where)
        unit = str(time.get("unit", "days")).lower()
        if unit not in TIME_UNITS_IN_DAYS:
            raise UserInputError(f"survival_time unit '{unit}' is unknown.", path=where,
                                 fix=f"use one of {', '.join(sorted(set(TIME_UNITS_IN_DAYS)))}.")
        grade_map = {str(k).strip().lower(): str(v).strip().lower() for k, v in (grade.get("map") or {}).items()}
        bad = sorted({v for v in grade_map.values() if v not in GRADES})
        if bad:
            raise UserInputError(f"grade map targets {bad} are not among {', '.join(GRADES)}.", path=where,
                                 fix="map every grade word to low, intermediate or high.")
        event_map: dict[str, int] = {}
        for key, value in (event.get("map") or {}).items():
            if value not in (0, 1, "0", "1"):
                raise UserInputError(f"event map sends '{key}' to {value!r}, not 0 or 1.", path=where,
                                     fix="map event words to 1 (event/death) or 0 (censored).")
            event_map[str(key).strip().lower()] = int(value)
        columns = time.get("columns") or ([time["column"]] if time.get("column") else [])
        return cls(grade_column=grade.get("column"), grade_map=grade_map, time_columns=[str(c) for c in columns],
                   time_unit=unit, event_column=event.get("column"), event_map=event_map,
                   site_column=_field(data.get("site"), "site", where).get("column"),
                   fold_column=_field(data.get("fold"), "fold", where).get("column"),
                   keep_columns=[str(c) for c in data.get("keep", [])])

    @property
    def columns(self) -> list[str]:
        """Every table column this mapping reads."""
        named = [self.grade_column, *self.time_columns, self.event_column, self.site_column, self.fold_column]
        return [c for c in named if c] + list(self.keep_columns)

    def values(self, row: dict[str, str]) -> dict[str, Any]:
        """The manifest's clinical values for one table row (unmappable values kept as written)."""
        out: dict[str, Any] = {}
        if self.grade_column:
            raw = row.get(self.grade_column, "").strip()
            if raw:
                out["grade"] = self.grade_map.get(raw.lower(), raw)
        if self.time_columns:
            raw = next((row.get(c, "").strip() for c in self.time_columns if row.get(c, "").strip()), "")
            if raw:
                out["survival_time"] = _days(raw, self.time_unit)
        if self.event_column:
            raw = row.get(self.event_column, "").strip()
            if raw:
                out["event"] = self.event_map.get(raw.lower(), raw)
        if self.site_column and row.get(self.site_column, "").strip():
            out["site"] = row[self.site_column].strip()
        if self.fold_column and row.get(self.fold_column, "").strip():
            out["fold"] = row[self.fold_column].strip()
        for column in self.keep_columns:
            if row.get(column, "").strip():
                out[column] = row[column].strip()
        return out


@dataclass
class TableMapping:
    """A whole mapping file: identifier, image and label columns, and the clinical mapping."""

    id_column: str = "case_id"
    image_columns: dict[str, str] = field(default_factory=dict)
    label_column: str | None = None
    clinical: ClinicalMapping = field(default_factory=ClinicalMapping)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: Path | None = None) -> TableMapping:
        images = data.get("images", {})
        if not isinstance(images, dict):
            raise UserInputError("'images' must map channel names to columns.", path=where,
                                 fix='write e.g. "images": {"T1": "t1_path"}.')
        return cls(id_column=str(data.get("id_column", "case_id")),
                   image_columns={str(k): str(v) for k, v in images.items()},
                   label_column=data.get("label"), clinical=ClinicalMapping.from_dict(data, where))


def _field(value: Any, name: str, where: Path | None) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        return {"column": value}
    if isinstance(value, dict):
        return value
    raise UserInputError(f"'{name}' must be a column name or an object with 'column'.", path=where,
                         fix=f'write e.g. "{name}": {{"column": "..."}}.')


def _days(raw: str, unit: str) -> str | float:
    try:
        value = float(raw.replace(",", "."))
    except ValueError:
        return raw
    return value * TIME_UNITS_IN_DAYS[unit] if math.isfinite(value) else raw


def load_table_mapping(path: str | Path) -> TableMapping:
    """Read a mapping file (``.json``, or ``.yaml``/``.yml`` when PyYAML is installed)."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError("mapping file not found.", path=p,
                             fix="give a JSON mapping file (format in 'sarcomakit import table --help').")
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as exc:
            raise UserInputError("is YAML but PyYAML is not installed.", path=p,
                                 fix="write the mapping as JSON, or 'pip install pyyaml'.") from exc
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise UserInputError(f"is not valid YAML ({exc}).", path=p, fix="repair the YAML syntax.") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserInputError(f"is not valid JSON ({exc.msg}, line {exc.lineno}).", path=p,
                                 fix="repair the JSON syntax.") from exc
    if not isinstance(data, dict):
        raise UserInputError("does not hold a mapping object.", path=p, fix="see the mapping format in the docs.")
    return TableMapping.from_dict(data, p)


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV (any common delimiter) or XLSX sheet as strings, blanks as empty strings."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError("table not found.", path=p, fix="give the path of a .csv or .xlsx file.")
    suffix = p.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm", ".xls"):
            frame = pd.read_excel(p, dtype=str, keep_default_na=False)
        elif suffix in (".csv", ".tsv", ".txt"):
            frame = pd.read_csv(p, dtype=str, keep_default_na=False, sep=None, engine="python",
                                encoding="utf-8-sig")
        else:
            raise UserInputError("unsupported table format.", path=p, fix="save the sheet as .csv or .xlsx.")
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise UserInputError(f"cannot be read as a table ({exc}).", path=p,
                             fix="save the sheet as UTF-8 CSV or XLSX.") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame.fillna("")


def _require_columns(frame: pd.DataFrame, columns: list[str], where: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise UserInputError(f"has no column(s) {missing}; columns are {list(frame.columns)}.", path=where,
                             fix="correct the column names in the mapping.")


def _rows(frame: pd.DataFrame) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def import_table(table: str | Path, image_columns: dict[str, str], *, label_column: str | None = None,
                 id_column: str = "case_id", clinical_map: ClinicalMapping | dict[str, Any] | None = None,
                 labels: dict[str, int] | None = None, out_manifest: str | Path | None = None) -> Manifest:
    """Build a manifest from a table with one row per case and one column per image.

    Args:
        table: a ``.csv`` or ``.xlsx`` file; image paths in it are relative to its folder.
        image_columns: channel name -> column holding that channel's image path, e.g. ``{"T1": "t1_path"}``.
        label_column: the column with the label mask path, if any.
        id_column: the column that identifies cases (ids are made file-name safe; the original is
            kept in ``extra["original_id"]`` when it changes).
        clinical_map: how clinical columns map (a :class:`ClinicalMapping` or its dict form).
        labels: the label map (default ``background=0, tumour=1``).
        out_manifest: where to save the manifest; not saved when None.

    Returns:
        The manifest; unmappable clinical values are flagged in ``case.invalid_fields``.
    """
    path = Path(table)
    frame = read_table(path)
    if not image_columns:
        raise UserInputError("no image columns given.", path=path,
                             fix='map channels to columns, e.g. {"T1": "t1_path"}.')
    if isinstance(clinical_map, ClinicalMapping):
        mapping = clinical_map
    else:
        mapping = ClinicalMapping.from_dict(clinical_map or {}, path)
    needed = [id_column, *image_columns.values(), *([label_column] if label_column else []), *mapping.columns]
    _require_columns(frame, needed, path)
    rows = []
    for row in _rows(frame):
        raw_id = row[id_column].strip()
        if not raw_id:
            continue  # blank spreadsheet rows
        out: dict[str, Any] = {"case_id": sanitise_case_id(raw_id)}
        if out["case_id"] != raw_id:
            out["original_id"] = raw_id
        for channel, column in image_columns.items():
            out[IMAGE_PREFIX + channel] = row[column]
        out["label"] = row[label_column] if label_column else None
        out.update(mapping.values(row))
        rows.append(out)
    if not rows:
        raise UserInputError(f"has no rows with a value in '{id_column}'.", path=path, fix="fill in the id column.")
    manifest = Manifest.from_rows(rows, channels=list(image_columns), labels=labels or dict(DEFAULT_LABELS),
                                  base=path.parent.resolve(), source=path)
    if out_manifest is not None:
        manifest.source = manifest.save(out_manifest)
    return manifest


def merge_clinical(manifest: Manifest, table: str | Path, mapping: ClinicalMapping | TableMapping | dict[str, Any],
                   *, id_column: str | None = None) -> Manifest:
    """Fill the clinical fields of ``manifest``'s cases from a hospital spreadsheet.

    Rows are matched to cases by id: exactly, else after making the table's id file-name safe the
    way the DICOM importer does with PatientID. Table values replace the case's values for the
    mapped fields; cases without a row keep theirs.

    Args:
        manifest: the cohort (not modified; a new manifest is returned).
        table: ``.csv`` or ``.xlsx``.
        mapping: a :class:`TableMapping`, a :class:`ClinicalMapping` or the dict form of a mapping file.
        id_column: the table's id column (default: the mapping's ``id_column``, else ``case_id``).

    Returns:
        A new manifest with the clinical fields merged (cases without a table row are logged as a warning).

    Raises:
        UserInputError: missing columns, duplicate ids in the table, or no row matching any case.
    """
    path = Path(table)
    if isinstance(mapping, dict):
        mapping = TableMapping.from_dict(mapping, path)
    clinical = mapping.clinical if isinstance(mapping, TableMapping) else mapping
    id_col = id_column or (mapping.id_column if isinstance(mapping, TableMapping) else "case_id")
    frame = read_table(path)
    _require_columns(frame, [id_col, *clinical.columns], path)
    by_id: dict[str, dict[str, str]] = {}
    duplicates = []
    for row in _rows(frame):
        raw = row[id_col].strip()
        if not raw:
            continue
        for key in {raw, sanitise_case_id(raw)}:
            if key in by_id and by_id[key] is not row:
                duplicates.append(raw)
            by_id[key] = row
    if duplicates:
        raise UserInputError(f"ids appear more than once: {sorted(set(duplicates))[:8]}.", path=path,
                             fix="keep one row per patient in the clinical table.")
    rows = manifest.to_rows()
    matched = 0
    for row in rows:
        source = by_id.get(row["case_id"])
        if source is None:
            continue
        matched += 1
        row.update(clinical.values(source))
    if matched < len(rows):
        log.warning("%d of %d case(s) have no row in %s", len(rows) - matched, len(rows), path)
    if not matched:
        raise UserInputError(f"no row's '{id_col}' matches a case id (cases: {manifest.case_ids[:5]}, table: "
                             f"{list(by_id)[:5]}).", path=path, fix="check the id column in the mapping.")
    return Manifest.from_rows(rows, channels=list(manifest.channels), labels=dict(manifest.labels),
                              source=manifest.source)
