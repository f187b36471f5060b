"""Evaluate a folder of predicted masks against the reference labels of a cohort manifest.

For each case, the prediction ``{prediction_dir}/{case_id}.nii.gz`` (or ``.nii``, ``.nrrd``,
``.mha``, ``.mhd``, ``.nhdr``) is read with the manifest's label, checked to lie on the label's
grid, and compared per foreground label with :func:`~sarcomakit.evaluation.metrics.segmentation_metrics`
using the label's physical spacing. Outputs, each written atomically in ``out_dir``:

- ``metrics_per_case.csv``: one row per case and label;
- ``summary.json``: per label and metric, n, mean, sd, median and a bootstrap 95% CI of the mean,
  with the cases that were missing or failed;
- ``metrics.png``: the per-case distributions of Dice, HD95, surface Dice and volume difference.

Example:
    >>> result = evaluate_predictions("predictions", "cohort/manifest.csv", "evaluation")  # doctest: +SKIP
    >>> result.summary["metrics"]["tumour"]["dice"]["mean"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from sarcomakit.core.cohort_runner import run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path, write_json
from sarcomakit.core.io.image import Geometry, read_image
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.data.validation import check_case_headers
from sarcomakit.evaluation.bootstrap import summarise
from sarcomakit.evaluation.formatting import format_interval, format_number
from sarcomakit.evaluation.metrics import METRIC_LABELS, METRIC_NAMES, segmentation_metrics

#: Suffixes tried for ``{case_id}{suffix}`` in a prediction folder, in this order.
PREDICTION_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")
#: Metrics shown in the printed summary and the figure.
HEADLINE_METRICS: tuple[str, ...] = ("dice", "hd95", "surface_dice", "volume_diff_ml")
PER_CASE_FILE = "metrics_per_case.csv"
SUMMARY_FILE = "summary.json"
FIGURE_FILE = "metrics.png"


@dataclass
class SegmentationEvaluation:
    """Result of :func:`evaluate_predictions`.

    Attributes:
        per_case: one row per evaluated case and foreground label: ``case_id``, ``label`` (name),
            ``label_value`` and the metrics of :data:`~sarcomakit.evaluation.metrics.METRIC_NAMES`.
        summary: what ``summary.json`` holds; ``summary["metrics"][label][metric]`` has ``n``,
            ``n_missing``, ``mean``, ``sd``, ``median``, ``ci_low``, ``ci_high``.
        failures: case id -> why evaluating the case failed (unreadable file, wrong grid, ...).
        missing: case id -> why the case was not evaluated (no prediction file, no label).
        out_dir: the folder the files were written to.
    """

    per_case: pd.DataFrame
    summary: dict[str, Any]
    failures: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    out_dir: Path | None = None

    def mean(self, metric: str = "dice", label: str | None = None) -> float:
        """Cohort mean of ``metric`` for ``label`` (the first foreground label by default)."""
        return float(self.metric_summary(metric, label)["mean"])

    def metric_summary(self, metric: str, label: str | None = None) -> dict[str, float]:
        """Summary entry (n, mean, sd, median, ci_low, ci_high) of ``metric`` for ``label``."""
        by_label = self.summary["metrics"]
        if not by_label:
            raise KeyError("no label was evaluated")
        return by_label[label if label is not None else next(iter(by_label))][metric]

    def summary_table(self, metrics: Sequence[str] = HEADLINE_METRICS) -> pd.DataFrame:
        """The summary as a table: one row per label and metric (for printing and reports)."""
        rows = []
        for label, entries in self.summary["metrics"].items():
            for metric in metrics:
                entry = entries[metric]
                rows.append({"label": label, "metric": METRIC_LABELS.get(metric, metric), "n": entry["n"],
                             "mean": entry["mean"], "sd": entry["sd"], "median": entry["median"],
                             "ci95_low": entry["ci_low"], "ci95_high": entry["ci_high"]})
        table = pd.DataFrame(rows, columns=["label", "metric", "n", "mean", "sd", "median", "ci95_low", "ci95_high"])
        if table["label"].nunique() <= 1:
            table = table.drop(columns="label")
        return table

    def print(self, console: Console | None = None) -> None:
        """Print the summary table (mean, sd, median, 95% CI per metric), then missing and failed cases."""
        console = console or Console()
        n_cases = self.summary["n_evaluated"]
        table = Table(title=f"Segmentation evaluation: {n_cases} case(s), surface Dice at "
                            f"{self.summary['tolerance_mm']:g} mm")
        summary = self.summary_table()
        show_label = "label" in summary.columns
        if show_label:
            table.add_column("label")
        table.add_column("metric")
        for name in ("n", "mean", "sd", "median", "95% CI"):
            table.add_column(name, justify="right")
        for row in summary.itertuples(index=False):
            cells = [escape(str(row.label))] if show_label else []
            cells += [row.metric, str(row.n), format_number(row.mean), format_number(row.sd),
                      format_number(row.median), format_interval(row.ci95_low, row.ci95_high)]
            table.add_row(*cells)
        console.print(table)
        if self.missing:
            shown = ", ".join(list(self.missing)[:8]) + (" ..." if len(self.missing) > 8 else "")
            console.print(f"{len(self.missing)} case(s) not evaluated (no prediction or no label): {escape(shown)}",
                          highlight=False)
        for case_id, message in self.failures.items():
            console.print(f"[red]failed[/red] {escape(case_id)}: {escape(message)}", highlight=False, soft_wrap=True)


def evaluate_predictions(prediction_dir: str | Path, manifest: Manifest | str | Path, out_dir: str | Path, *,
                         tolerance_mm: float = 2.0, labels: list[int] | None = None,
                         case_ids: Iterable[str] | None = None, n_resamples: int = 2000, seed: int = 0,
                         console: Console | None = None, show_progress: bool = True) -> SegmentationEvaluation:
    """Evaluate predicted masks against a manifest's labels and write the CSV, JSON and figure.

    Args:
        prediction_dir: folder of predictions named ``{case_id}.nii.gz`` (or another image suffix).
        manifest: the cohort (a :class:`Manifest` or the path of its CSV/JSON).
        out_dir: folder for ``metrics_per_case.csv``, ``summary.json`` and ``metrics.png``.
        tolerance_mm: surface Dice tolerance in mm.
        labels: foreground label values to evaluate; default: every non-zero label the manifest declares.
        case_ids: cases to evaluate (e.g. the held-out fold); default: every case of the manifest.
        n_resamples: bootstrap resamples for the confidence intervals.
        seed: bootstrap seed.
        console: where the progress bar goes (stderr by default).
        show_progress: show a progress bar.

    Returns:
        A :class:`SegmentationEvaluation`. Cases without prediction or label are listed in
        ``missing``; cases that could not be evaluated (unreadable file, prediction off the label's
        grid, channels and label of the case off one grid) in ``failures``, with a message naming the
        file; the others are evaluated.

    Raises:
        UserInputError: the prediction folder or manifest is missing, a requested case is not in the
            manifest, or no manifest case has both a prediction and a label.
    """
    prediction_dir = Path(prediction_dir)
    out_dir = Path(out_dir)
    if not prediction_dir.is_dir():
        raise UserInputError("prediction folder not found.", path=prediction_dir,
                             fix="give the folder 'sarcomakit predict' wrote the masks to.")
    if tolerance_mm < 0 or not math.isfinite(tolerance_mm):
        raise UserInputError(f"surface Dice tolerance must be a finite number >= 0 mm, got {tolerance_mm}.",
                             fix="pass e.g. --tolerance-mm 2.")
    cohort = manifest if isinstance(manifest, Manifest) else Manifest.load(manifest)
    cases = _select_cases(cohort, case_ids)
    label_names = _label_names(cohort, labels)

    missing: dict[str, str] = {}
    to_evaluate: list[tuple[Case, Path]] = []
    for case in cases:
        if case.label is None:
            missing[case.case_id] = "no reference label in the manifest"
            continue
        prediction = find_prediction(prediction_dir, case.case_id)
        if prediction is None:
            missing[case.case_id] = f"no prediction {prediction_dir / (case.case_id + '.nii.gz')}"
            continue
        to_evaluate.append((case, prediction))
    if not to_evaluate:
        example = prediction_dir / f"{cases[0].case_id}.nii.gz" if cases else prediction_dir / "CASE.nii.gz"
        raise UserInputError(f"holds no prediction for any labelled case of {cohort.source or 'the manifest'}.",
                             path=prediction_dir,
                             fix=f"name each prediction after its case id (e.g. {example}) and check that "
                                 "the manifest lists labels.")

    def evaluate(item: tuple[Case, Path]) -> list[dict[str, Any]]:
        case, prediction = item
        # a case whose channels and label are off one grid is not trustworthy; evaluating needs no channel
        # voxels, so their headers are checked, and only for the files that are there
        check_case_headers(replace(case, images={ch: p for ch, p in case.images.items() if p.exists()}),
                           cohort.channels)
        assert case.label is not None  # cases without a reference were left out above
        return evaluate_case(prediction, case.label, label_names, tolerance_mm=tolerance_mm)

    outcome = run_per_case(to_evaluate, evaluate, name=lambda item: item[0].case_id, description="evaluate",
                           console=console, show_progress=show_progress)
    rows = []
    for case, _ in to_evaluate:
        for row in outcome.results.get(case.case_id, []):
            rows.append({"case_id": case.case_id, **({"site": case.site} if _has_sites(cases) else {}), **row})
    columns = ["case_id", *(["site"] if _has_sites(cases) else []), "label", "label_value", *METRIC_NAMES]
    per_case = pd.DataFrame(rows, columns=columns)

    summary = _summarise(per_case, label_names, tolerance_mm=tolerance_mm, n_resamples=n_resamples, seed=seed)
    summary.update({"n_cases": len(cases), "n_evaluated": len(outcome.results),
                    "missing": missing, "failures": dict(outcome.failures)})
    evaluation = SegmentationEvaluation(per_case=per_case, summary=summary, failures=dict(outcome.failures),
                                        missing=missing, out_dir=out_dir)
    _write_outputs(evaluation, out_dir)
    return evaluation


def evaluate_case(prediction_path: str | Path, reference_path: str | Path, labels: dict[int, str], *,
                  tolerance_mm: float = 2.0) -> list[dict[str, Any]]:
    """Metrics of one predicted label map against its reference, one dict per foreground label.

    Raises:
        UserInputError: a file is unreadable, the prediction is not on the reference's grid
            (size, spacing, origin, direction), or it holds non-integer values.
    """
    prediction_path, reference_path = Path(prediction_path), Path(reference_path)
    reference_image = read_image(reference_path)
    prediction_image = read_image(prediction_path)
    check_same_grid(prediction_image, reference_image, prediction_path, reference_path)
    reference = _label_array(reference_image, reference_path)
    prediction = _label_array(prediction_image, prediction_path)
    spacing = Geometry.of(reference_image).array_spacing
    return [{"label": name, "label_value": value,
             **segmentation_metrics(prediction == value, reference == value, spacing, tolerance_mm=tolerance_mm)}
            for value, name in labels.items()]


def check_same_grid(image: sitk.Image, reference: sitk.Image, image_path: Path, reference_path: Path) -> None:
    """Raise a :class:`UserInputError` naming both files unless ``image`` lies on ``reference``'s grid."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserInputError(f"has {image.GetNumberOfComponentsPerPixel()} components per voxel, not a label map.",
                             path=image_path, fix="give a single-channel mask of integer labels.")
    ours, theirs = Geometry.of(image), Geometry.of(reference)
    if ours.matches(theirs):
        return
    differences = []
    for name in ("size", "spacing", "origin", "direction"):
        a, b = getattr(ours, name), getattr(theirs, name)
        if len(a) != len(b) or not np.allclose(a, b, atol=1e-3):
            differences.append(f"{name} {_fmt_tuple(a)} vs {_fmt_tuple(b)}")
    raise UserInputError(f"is not on the grid of its reference label {reference_path} "
                         f"({'; '.join(differences) or 'geometry differs'}).", path=image_path,
                         fix="write the prediction in the label's geometry (as 'sarcomakit predict' does) "
                             "or resample it onto the label with nearest-neighbour interpolation.")


def find_prediction(prediction_dir: Path, case_id: str) -> Path | None:
    """The prediction file of ``case_id`` in ``prediction_dir``, or None when there is none.

    Raises:
        UserInputError: several files match (e.g. ``.nii.gz`` and ``.nrrd``), which one is meant is unclear.
    """
    found = [prediction_dir / f"{case_id}{suffix}" for suffix in PREDICTION_SUFFIXES
             if (prediction_dir / f"{case_id}{suffix}").is_file()]
    if len(found) > 1:
        raise UserInputError(f"holds several predictions for case {case_id}: "
                             f"{', '.join(p.name for p in found)}.", path=prediction_dir,
                             fix="keep one prediction file per case.")
    return found[0] if found else None


# ---------------------------------------------------------------------- internals
def _select_cases(cohort: Manifest, case_ids: Iterable[str] | None) -> list[Case]:
    if case_ids is None:
        return list(cohort.cases)
    wanted = list(dict.fromkeys(case_ids))
    unknown = [cid for cid in wanted if cid not in set(cohort.case_ids)]
    if unknown:
        raise UserInputError(f"has no case(s) {', '.join(unknown)}.", path=cohort.source or "manifest",
                             fix="give case ids that the manifest lists.")
    return cohort.subset(wanted).cases


def _label_names(cohort: Manifest, labels: list[int] | None) -> dict[int, str]:
    declared = {int(value): name for name, value in cohort.labels.items()}
    values = sorted(v for v in declared if v != 0) if labels is None else list(dict.fromkeys(int(v) for v in labels))
    if not values:
        raise UserInputError("declares no foreground label.", path=cohort.source or "manifest",
                             fix="declare the labels, e.g. '# labels: background=0,tumour=1', or pass --label 1.")
    if 0 in values:
        raise UserInputError("label 0 is the background and cannot be evaluated.", fix="pass foreground labels.")
    return {value: declared.get(value, f"label_{value}") for value in values}


def _label_array(image: sitk.Image, path: Path) -> np.ndarray:
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not (
            np.all(np.isfinite(array)) and np.array_equal(array, np.round(array))):
        raise UserInputError("holds non-integer values, not a label map.", path=path,
                             fix="give integer labels (threshold probability maps first).")
    return array


def _has_sites(cases: list[Case]) -> bool:
    return any(case.site is not None for case in cases)


def _summarise(per_case: pd.DataFrame, label_names: dict[int, str], *, tolerance_mm: float, n_resamples: int,
               seed: int) -> dict[str, Any]:
    confidence = 0.95
    metrics: dict[str, dict[str, dict[str, float]]] = {}
    for name in label_names.values():
        rows = per_case[per_case["label"] == name]
        metrics[name] = {metric: summarise(rows[metric].to_numpy(dtype=float), n_resamples=n_resamples,
                                           confidence=confidence, seed=seed)
                         for metric in METRIC_NAMES}
    return {"tolerance_mm": tolerance_mm, "confidence": confidence, "ci": "bootstrap percentile, of the mean",
            "n_resamples": n_resamples, "seed": seed,
            "units": {"hd95": "mm", "volume_pred_ml": "ml", "volume_ref_ml": "ml", "volume_diff_ml": "ml"},
            "labels": {name: value for value, name in label_names.items()}, "metrics": metrics}


def _write_outputs(evaluation: SegmentationEvaluation, out_dir: Path) -> None:
    from sarcomakit.reporting.figures import metric_distribution_figure

    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / PER_CASE_FILE) as tmp:
        evaluation.per_case.to_csv(tmp, index=False, float_format="%.6g")
    write_json(out_dir / SUMMARY_FILE, _json_safe(evaluation.summary))
    tolerance = evaluation.summary["tolerance_mm"]
    columns = {metric: METRIC_LABELS[metric] for metric in HEADLINE_METRICS}
    columns["surface_dice"] = f"Surface Dice ({tolerance:g} mm)"
    metric_distribution_figure(
        evaluation.per_case, out_dir / FIGURE_FILE, columns, group="label",
        title=f"Segmentation metrics per case ({evaluation.summary['n_evaluated']} cases)",
        limits={"dice": (0.0, 1.02), "surface_dice": (0.0, 1.02)},
    )


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null: strict JSON readers reject them."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    return value


def _fmt_tuple(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
