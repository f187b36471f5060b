"""The out-of-fold (OOF) prediction table: its columns, validation, reading and writing.

Every method that is cross-validated on the cohort (the multi-task model, single-task models, the
radiomics baseline, held-out predictions of the demo) writes the same table, and every comparison
reads it: one row per case and method, CSV with the columns of :data:`OOF_COLUMNS`. Only ``case_id``
and ``method`` are required; a method leaves empty the tasks it does not predict::

    case_id, method, fold, grade_true, p_low, p_intermediate, p_high, grade_pred,
    time, event, log_risk, risk_group, dice, hd95, train_risk_cutoff

``fold`` is the fold whose model predicted the case; ``p_*`` the grade probabilities (summing to one);
``time`` (days) and ``event`` (1 death, 0 censored) the follow-up; ``log_risk`` the predicted Cox
log-risk, ``risk_group`` its low/high group and ``train_risk_cutoff`` the training fold's median
log-risk that split it; ``dice`` and ``hd95`` (mm) the segmentation of the case.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text
from sarcomakit.data.manifest import GRADES

OOF_FILE = "oof_predictions.csv"
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{grade}" for grade in GRADES)
NUMERIC_COLUMNS: tuple[str, ...] = ("fold", *PROBABILITY_COLUMNS, "time", "event", "log_risk", "dice", "hd95",
                                    "train_risk_cutoff")
OOF_COLUMNS: tuple[str, ...] = ("case_id", "method", "fold", "grade_true", *PROBABILITY_COLUMNS, "grade_pred",
                                "time", "event", "log_risk", "risk_group", "dice", "hd95", "train_risk_cutoff")
RISK_GROUPS: tuple[str, ...] = ("low", "high")
PROBABILITY_SUM_TOLERANCE = 0.01


def load_oof(path: str | Path) -> pd.DataFrame:
    """Read and validate an out-of-fold prediction table (see the module docstring for its columns).

    Returns:
        The table with the columns of :data:`OOF_COLUMNS` first (absent ones added empty; other columns
        are kept after them), numbers as floats (NaN when empty), grades and risk groups lower-case (None
        when empty), rows in file order.

    Raises:
        UserInputError: naming the file, the column and the first bad row, for a missing file, a missing
            ``case_id``/``method`` column, a value that is not a number, a grade or a risk group, a value
            out of range, probabilities not summing to one, an event without a time, or a case listed
            twice for one method.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError("out-of-fold prediction table not found.", path=path,
                             fix=f"give a folder or file written by 'sarcomakit experiment' or 'sarcomakit train' "
                                 f"({OOF_FILE}).")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserInputError(f"is not a readable CSV table ({exc}).", path=path,
                             fix="write it with one header line and one row per case and method.") from exc
    return validate_oof(table, source=path)


def validate_oof(table: pd.DataFrame, source: str | Path = "out-of-fold table") -> pd.DataFrame:
    """Validate and normalise an OOF table already in memory (what :func:`load_oof` does after reading).

    Raises:
        UserInputError: as :func:`load_oof`; ``source`` names the table in the message.
    """
    table = table.copy()
    table.columns = [str(c).strip() for c in table.columns]
    for column in ("case_id", "method"):
        if column not in table.columns:
            raise UserInputError(f"has no '{column}' column (columns: {', '.join(table.columns) or 'none'}).",
                                 path=source, fix=f"give the out-of-fold table its columns: {', '.join(OOF_COLUMNS)}.")
    if table.empty:
        raise UserInputError("holds no prediction rows.", path=source,
                             fix="run the cross-validation that writes the out-of-fold predictions first.")
    for column in OOF_COLUMNS:
        if column not in table.columns:
            table[column] = np.nan if column in NUMERIC_COLUMNS else None
    for column in ("case_id", "method"):
        text = table[column].map(_text)
        _fail_where(text.isna(), table, source, column, "is empty", "give every row its case id and method")
        table[column] = text
    for column in NUMERIC_COLUMNS:
        table[column] = _numbers(table, column, source)
    for column, allowed in (("grade_true", GRADES), ("grade_pred", GRADES), ("risk_group", RISK_GROUPS)):
        table[column] = _categories(table, column, allowed, source)
    _check_ranges(table, source)
    duplicated = table.duplicated(["case_id", "method"], keep="first")
    _fail_where(duplicated, table, source, "case_id", "is listed twice for the same method",
                "keep one out-of-fold prediction per case and method")
    return table[[*OOF_COLUMNS, *(c for c in table.columns if c not in OOF_COLUMNS)]].reset_index(drop=True)


def write_oof(table: Sequence[Mapping[str, Any]] | pd.DataFrame, path: str | Path) -> Path:
    """Write an out-of-fold table as CSV, atomically, with the columns of :data:`OOF_COLUMNS` first.

    Args:
        table: the rows as dictionaries (a missing key or None is an empty cell; keys outside
            :data:`OOF_COLUMNS` are dropped), or a DataFrame (absent OOF columns are added empty, other
            columns kept after them).
        path: the CSV file.

    Returns:
        ``path``.
    """
    if isinstance(table, pd.DataFrame):
        columns = [*OOF_COLUMNS, *(c for c in table.columns if c not in OOF_COLUMNS)]
        return write_text(path, table.reindex(columns=columns).to_csv(index=False))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(OOF_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in table:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in OOF_COLUMNS})
    return write_text(path, buffer.getvalue())


# ---------------------------------------------------------------------- internals
def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _fail_where(bad: pd.Series | np.ndarray, table: pd.DataFrame, source: str | Path, column: str, problem: str,
                fix: str) -> None:
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return
    first = int(np.flatnonzero(bad)[0])
    case = _text(table["case_id"].iloc[first]) if "case_id" in table.columns else None
    where = f"row {first + 2}" + (f" (case {case})" if case else "")  # +2: header line, 1-based rows
    value = table[column].iloc[first]
    shown = "" if _text(value) is None else f" ({value!r})"
    count = int(bad.sum())
    more = f"; {count - 1} more row(s) alike" if count > 1 else ""
    raise UserInputError(f"column '{column}' {problem} at {where}{shown}{more}.", path=source, fix=fix + ".")


def _numbers(table: pd.DataFrame, column: str, source: str | Path) -> pd.Series:
    raw = table[column]
    text = raw if pd.api.types.is_numeric_dtype(raw) else raw.map(_text)
    numbers = pd.to_numeric(text, errors="coerce").astype(float)
    _fail_where(numbers.isna() & text.notna(), table, source, column, "is not a number",
                "write plain numbers (a dot as decimal separator) or leave the cell empty")
    return numbers


def _categories(table: pd.DataFrame, column: str, allowed: Sequence[str], source: str | Path) -> pd.Series:
    text = table[column].map(_text).map(lambda v: v.lower() if v is not None else None)
    _fail_where(text.notna() & ~text.isin(list(allowed)), table, source, column,
                f"holds a value other than {', '.join(allowed)}", f"use {', '.join(allowed)} or leave the cell empty")
    return text.astype(object).where(text.notna(), None)


def _check_ranges(table: pd.DataFrame, source: str | Path) -> None:
    for column in PROBABILITY_COLUMNS:
        values = table[column]
        _fail_where((values < 0) | (values > 1), table, source, column, "lies outside [0, 1]",
                    "give probabilities")
    proba = table[list(PROBABILITY_COLUMNS)]
    some, every = proba.notna().any(axis=1), proba.notna().all(axis=1)
    _fail_where(some & ~every, table, source, PROBABILITY_COLUMNS[int(np.argmax(proba.isna().sum()))]
                if (some & ~every).any() else "p_low", "is empty while other grade probabilities are given",
                "give all three grade probabilities or none")
    _fail_where(every & ((proba.sum(axis=1) - 1).abs() > PROBABILITY_SUM_TOLERANCE), table, source, "p_high",
                "makes the grade probabilities not sum to one", "give softmax probabilities (rows summing to 1)")
    checks = (
        ("time", ~np.isfinite(table["time"]) & table["time"].notna() | (table["time"] < 0),
         "holds a negative or infinite survival time", "give follow-up in days (>= 0)"),
        ("event", table["event"].notna() & ~table["event"].isin([0.0, 1.0]), "holds a value other than 0 or 1",
         "use 1 for an observed death, 0 for censoring"),
        ("time", table["event"].notna() & table["time"].isna(), "is empty for a case with an event status",
         "give the follow-up time of every case with an event status, or neither"),
        ("event", table["time"].notna() & table["event"].isna(), "is empty for a case with a follow-up time",
         "give the event status (0/1) of every case with a follow-up time, or neither"),
        ("log_risk", table["log_risk"].notna() & ~np.isfinite(table["log_risk"]), "holds an infinite log-risk",
         "give finite log-risks"),
        ("dice", (table["dice"] < 0) | (table["dice"] > 1), "lies outside [0, 1]", "give Dice coefficients"),
        ("hd95", table["hd95"] < 0, "is negative", "give distances in mm (inf or empty when undefined)"),
        ("fold", table["fold"].notna() & (table["fold"] != np.round(table["fold"])), "is not a whole number",
         "give fold indices"),
    )
    for column, bad, problem, fix in checks:
        _fail_where(bad, table, source, column, problem, fix)
