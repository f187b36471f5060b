"""HTML report of the multi-task evaluation: comparison with intervals, paired differences, grade,
survival and segmentation figures, and the per-case predictions, from out-of-fold prediction tables.

It reads an experiment folder (several methods) or a multi-task run folder (one method) through
:func:`~sarcomakit.evaluation.oof_source.load_oof_source`; figures (PNG) go to ``<report>_figures/``
beside the report and are also embedded in it, so the HTML file stands alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from matplotlib.figure import Figure

from sarcomakit.core.errors import SarcomakitError
from sarcomakit.core.io.image import Geometry, read_image
from sarcomakit.data.manifest import GRADES, Manifest
from sarcomakit.evaluation.classification import confusion_matrix
from sarcomakit.evaluation.comparison import ComparisonResult, compare_methods
from sarcomakit.evaluation.comparison_tables import display_differences, display_table
from sarcomakit.evaluation.formatting import format_estimate
from sarcomakit.evaluation.grade import encode_grades
from sarcomakit.evaluation.oof import PROBABILITY_COLUMNS
from sarcomakit.evaluation.oof_source import OOFSource, load_oof_source
from sarcomakit.evaluation.segmentation import find_prediction
from sarcomakit.evaluation.survival import TD_AUC_PREFIX
from sarcomakit.evaluation.task_data import predicted_high_risk
from sarcomakit.reporting.clinical_figures import plot_kaplan_meier, plot_reliability_diagram, plot_roc_curves
from sarcomakit.reporting.figures import metric_distribution_figure, overlay_figure, save_png
from sarcomakit.reporting.html import ReportSection, write_html_report
from sarcomakit.reporting.segmentation_report import choose_overlay_cases

REPORT_FILE = "report.html"
PER_CASE_COLUMNS = ("case_id", "method", "fold", "grade_true", "grade_pred", *PROBABILITY_COLUMNS, "time", "event",
                    "log_risk", "risk_group", "dice", "hd95")


def write_multitask_report(source_dir: str | Path | OOFSource, out_path: str | Path | None = None, *,
                           reference: str | None = None, n_bootstrap: int = 1000, seed: int = 0,
                           comparison: ComparisonResult | None = None, n_overlays: int = 4) -> Path:
    """Write the self-contained HTML report of an experiment folder or a multi-task run folder.

    Sections: summary table (every metric with its bootstrap 95% interval, per method), paired
    differences against the reference, grade (ROC curves, reliability diagram, confusion matrices),
    survival (Kaplan-Meier curves of the predicted risk groups with the log-rank p-value, time-dependent
    AUC), segmentation (Dice and HD95 per case; overlays when the cohort and the masks are at hand),
    per-case predictions, notes (what was left out and why).

    Args:
        source_dir: the folder (or an already loaded :class:`OOFSource`).
        out_path: the HTML file (default ``<source_dir>/report.html``).
        reference: method the others are compared with (default: see :meth:`OOFSource.choose_reference`).
        n_bootstrap, seed: bootstrap settings of the comparison.
        comparison: a comparison already computed (then ``reference``, ``n_bootstrap`` and ``seed`` are
            not used).
        n_overlays: cases shown as overlays, spread from the lowest to the highest Dice.

    Returns:
        The report's path.

    Raises:
        UserInputError: the folder holds no valid ``oof_predictions.csv``, or the reference is unknown.
    """
    source = source_dir if isinstance(source_dir, OOFSource) else load_oof_source(source_dir)
    target = Path(out_path) if out_path is not None else source.root / REPORT_FILE
    figure_dir = target.with_name(f"{target.stem}_figures")
    figure_dir.mkdir(parents=True, exist_ok=True)
    if comparison is None:
        comparison = compare_methods(source.oof, source.choose_reference(reference), n_bootstrap=n_bootstrap,
                                     seed=seed, methods=source.methods)
    oof = source.oof[source.oof["method"].isin(comparison.methods)]
    notes = list(source.notes)
    sections = [_summary_section(source, comparison), _differences_section(comparison)]
    sections += [s for s in (_grade_section(oof, comparison, figure_dir),
                             _survival_section(oof, comparison, figure_dir),
                             _segmentation_section(source, oof, comparison, figure_dir, n_overlays, notes))
                 if s is not None]
    sections.append(_per_case_section(oof, comparison.methods))
    all_notes = [*comparison.notes, *notes]
    if all_notes:
        sections.append(ReportSection("Notes", text="\n".join(all_notes)))
    metadata: dict[str, Any] = {"source": str(source.root), "kind": source.kind, "methods": comparison.methods,
                                "reference": comparison.reference, "cases": int(oof["case_id"].nunique()),
                                "bootstrap resamples": comparison.n_bootstrap}
    metadata.update({key: source.settings[key] for key in ("folds", "seed", "cohort")
                     if source.settings.get(key) is not None})
    title = "Multi-task evaluation" if source.kind == "run" else "Method comparison"
    return write_html_report(target, title, sections, metadata=metadata,
                             subtitle="Segmentation, histological grade and survival from out-of-fold predictions")


# ---------------------------------------------------------------------- sections
def _summary_section(source: OOFSource, comparison: ComparisonResult) -> ReportSection:
    level = f"{comparison.confidence:.0%}"
    text = (f"Out-of-fold predictions of {len(comparison.methods)} method(s) on "
            f"{source.oof['case_id'].nunique()} case(s): each case is predicted by the model that did not see it "
            f"in training. Each cell shows the value and its {level} percentile bootstrap interval "
            f"({comparison.n_bootstrap} resamples over cases); '–' means the method does not predict that task "
            "or the metric is undefined (see the notes). Lower is better for HD95, ECE and the Brier score.")
    table = display_table(comparison)
    table.insert(0, "task", comparison.table["task"].to_numpy())
    return ReportSection("Summary", text=text, table=table)


def _differences_section(comparison: ComparisonResult) -> ReportSection:
    title = f"Paired differences against {comparison.reference}"
    if comparison.differences.empty:
        return ReportSection(title, text=f"No other method shares a task with {comparison.reference}: nothing to "
                                         "compare.")
    text = ("Difference = method - reference, on the cases both methods predicted, with a paired bootstrap "
            f"{comparison.confidence:.0%} interval (both methods resampled on the same cases) and a two-sided "
            "bootstrap p-value for 'no difference'. 'better' names the method the point difference favours.")
    return ReportSection(title, text=text, table=display_differences(comparison))


def _grade_section(oof: pd.DataFrame, comparison: ComparisonResult, figure_dir: Path) -> ReportSection | None:
    figures: list[Path] = []
    matrices = []
    for method in comparison.methods:
        rows = _grade_rows(oof, method)
        if rows is None:
            continue
        y, proba = rows
        figures.append(plot_roc_curves(y, proba, figure_dir / f"grade_roc_{_safe(method)}.png",
                                       title=f"{method}: grade ROC curves\n"
                                             f"{_with_interval(comparison, method, 'auc_macro_ovr', 'macro AUC')}"))
        ece = _with_interval(comparison, method, "ece_high", "ECE p(high)")
        figures.append(plot_reliability_diagram(y, proba, figure_dir / f"grade_reliability_{_safe(method)}.png",
                                                title=f"{method}: grade calibration\n{ece}"))
        counts = confusion_matrix(y, proba.argmax(axis=1), len(GRADES))
        for k, grade in enumerate(GRADES):
            matrices.append({"method": method, "true grade": grade,
                             **{f"predicted {g}": int(counts[k, j]) for j, g in enumerate(GRADES)}})
    if not figures:
        return None
    text = ("One-vs-rest ROC curves of each grade; reliability diagrams of p(high) and of the top-label "
            "confidence over ten equal-width bins (points on the diagonal are calibrated); confusion matrices of "
            "the most probable grade against the true grade.")
    return ReportSection("Grade", text=text, table=pd.DataFrame(matrices), figures=figures)


def _survival_section(oof: pd.DataFrame, comparison: ComparisonResult, figure_dir: Path) -> ReportSection | None:
    figures: list[Path] = []
    origins = []
    for method in comparison.methods:
        rows = oof[(oof["method"] == method) & oof["log_risk"].notna() & oof["time"].notna() & oof["event"].notna()]
        if rows.empty or rows["event"].sum() == 0:
            continue
        high, how = predicted_high_risk(rows)
        origins.append(f"{method}: groups from {how}")
        # The groups are given per case (each fold has its own cutoff): plot the group indicator split at 0.5.
        figures.append(plot_kaplan_meier(rows["time"].to_numpy(float), rows["event"].to_numpy(float),
                                         high.astype(float), figure_dir / f"kaplan_meier_{_safe(method)}.png",
                                         cutoff=0.5, title=f"{method}: survival by predicted risk group\n"
                                         f"{_with_interval(comparison, method, 'c_index_harrell', 'C-index')}"))
    td_auc = comparison.metrics[comparison.metrics["metric"].str.startswith(TD_AUC_PREFIX)]
    table = None
    if not td_auc.empty:
        figures.append(_plot_td_auc(td_auc, comparison.methods, figure_dir / "time_dependent_auc.png"))
        table = td_auc.assign(time=td_auc["metric"].str[len(TD_AUC_PREFIX):].astype(float))[
            ["method", "time", "value", "ci_low", "ci_high", "n"]].rename(
            columns={"time": "time (days)", "value": "AUC", "ci_low": "95% CI low", "ci_high": "95% CI high"})
    if not figures:
        return None
    text = ("Kaplan-Meier curves of the predicted low- and high-risk groups (ticks: censored cases) with the "
            "log-rank p-value; " + "; ".join(origins) + ". Cumulative/dynamic AUC of the log-risk at the 25th, "
            "50th and 75th percentiles of the death times (deaths by t against cases still followed after t, "
            "IPCW-weighted), with bootstrap intervals.")
    return ReportSection("Survival", text=text, table=table, figures=figures)


def _segmentation_section(source: OOFSource, oof: pd.DataFrame, comparison: ComparisonResult, figure_dir: Path,
                          n_overlays: int, notes: list[str]) -> ReportSection | None:
    rows = oof[oof["dice"].notna() | oof["hd95"].notna()]
    if rows.empty:
        return None
    table = rows[["case_id", "method", "dice", "hd95"]].copy()
    table["hd95"] = table["hd95"].where(np.isfinite(table["hd95"]))
    figures = [metric_distribution_figure(table, figure_dir / "segmentation_metrics.png",
                                          {"dice": "Dice", "hd95": "HD95 (mm)"}, group="method",
                                          title="Segmentation: out-of-fold Dice and HD95 per case",
                                          limits={"dice": (0.0, 1.02)})]
    text = ("Dice and 95th-percentile Hausdorff distance of each case's out-of-fold mask, one box per method.")
    shown = _overlay_method(source, rows, comparison)
    if shown is not None and source.cohort is not None and n_overlays > 0:
        method_rows = rows[rows["method"] == shown]
        overlays = []
        for case_id in choose_overlay_cases(method_rows, n_overlays):
            try:
                dice = method_rows.loc[method_rows["case_id"] == case_id, "dice"].iloc[0]
                overlays.append(_case_overlay(source.cohort, source.prediction_dirs[shown], case_id, shown, dice,
                                              figure_dir / f"overlay_{_safe(shown)}_{_safe(case_id)}.png"))
            except (SarcomakitError, KeyError, ValueError) as exc:
                notes.append(f"overlay of {case_id} left out: {exc}")
        if overlays:
            figures += overlays
            text += (f" Overlays of {shown}: axial slices through the tumour on {source.cohort.channels[0]}, "
                     "reference in green, prediction in red, cases from the lowest to the highest Dice.")
    elif n_overlays > 0:
        notes.append("no overlays: they need the cohort manifest and a folder of predicted masks.")
    return ReportSection("Segmentation", text=text, figures=figures)


def _per_case_section(oof: pd.DataFrame, methods: list[str]) -> ReportSection:
    columns = [c for c in PER_CASE_COLUMNS if c in ("case_id", "method") or oof[c].notna().any()]
    order = {m: k for k, m in enumerate(methods)}
    table = (oof[columns].assign(_order=oof["method"].map(order)).sort_values(["case_id", "_order"])
             .drop(columns="_order").reset_index(drop=True))
    for column in ("fold", "event"):
        if column in table:
            table[column] = table[column].astype("Int64")
    for column in ("grade_true", "grade_pred", "risk_group"):
        if column in table:
            table[column] = table[column].fillna("–")
    return ReportSection("Per-case predictions", text="One row per case and method (out-of-fold).", table=table)


# ---------------------------------------------------------------------- figures and helpers
def _plot_td_auc(td_auc: pd.DataFrame, methods: list[str], path: Path) -> Path:
    figure = Figure(figsize=(5.6, 4.0))
    axes = figure.add_subplot()
    times = td_auc["metric"].str[len(TD_AUC_PREFIX):].astype(float)
    offsets = np.linspace(-0.015, 0.015, max(len(methods), 1)) * (times.max() - times.min() or 1.0)
    for offset, method in zip(offsets, methods, strict=True):
        mine = td_auc["method"] == method
        if not mine.any():
            continue
        t = times[mine].to_numpy() + offset
        value = td_auc.loc[mine, "value"].to_numpy(float)
        low, high = td_auc.loc[mine, "ci_low"].to_numpy(float), td_auc.loc[mine, "ci_high"].to_numpy(float)
        error = np.vstack([value - np.where(np.isfinite(low), low, value),
                           np.where(np.isfinite(high), high, value) - value])
        axes.errorbar(t, value, yerr=error, marker="o", capsize=3, label=method)
    axes.axhline(0.5, color="0.7", linestyle="--", linewidth=1, label="chance")
    axes.set(ylim=(0, 1.02), xlabel="time (days)", ylabel="cumulative/dynamic AUC",
             title="Time-dependent AUC with 95% intervals")
    axes.legend(loc="lower right", fontsize=8, frameon=False)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return save_png(figure, path)


def _with_interval(comparison: ComparisonResult, method: str, metric: str, name: str) -> str:
    """``"name value [low, high] (95% CI)"`` from the comparison, or an empty string when it has none."""
    rows = comparison.metrics[(comparison.metrics["method"] == method) & (comparison.metrics["metric"] == metric)]
    if rows.empty:
        return ""
    row = rows.iloc[0]
    level = f"{comparison.confidence:.0%}"
    return f"{name} {format_estimate(row['value'], row['ci_low'], row['ci_high'])} ({level} CI)"


def _grade_rows(oof: pd.DataFrame, method: str) -> tuple[np.ndarray, np.ndarray] | None:
    rows = oof[(oof["method"] == method) & oof["grade_true"].notna()
               & oof[list(PROBABILITY_COLUMNS)].notna().all(axis=1)]
    if rows.empty:
        return None
    return encode_grades(rows["grade_true"].to_numpy()), rows[list(PROBABILITY_COLUMNS)].to_numpy(float)


def _overlay_method(source: OOFSource, rows: pd.DataFrame, comparison: ComparisonResult) -> str | None:
    """The method whose masks are shown: the reference when it has masks, else the first that has."""
    candidates = [comparison.reference, *comparison.methods]
    for method in candidates:
        if source.prediction_dirs.get(method) is not None and (rows["method"] == method).any():
            return method
    return None


def _case_overlay(cohort: Manifest, prediction_dir: Path | None, case_id: str, method: str, dice: float,
                  path: Path) -> Path:
    case = cohort[case_id]
    if prediction_dir is None:
        raise ValueError("no prediction folder")
    channel = cohort.channels[0]
    if channel not in case.images:
        raise ValueError(f"no {channel} image in the manifest")
    prediction_path = find_prediction(prediction_dir, case_id)
    if prediction_path is None:
        raise ValueError(f"no predicted mask in {prediction_dir}")
    image = read_image(case.images[channel])
    foreground = _foreground_value(cohort)
    masks: list[np.ndarray | None] = []
    for mask_path in (case.label, prediction_path):
        if mask_path is None:
            masks.append(None)
            continue
        mask_image = read_image(mask_path)
        if not Geometry.of(mask_image).matches(Geometry.of(image)):
            raise ValueError(f"{mask_path.name} is not on the grid of the {channel} image")
        array = sitk.GetArrayViewFromImage(mask_image)
        masks.append(array == foreground if foreground is not None else array > 0)
    volume = sitk.GetArrayFromImage(image)
    if volume.ndim == 4:  # vector image: show the first component
        volume = volume[..., 0]
    title = f"{case_id} ({method})" + (f": Dice {dice:.3f}" if np.isfinite(dice) else "")
    return overlay_figure(volume, masks[0], masks[1], path, title=title, spacing=Geometry.of(image).array_spacing)


def _foreground_value(cohort: Manifest) -> int | None:
    """The first declared non-zero label (the tumour); None means every non-zero voxel."""
    values = sorted(v for v in cohort.labels.values() if v != 0)
    return values[0] if values else None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
