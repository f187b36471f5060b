"""The comparison as tables: the wide metric table, its display forms, Markdown, and the files written.

Cells read ``"value [low, high]"`` and p-values as in :mod:`sarcomakit.evaluation.formatting`; "–" marks
a metric a method does not have.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from sarcomakit.core.io.atomic import atomic_path, write_text
from sarcomakit.evaluation.formatting import MISSING, format_estimate, format_p_value
from sarcomakit.evaluation.metric_catalogue import metric_info, metric_order

if TYPE_CHECKING:
    from sarcomakit.evaluation.comparison import ComparisonResult

COMPARISON_FILES = ("comparison.csv", "comparison.md", "differences.csv")


def wide_table(per_method: dict[str, dict[str, dict[str, float]]], methods: list[str]) -> pd.DataFrame:
    """One row per metric (index: metric name): ``task``, ``metric`` (its label), one ``"value [low, high]"``
    column per method, then numeric ``<method> value``, ``ci_low``, ``ci_high`` and ``n`` columns.

    Args:
        per_method: each method's metrics (:func:`~sarcomakit.evaluation.method_metrics.method_metrics`).
        methods: the column order.
    """
    names = sorted({name for entries in per_method.values() for name in entries}, key=metric_order)
    rows = []
    for name in names:
        info = metric_info(name)
        row: dict[str, Any] = {"task": info.task, "metric": info.label}
        for m in methods:
            entry = per_method[m].get(name)
            row[m] = (format_p_value(entry["value"]) if name == "logrank_p" else
                      format_estimate(entry["value"], entry["ci_low"], entry["ci_high"])) if entry else MISSING
        for m in methods:
            entry = per_method[m].get(name, {})
            for key in ("value", "ci_low", "ci_high", "n"):
                row[f"{m} {key}"] = entry.get(key, math.nan)
        rows.append(row)
    columns = ["task", "metric", *methods, *(f"{m} {k}" for m in methods for k in ("value", "ci_low", "ci_high", "n"))]
    return pd.DataFrame(rows, index=pd.Index(names, name="metric_name"), columns=columns)


def write_comparison(result: ComparisonResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``comparison.csv`` (the wide table), ``comparison.md`` (readable tables and notes) and
    ``differences.csv`` into ``out_dir``, each atomically.

    Returns:
        ``{"comparison.csv": path, "comparison.md": path, "differences.csv": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in COMPARISON_FILES}
    with atomic_path(paths["comparison.csv"]) as tmp:
        result.table.to_csv(tmp, index_label="metric_name", float_format="%.6g")
    with atomic_path(paths["differences.csv"]) as tmp:
        result.differences.to_csv(tmp, index=False, float_format="%.6g")
    write_text(paths["comparison.md"], comparison_markdown(result))
    return paths


def comparison_markdown(result: ComparisonResult) -> str:
    """The comparison as Markdown: the metric table, the paired differences, then the notes."""
    level = f"{result.confidence:.0%}"
    lines = [f"# Method comparison (reference: {result.reference})", "",
             f"Out-of-fold predictions; value [{level} bootstrap interval], {result.n_bootstrap} resamples "
             "over cases.", "", markdown_table(display_table(result)), ""]
    if not result.differences.empty:
        lines += [f"## Paired differences against {result.reference}", "",
                  "Difference = method - reference on the cases both predicted; paired bootstrap interval and "
                  "two-sided p-value.", "", markdown_table(display_differences(result)), ""]
    if result.notes:
        lines += ["## Notes", "", *(f"- {note}" for note in result.notes), ""]
    return "\n".join(lines)


def display_table(result: ComparisonResult) -> pd.DataFrame:
    """The wide table with the metric label and one ``"value [low, high]"`` column per method."""
    return result.table[["metric", *result.methods]].reset_index(drop=True)


def display_differences(result: ComparisonResult) -> pd.DataFrame:
    """The paired differences as text: method, metric, ``"difference [low, high]"``, p-value, n, better."""
    rows = [{"method": row.method, "metric": row.label,
             "difference": format_estimate(row.difference, row.ci_low, row.ci_high),
             "p": format_p_value(row.p_value), "n": int(row.n), "better": row.better}
            for row in result.differences.itertuples(index=False)]
    return pd.DataFrame(rows, columns=["method", "metric", "difference", "p", "n", "better"])


def markdown_table(table: pd.DataFrame) -> str:
    """A DataFrame as a Markdown table (written out: ``DataFrame.to_markdown`` needs the optional
    'tabulate' package)."""
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])
