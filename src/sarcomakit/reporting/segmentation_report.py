"""Report sections for a segmentation evaluation: summary, per-case table, overlays of chosen cases.

The demo and ``sarcomakit evaluate --report`` use :func:`write_segmentation_report`; a larger
report (grade, survival) adds :func:`segmentation_sections` to its own sections.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from sarcomakit.core.errors import SarcomakitError
from sarcomakit.core.io.image import Geometry, read_image
from sarcomakit.data.manifest import Manifest
from sarcomakit.evaluation.metrics import METRIC_LABELS
from sarcomakit.evaluation.segmentation import FIGURE_FILE, SegmentationEvaluation, find_prediction
from sarcomakit.reporting.figures import overlay_figure
from sarcomakit.reporting.html import ReportSection, write_html_report


def choose_overlay_cases(per_case: pd.DataFrame, n: int, *, label: str | None = None,
                         metric: str = "dice") -> list[str]:
    """Up to ``n`` case ids spanning the range of ``metric``: worst, best, then evenly between.

    Showing the spread (rather than the best cases) is what lets a reader judge a model.
    """
    rows = per_case if label is None else per_case[per_case["label"] == label]
    ranked = rows.sort_values(metric, na_position="first")["case_id"].drop_duplicates().tolist()
    if n <= 0 or not ranked:
        return []
    if len(ranked) <= n:
        return ranked
    positions = np.unique(np.round(np.linspace(0, len(ranked) - 1, n)).astype(int))
    return [ranked[i] for i in positions]


def segmentation_sections(evaluation: SegmentationEvaluation, manifest: Manifest, prediction_dir: str | Path,
                          figure_dir: str | Path, *, channel: str | None = None, n_overlays: int = 4,
                          label: str | None = None) -> list[ReportSection]:
    """Report sections for an evaluation: summary with CIs, per-case metrics, overlays, cases left out.

    Args:
        evaluation: the result of :func:`~sarcomakit.evaluation.segmentation.evaluate_predictions`.
        manifest: the cohort evaluated (images and labels are read from it for the overlays).
        prediction_dir: the folder of predictions that was evaluated.
        figure_dir: where the overlay PNGs are written.
        channel: image channel under the contours; default: the manifest's first channel.
        n_overlays: number of cases shown (spread from the worst to the best Dice).
        label: label name whose contours are drawn; default: the first evaluated label.

    Returns:
        The sections, in reading order.
    """
    summary = evaluation.summary
    labels: dict[str, int] = summary.get("labels", {})
    label = label if label is not None else next(iter(labels), None)
    channel = channel if channel is not None else manifest.channels[0]
    sections = [ReportSection(
        "Segmentation metrics",
        text=(f"{summary['n_evaluated']} of {summary['n_cases']} case(s) evaluated. Dice, 95th-percentile "
              f"Hausdorff distance (HD95, mm) and normalised surface Dice at {summary['tolerance_mm']:g} mm "
              "are computed in physical units; intervals are bootstrap 95% confidence intervals of the mean "
              f"({summary['n_resamples']} resamples over cases)."),
        table=evaluation.summary_table().rename(columns={"ci95_low": "95% CI low", "ci95_high": "95% CI high"}),
        figures=[p for p in [_figure_of(evaluation)] if p is not None],
    )]
    columns = [c for c in ("case_id", "site", "label", "dice", "hd95", "surface_dice", "volume_ref_ml",
                           "volume_pred_ml", "volume_diff_ml") if c in evaluation.per_case.columns]
    headers = {**METRIC_LABELS, "surface_dice": f"Surface Dice ({summary['tolerance_mm']:g} mm)"}
    per_case = evaluation.per_case[columns].reset_index(drop=True).rename(columns=headers)
    sections.append(ReportSection("Per-case metrics", table=per_case))

    figures, notes = [], []
    for case_id in choose_overlay_cases(evaluation.per_case, n_overlays, label=label):
        try:
            figures.append(_case_overlay(evaluation, manifest, Path(prediction_dir), Path(figure_dir), case_id,
                                         channel, label, labels.get(label, 1) if label else 1))
        except (SarcomakitError, ValueError) as exc:
            notes.append(f"{case_id}: no overlay ({exc})")
    if figures or notes:
        sections.append(ReportSection(
            "Overlays",
            text=(f"Axial slices through the tumour on {channel}: reference in green, prediction in red; "
                  "cases chosen from the lowest to the highest Dice.\n\n" + "\n".join(notes)).strip(),
            figures=figures,
        ))
    left_out = [{"case_id": case_id, "status": "not evaluated", "reason": reason}
                for case_id, reason in evaluation.missing.items()]
    left_out += [{"case_id": case_id, "status": "failed", "reason": reason}
                 for case_id, reason in evaluation.failures.items()]
    if left_out:
        sections.append(ReportSection("Cases left out", table=pd.DataFrame(left_out)))
    return sections


def write_segmentation_report(evaluation: SegmentationEvaluation, manifest: Manifest, prediction_dir: str | Path,
                              path: str | Path, *, title: str = "Segmentation evaluation", subtitle: str = "",
                              channel: str | None = None, n_overlays: int = 4,
                              metadata: dict[str, Any] | None = None,
                              extra_sections: Sequence[ReportSection] = ()) -> Path:
    """Write a self-contained HTML report of an evaluation; overlay PNGs go to ``<report>_figures/``.

    Returns:
        ``path``.
    """
    target = Path(path)
    figure_dir = target.with_name(f"{target.stem}_figures")
    sections = segmentation_sections(evaluation, manifest, prediction_dir, figure_dir, channel=channel,
                                     n_overlays=n_overlays)
    info = {"manifest": manifest.source or "(in memory)", "predictions": str(prediction_dir), **(metadata or {})}
    return write_html_report(target, title, [*sections, *extra_sections], subtitle=subtitle, metadata=info)


# ---------------------------------------------------------------------- internals
def _figure_of(evaluation: SegmentationEvaluation) -> Path | None:
    if evaluation.out_dir is None:
        return None
    path = evaluation.out_dir / FIGURE_FILE
    return path if path.is_file() else None


def _case_overlay(evaluation: SegmentationEvaluation, manifest: Manifest, prediction_dir: Path, figure_dir: Path,
                  case_id: str, channel: str, label: str | None, label_value: int) -> Path:
    case = manifest[case_id]
    if channel not in case.images:
        raise ValueError(f"no {channel} image in the manifest")
    image = read_image(case.images[channel])
    reference_image = read_image(case.label) if case.label is not None else None
    prediction_path = find_prediction(prediction_dir, case_id)
    prediction_image = read_image(prediction_path) if prediction_path is not None else None
    for other in (reference_image, prediction_image):
        if other is not None and not Geometry.of(other).matches(Geometry.of(image)):
            raise ValueError(f"the {channel} image and the masks are on different grids")
    volume = sitk.GetArrayFromImage(image)
    if volume.ndim == 4:  # vector image: show the first component
        volume = volume[..., 0]
    reference = sitk.GetArrayViewFromImage(reference_image) == label_value if reference_image is not None else None
    prediction = sitk.GetArrayViewFromImage(prediction_image) == label_value if prediction_image is not None else None
    rows = evaluation.per_case[evaluation.per_case["case_id"] == case_id]
    if label:
        rows = rows[rows["label"] == label]
    scores = ""
    if len(rows):
        dice, hd95 = float(rows.iloc[0]["dice"]), float(rows.iloc[0]["hd95"])
        scores = f": Dice {dice:.3f}, HD95 " + (f"{hd95:.1f} mm" if np.isfinite(hd95) else "undefined")
    return overlay_figure(volume, reference, prediction, figure_dir / f"{case_id}_overlay.png",
                          title=f"{case_id}{scores}", spacing=Geometry.of(image).array_spacing)
