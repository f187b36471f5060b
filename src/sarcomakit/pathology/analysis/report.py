"""Text and HTML summaries of the whole-slide pipeline: metric tables and the demo report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def metrics_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Rows: balanced accuracy, macro AUC, AUC per class; columns: value, ci_low, ci_high."""
    rows = [("balanced accuracy", metrics["balanced_accuracy"]), ("macro AUC", metrics["macro_auc"])]
    rows += [(f"AUC {name}", estimate) for name, estimate in metrics["per_class_auc"].items()]
    return pd.DataFrame([{"metric": name, "value": e.value, "ci_low": e.low, "ci_high": e.high}
                         for name, e in rows])


def confusion_table(metrics: Mapping[str, Any]) -> pd.DataFrame:
    """The confusion matrix with class names (rows: true, columns: predicted)."""
    classes = metrics["classes"]
    return pd.DataFrame(np.asarray(metrics["confusion_matrix"]), index=[f"true {c}" for c in classes],
                        columns=[f"pred {c}" for c in classes])


def format_metrics(metrics: Mapping[str, Any], title: str = "") -> str:
    """Plain-text block of the slide-level metrics with their 95% intervals and the confusion matrix."""
    lines = [title] if title else []
    lines.append(f"  slides: {metrics['n']}; value [95% bootstrap interval]")
    for key, label in (("balanced_accuracy", "balanced accuracy"), ("macro_auc", "macro AUC")):
        lines.append(f"  {label}: {metrics[key]}")
    for name, estimate in metrics["per_class_auc"].items():
        lines.append(f"  AUC {name}: {estimate}")
    lines.append("  confusion matrix (rows true, columns predicted):")
    lines.extend("    " + line for line in confusion_table(metrics).to_string().splitlines())
    return "\n".join(lines)


def write_demo_report(path: str | Path, *, cohort: pd.DataFrame, cv_metrics: Mapping[str, Mapping[str, Any]],
                      best_model: str, agreement: pd.DataFrame, heatmap_pngs: Sequence[Path],
                      top_tile_pngs: Sequence[Path], thumbnails: Sequence[Path], cluster_map: Path | None,
                      cluster_examples: Path | None, composition: pd.DataFrame | None,
                      timings: Mapping[str, float], notes: Sequence[str] = ()) -> Path:
    """Write the demo's self-contained HTML report with :mod:`sarcomakit.reporting.html`."""
    from sarcomakit.reporting.html import ReportSection, write_html_report

    comparison = pd.DataFrame([{"model": model, "macro AUC": str(m["macro_auc"]),
                                "balanced accuracy": str(m["balanced_accuracy"])}
                               for model, m in cv_metrics.items()])
    sections = [
        ReportSection("Synthetic cohort", text=(
            "H&E-like synthetic slides, one tumour texture per subtype on stroma and background, with pen "
            "marks and dust. Each patient has one or two slides of the same subtype.\n\n" + "\n".join(notes)),
            table=cohort, figures=list(thumbnails)),
        ReportSection("Slide classification (patient-grouped cross-validation)", text=(
            "Out-of-fold predictions of each MIL model; 95% intervals from a bootstrap over patients."),
            table=comparison),
        ReportSection(f"Metrics of {best_model}", table=metrics_table(cv_metrics[best_model])),
        ReportSection(f"Confusion matrix of {best_model}", table=confusion_table(cv_metrics[best_model])),
        ReportSection("Does attention find the tumour?", text=(
            "Each held-out slide's attention (from the fold model that did not see it) against the true tumour "
            "mask: mean attention of tumour tiles over non-tumour tiles, and the AUC of attention for telling "
            "tumour tiles from the others (0.5 = no preference)."), table=agreement),
        ReportSection("Attention heatmaps", text="Attention percentile over the thumbnail (red: most attended).",
                      figures=list(heatmap_pngs)),
        ReportSection("Most attended tiles", figures=list(top_tile_pngs)),
    ]
    if cluster_map is not None:
        sections.append(ReportSection("Phenotype clusters", text=(
            "k-means clusters of patch embeddings sampled across the cohort; the composition table (fraction "
            "of each slide's tiles per cluster) can be used as slide features."),
            table=composition, figures=[p for p in (cluster_map, cluster_examples) if p is not None]))
    sections.append(ReportSection("Run time", table=pd.DataFrame(
        [{"step": k, "seconds": v} for k, v in timings.items()])))
    return write_html_report(path, "sarcomakit whole-slide demo", sections,
                             subtitle="tile -> embed -> MIL -> heatmaps -> clusters on synthetic slides")
