"""Compare methods on their out-of-fold predictions: every task's metrics with bootstrap 95% intervals,
and paired bootstrap differences against a reference method.

The out-of-fold (OOF) prediction table has one row per case and method (CSV, columns of
:data:`OOF_COLUMNS`; only ``case_id`` and ``method`` are required, a method leaves empty the tasks it
does not predict)::

    case_id, method, fold, grade_true, p_low, p_intermediate, p_high, grade_pred,
    time, event, log_risk, risk_group, dice, hd95, train_risk_cutoff

An experiment folder holds ``oof_predictions.csv`` (all methods) and ``experiment.json`` (methods,
reference, folds, seed, cohort manifest, prediction folders); a multi-task run folder holds
``oof_predictions.csv`` (method ``multitask``), ``manifest.json`` and maybe ``predictions/``.
:func:`load_oof_source` reads either.

Metrics of one method (:func:`method_metrics`), each computed by the reference implementations of
:mod:`sarcomakit.evaluation.classification` and :mod:`sarcomakit.evaluation.survival`:

- segmentation: mean Dice and mean HD95 (mm) over the cases with a finite value;
- grade: macro one-vs-rest AUC, high-vs-rest AUC, balanced accuracy of the arg-max class, ECE of the
  top-label confidence and of ``p(high)``, over the cases with a known grade and probabilities;
- survival: Harrell's C; Uno's C, whose censoring distribution ``G`` is the Kaplan-Meier estimate on the
  same OOF cases (no separate training set exists for pooled out-of-fold risks, and every case was
  held out exactly once), counting deaths before the last follow-up time (where ``G`` stays positive);
  cumulative/dynamic AUC at the 25th, 50th and 75th percentiles of the death
  times and its Kaplan-Meier-weighted mean; the integrated Brier score of ``S(t | x) = S0(t)^exp(risk)``
  over 50 times from the 10th to the 90th percentile of follow-up, where the Breslow baseline ``S0`` of
  a fold's cases is fitted on the OOF risks of the *other* folds (their risks were not fitted on the
  case's data), falling back to all OOF cases when there is one fold or the other folds have no death;
  the log-rank p-value between the predicted low- and high-risk groups (``risk_group``, else
  ``log_risk > train_risk_cutoff``, else the median log-risk).

Intervals are percentile bootstrap intervals over cases (the cases of a task are resampled jointly,
with the references ``G``, ``S0`` and the time grid held fixed). A paired difference
``metric(method) - metric(reference)`` is computed on the cases both methods predicted, resampling those
cases jointly for both; its two-sided p-value shifts the bootstrap distribution to zero
(Efron & Tibshirani, 1993): ``p = (1 + #{|d* - d| >= |d|}) / (B + 1)`` over the ``B`` finite resamples.

A metric that cannot be computed (a missing column, no death, a single grade class) is left out with a
note; nothing is silently NaN.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sarcomakit.data.manifest import GRADES, Manifest
from sarcomakit.errors import SarcomakitError, UserInputError
from sarcomakit.evaluation.bootstrap import bootstrap_indices, paired_bootstrap_difference
from sarcomakit.evaluation.classification import (
    HIGH,
    balanced_accuracy,
    encode_grades,
    high_grade_ece,
    one_vs_rest_aucs,
    resampled_intervals,
    top_label_ece,
)
from sarcomakit.evaluation.survival import (
    breslow_survival_function,
    censoring_survival,
    cumulative_dynamic_auc,
    default_evaluation_times,
    harrell_c_index,
    integrated_brier_score,
    logrank_test,
    uno_c_index,
)
from sarcomakit.io.atomic import atomic_path, write_text

OOF_FILE = "oof_predictions.csv"
EXPERIMENT_FILE = "experiment.json"
RUN_MANIFEST_FILE = "manifest.json"
RUN_PREDICTIONS_DIR = "predictions"
PROBABILITY_COLUMNS: tuple[str, ...] = tuple(f"p_{grade}" for grade in GRADES)
NUMERIC_COLUMNS: tuple[str, ...] = ("fold", *PROBABILITY_COLUMNS, "time", "event", "log_risk", "dice", "hd95",
                                    "train_risk_cutoff")
OOF_COLUMNS: tuple[str, ...] = ("case_id", "method", "fold", "grade_true", *PROBABILITY_COLUMNS, "grade_pred",
                                "time", "event", "log_risk", "risk_group", "dice", "hd95", "train_risk_cutoff")
RISK_GROUPS: tuple[str, ...] = ("low", "high")
N_BRIER_GRID = 50
PROBABILITY_SUM_TOLERANCE = 0.01


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is shown and compared: its label, task, and which direction is better (None: neither)."""

    label: str
    task: str
    higher_is_better: bool | None


METRICS: dict[str, MetricInfo] = {
    "dice_mean": MetricInfo("Dice (mean)", "segmentation", True),
    "hd95_mean": MetricInfo("HD95, mm (mean)", "segmentation", False),
    "auc_macro_ovr": MetricInfo("Grade AUC, macro one-vs-rest", "grade", True),
    "auc_high_vs_rest": MetricInfo("Grade AUC, high vs rest", "grade", True),
    "balanced_accuracy": MetricInfo("Grade balanced accuracy", "grade", True),
    "ece_top_label": MetricInfo("Grade ECE, top label", "grade", False),
    "ece_high": MetricInfo("Grade ECE, p(high)", "grade", False),
    "c_index_harrell": MetricInfo("Harrell's C-index", "survival", True),
    "c_index_uno": MetricInfo("Uno's C-index (IPCW)", "survival", True),
    "td_auc_mean": MetricInfo("Time-dependent AUC, mean", "survival", True),
    "integrated_brier_score": MetricInfo("Integrated Brier score", "survival", False),
    "logrank_p": MetricInfo("Log-rank p, low vs high risk", "survival", None),
}
GRADE_METRIC_NAMES: tuple[str, ...] = ("auc_macro_ovr", "auc_high_vs_rest", "balanced_accuracy", "ece_top_label",
                                       "ece_high")
TD_AUC_PREFIX = "td_auc@"


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of a metric name, including ``td_auc@<days>`` ones."""
    if name.startswith(TD_AUC_PREFIX):
        return MetricInfo(f"Time-dependent AUC at {name[len(TD_AUC_PREFIX):]} days", "survival", True)
    return METRICS[name]


def metric_order(name: str) -> tuple[int, float]:
    """Sort key putting metrics in the order of :data:`METRICS` (per-time AUCs by time, before their mean)."""
    names = list(METRICS)
    if name.startswith(TD_AUC_PREFIX):
        return names.index("td_auc_mean"), float(name[len(TD_AUC_PREFIX):]) - 1e12
    return (names.index(name), 0.0) if name in names else (len(names), 0.0)


# ---------------------------------------------------------------------- reading
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


@dataclass
class OOFSource:
    """The out-of-fold predictions of an experiment folder or a multi-task run folder, with what surrounds them.

    Attributes:
        root: the folder read.
        kind: ``"experiment"`` (``experiment.json`` present) or ``"run"``.
        oof: the validated OOF table.
        methods: method names, in the experiment's order (then any other method in the table).
        reference: the experiment's reference method, or None when it does not name one.
        cohort: the cohort manifest, or None when absent or unreadable (see ``notes``).
        prediction_dirs: folder of predicted masks per method (None: no masks).
        settings: the experiment's settings (folds, seed...) for the report.
        notes: what could not be read, and why.
    """

    root: Path
    kind: str
    oof: pd.DataFrame
    methods: list[str]
    reference: str | None
    cohort: Manifest | None
    prediction_dirs: dict[str, Path | None]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def choose_reference(self, requested: str | None = None) -> str:
        """The reference method: ``requested`` when given, else the experiment's, else ``multitask`` when
        present, else the first method.

        Raises:
            UserInputError: ``requested`` (or the experiment's reference) has no predictions here.
        """
        reference = requested or self.reference or ("multitask" if "multitask" in self.methods else self.methods[0])
        if reference not in self.methods:
            raise UserInputError(f"has no out-of-fold predictions of method {reference!r} "
                                 f"(methods: {', '.join(self.methods)}).", path=self.root / OOF_FILE,
                                 fix="pick the reference with --reference among the methods listed.")
        return reference


def load_oof_source(source_dir: str | Path) -> OOFSource:
    """Read an experiment folder (``oof_predictions.csv`` + ``experiment.json``) or a run folder
    (``oof_predictions.csv`` + ``manifest.json`` + maybe ``predictions/``).

    Relative paths in ``experiment.json`` are resolved against the experiment folder.

    Raises:
        UserInputError: the folder or its ``oof_predictions.csv`` is missing, or ``experiment.json`` is
            not valid JSON.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise UserInputError("folder not found.", path=root,
                             fix="give an experiment folder or a multi-task run folder.")
    oof_path = root / OOF_FILE
    if not oof_path.is_file():
        raise UserInputError(f"holds no {OOF_FILE}.", path=root,
                             fix="give the folder of 'sarcomakit experiment' or of a multi-task "
                                 "'sarcomakit train' run (it writes the out-of-fold predictions there).")
    oof = load_oof(oof_path)
    in_table = list(dict.fromkeys(oof["method"]))
    notes: list[str] = []
    experiment_path = root / EXPERIMENT_FILE
    if experiment_path.is_file():
        try:
            settings = json.loads(experiment_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserInputError(f"is not valid JSON ({exc.msg}, line {exc.lineno}).", path=experiment_path,
                                 fix="repair the file or rerun the experiment.") from exc
        if not isinstance(settings, dict):
            raise UserInputError("is not an experiment description (a JSON object).", path=experiment_path,
                                 fix="rerun the experiment.")
        declared = [str(m) for m in settings.get("methods") or []]
        methods = [m for m in declared if m in in_table] + [m for m in in_table if m not in declared]
        for method in declared:
            if method not in in_table:
                notes.append(f"method {method} is declared in {EXPERIMENT_FILE} but has no out-of-fold predictions.")
        reference = settings.get("reference")
        cohort = _load_cohort(_resolve(root, settings.get("cohort")), notes)
        prediction_dirs = {m: _resolve(root, (settings.get("prediction_dirs") or {}).get(m)) for m in methods}
        kind = "experiment"
    else:
        settings, methods, reference, kind = {}, in_table, None, "run"
        manifest_path = root / RUN_MANIFEST_FILE
        cohort = _load_cohort(manifest_path if manifest_path.is_file() else None, notes)
        predictions = root / RUN_PREDICTIONS_DIR
        prediction_dirs = {m: (predictions if predictions.is_dir() else None) for m in methods}
    for method, folder in prediction_dirs.items():
        if folder is not None and not folder.is_dir():
            notes.append(f"prediction folder of {method} not found: {folder}")
            prediction_dirs[method] = None
    return OOFSource(root=root, kind=kind, oof=oof, methods=methods,
                     reference=str(reference) if reference is not None else None, cohort=cohort,
                     prediction_dirs=prediction_dirs, settings=settings, notes=notes)


# ---------------------------------------------------------------------- per-task data
@dataclass(frozen=True)
class TaskData:
    """The cases of one method that one group of metrics is computed on, and those metrics.

    Attributes:
        name: identifies the group across methods (``dice``, ``hd95``, ``grade``, ``survival``).
        task: ``segmentation``, ``grade`` or ``survival``.
        case_ids: the cases, in the order the metric function indexes them.
        metric_names: the metrics ``metrics_of`` returns.
        metrics_of: every metric on the cases at the given positions (a bootstrap resample, or
            ``arange(n)`` for the point estimates), NaN where undefined.
        fixed: metrics without an interval (the log-rank p-value).
        per_case: per-case values of the metrics that are their mean (compared with
            :func:`~sarcomakit.evaluation.bootstrap.paired_bootstrap_difference`).
    """

    name: str
    task: str
    case_ids: np.ndarray
    metric_names: tuple[str, ...]
    metrics_of: Callable[[np.ndarray], dict[str, float]]
    fixed: dict[str, float] = field(default_factory=dict)
    per_case: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of cases."""
        return int(self.case_ids.size)


def task_data(df_method: pd.DataFrame, *, times: Sequence[float] | np.ndarray | None = None,
              grid: Sequence[float] | np.ndarray | None = None,
              notes: list[str] | None = None) -> list[TaskData]:
    """Group one method's OOF rows into the cases and metric functions of each task it predicts.

    Args:
        df_method: validated OOF rows of one method.
        times: times (days) of the time-dependent AUC; default the 25/50/75th percentiles of its death times.
        grid: time grid of the integrated Brier score; default 50 times from the 10th to the 90th
            percentile of its follow-up.
        notes: receives one line per task or metric left out, and why.

    Returns:
        One :class:`TaskData` per task with usable data (segmentation Dice and HD95 separately).
    """
    notes = notes if notes is not None else []
    method = str(df_method["method"].iloc[0]) if len(df_method) else "method"
    segmentation: list[TaskData | None] = []
    if df_method[["dice", "hd95"]].notna().any(axis=None):
        segmentation = [_dice_data(df_method, "dice", "dice_mean", method, notes),
                        _dice_data(df_method, "hd95", "hd95_mean", method, notes)]
    else:
        notes.append(f"{method}: segmentation metrics left out: no 'dice' or 'hd95' values.")
    found = [d for d in (*segmentation,
                         _grade_data(df_method, method, notes),
                         _survival_data(df_method, method, notes, times, grid)) if d is not None]
    return found


def method_metrics(df_method: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0,
                   times: Sequence[float] | np.ndarray | None = None,
                   grid: Sequence[float] | np.ndarray | None = None, confidence: float = 0.95,
                   notes: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Every metric one method's OOF predictions allow, with percentile bootstrap intervals.

    Args:
        df_method: validated OOF rows of one method (e.g. ``oof[oof.method == "multitask"]``).
        n_bootstrap: bootstrap resamples over cases (0: no intervals).
        seed: seed of the resampling (the same seed resamples each task's cases the same way as
            :func:`~sarcomakit.evaluation.classification.grade_metrics`).
        times, grid: see :func:`task_data`.
        confidence: coverage of the intervals.
        notes: receives one line per metric left out, and why.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high", "n"}}``, metrics named as in :data:`METRICS` plus
        ``td_auc@<days>``; ``n`` is the number of cases used; ``logrank_p`` has no interval (NaN bounds).
        Undefined metrics are absent (with a note), never NaN values.
    """
    notes = notes if notes is not None else []
    method = str(df_method["method"].iloc[0]) if len(df_method) else "method"
    results: dict[str, dict[str, float]] = {}
    for data in task_data(df_method, times=times, grid=grid, notes=notes):
        everyone = np.arange(data.n)
        point = data.metrics_of(everyone)
        defined = {name: value for name, value in point.items() if math.isfinite(value)}
        for name in point:
            if name not in defined:
                notes.append(f"{method}: {metric_info(name).label} left out: undefined on these {data.n} cases "
                             f"({_undefined_reason(data, name)}).")
        intervals = resampled_intervals(
            defined, lambda idx, data=data, names=tuple(defined): _subset(data.metrics_of(idx), names),
            n=data.n, n_bootstrap=n_bootstrap, seed=seed, confidence=confidence)
        for name, entry in intervals.items():
            results[name] = {**entry, "n": float(data.n)}
        for name, value in data.fixed.items():
            if math.isfinite(value):
                results[name] = {"value": float(value), "ci_low": math.nan, "ci_high": math.nan,
                                 "n": float(data.n)}
            else:
                notes.append(f"{method}: {metric_info(name).label} left out: undefined "
                             f"({_undefined_reason(data, name)}).")
    return dict(sorted(results.items(), key=lambda item: metric_order(item[0])))


# ---------------------------------------------------------------------- comparison
@dataclass
class ComparisonResult:
    """Metrics of several methods side by side, and their paired differences against a reference.

    Attributes:
        table: one row per metric (index: metric name); columns ``task``, ``metric`` (its label), one
            column per method with ``"value [ci_low, ci_high]"``, then numeric columns
            ``<method> value``, ``<method> ci_low``, ``<method> ci_high``, ``<method> n``.
        differences: one row per method (other than the reference) and metric: ``method``, ``reference``,
            ``metric``, ``label``, ``task``, ``n`` (cases both predicted), ``estimate``,
            ``estimate_reference``, ``difference`` (method - reference), ``ci_low``, ``ci_high``,
            ``p_value``, ``better`` (the method the point difference favours, from the metric's direction).
        notes: metrics left out and why.
        metrics: the long form: one row per method and metric (value, ci_low, ci_high, n).
        reference: the reference method.
        methods: the methods compared, in order.
        n_bootstrap, confidence: the bootstrap settings.
    """

    table: pd.DataFrame
    differences: pd.DataFrame
    notes: list[str]
    metrics: pd.DataFrame
    reference: str
    methods: list[str]
    n_bootstrap: int
    confidence: float


DIFFERENCE_COLUMNS = ["method", "reference", "metric", "label", "task", "n", "estimate", "estimate_reference",
                      "difference", "ci_low", "ci_high", "p_value", "better"]


def compare_methods(oof: pd.DataFrame | str | Path, reference: str = "multitask", *, n_bootstrap: int = 1000,
                    seed: int = 0, confidence: float = 0.95, methods: Sequence[str] | None = None,
                    times: Sequence[float] | None = None) -> ComparisonResult:
    """Metrics of every method with bootstrap intervals, and paired differences against ``reference``.

    All methods are evaluated at the same time-dependent AUC times and on the same Brier time grid,
    both taken from the cohort's survival data (each case once).

    Args:
        oof: the OOF table (a DataFrame, validated here, or the path of its CSV).
        reference: the method the others are compared with.
        n_bootstrap: bootstrap resamples for intervals and paired differences.
        seed: bootstrap seed (the same resamples for every method).
        confidence: coverage of the intervals.
        methods: the methods to compare, in order (default: all, the reference first).
        times: times of the time-dependent AUC (default: 25/50/75th percentiles of the death times).

    Returns:
        A :class:`ComparisonResult`.

    Raises:
        UserInputError: ``reference`` or a requested method has no predictions in the table.
    """
    table = load_oof(oof) if isinstance(oof, str | Path) else validate_oof(oof)
    available = list(dict.fromkeys(table["method"]))
    chosen = list(methods) if methods is not None else [reference, *(m for m in available if m != reference)]
    for name in dict.fromkeys([reference, *chosen]):
        if name not in available:
            raise UserInputError(f"method {name!r} has no out-of-fold predictions (methods: {', '.join(available)}).",
                                 fix="pick the reference with --reference among the methods listed.")
    if reference not in chosen:
        chosen.insert(0, reference)
    cohort_times, grid = cohort_survival_times(table)
    eval_times = cohort_times if times is None else np.asarray(times, float)
    notes: list[str] = []
    per_method = {m: method_metrics(table[table["method"] == m], n_bootstrap=n_bootstrap, seed=seed,
                                    times=eval_times, grid=grid, confidence=confidence, notes=notes)
                  for m in chosen}
    long = pd.DataFrame([{"method": m, "metric": name, "label": metric_info(name).label,
                          "task": metric_info(name).task, **entry}
                         for m, entries in per_method.items() for name, entry in entries.items()],
                        columns=["method", "metric", "label", "task", "value", "ci_low", "ci_high", "n"])
    differences = _differences(table, chosen, reference, eval_times, grid, n_bootstrap, seed, confidence, notes)
    return ComparisonResult(table=_wide_table(per_method, chosen), differences=differences, notes=notes,
                            metrics=long, reference=reference, methods=chosen, n_bootstrap=n_bootstrap,
                            confidence=confidence)


def cohort_survival_times(oof: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    """Time-dependent AUC times and Brier time grid of a cohort, from each case's follow-up counted once.

    Returns:
        ``(times, grid)``: the 25/50/75th percentiles of the death times inside follow-up, and
        :data:`N_BRIER_GRID` times from the 10th to the 90th percentile of follow-up (None without
        survival data or when that range is empty).
    """
    known = oof[oof["time"].notna() & oof["event"].notna()].drop_duplicates("case_id")
    if known.empty:
        return np.empty(0), None
    time, event = known["time"].to_numpy(float), known["event"].to_numpy(float)
    low, high = np.percentile(time, [10, 90])
    grid = np.linspace(low, high, N_BRIER_GRID) if high > low else None
    return default_evaluation_times(time, event), grid


def write_comparison(result: ComparisonResult, out_dir: str | Path) -> dict[str, Path]:
    """Write ``comparison.csv`` (the wide table), ``comparison.md`` (readable tables and notes) and
    ``differences.csv`` into ``out_dir``, each atomically.

    Returns:
        ``{"comparison.csv": path, "comparison.md": path, "differences.csv": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("comparison.csv", "comparison.md", "differences.csv")}
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
             "over cases.", "", _markdown_table(display_table(result)), ""]
    if not result.differences.empty:
        lines += [f"## Paired differences against {result.reference}", "",
                  "Difference = method - reference on the cases both predicted; paired bootstrap interval and "
                  "two-sided p-value.", "", _markdown_table(display_differences(result)), ""]
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


def format_number(value: float) -> str:
    """3 decimals (1 from 100 up, 3 significant digits below 0.001); NaN as "–"."""
    if value is None or not math.isfinite(value):
        return "–"
    if abs(value) >= 100:
        return f"{value:.1f}"
    if 0 < abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.3f}"


def format_estimate(value: float, low: float, high: float) -> str:
    """``"value [low, high]"``, or the value alone without an interval."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return format_number(value)
    return f"{format_number(value)} [{format_number(low)}, {format_number(high)}]"


def format_p_value(p_value: float) -> str:
    """A p-value with 2 significant digits, "< 0.001" below that; NaN as "–"."""
    if p_value is None or not math.isfinite(p_value):
        return "–"
    return "< 0.001" if p_value < 0.001 else f"{p_value:.2g}"


# ---------------------------------------------------------------------- internals: tasks
def _dice_data(df: pd.DataFrame, column: str, metric: str, method: str, notes: list[str]) -> TaskData | None:
    values = df[column].to_numpy(float)
    finite = np.isfinite(values)
    if not finite.any():
        reason = f"no finite {column} value" if df[column].notna().any() else f"no '{column}' column values"
        notes.append(f"{method}: {metric_info(metric).label} left out: {reason}.")
        return None
    if (~finite & df[column].notna().to_numpy()).any():
        notes.append(f"{method}: {int((~finite & df[column].notna().to_numpy()).sum())} case(s) with an infinite "
                     f"{column} (empty prediction or reference) left out of its mean.")
    kept = values[finite]
    return TaskData(column, "segmentation", df["case_id"].to_numpy()[finite], (metric,),
                    lambda idx: {metric: float(kept[idx].mean())}, per_case={metric: kept})


def _grade_data(df: pd.DataFrame, method: str, notes: list[str]) -> TaskData | None:
    has_proba = df[list(PROBABILITY_COLUMNS)].notna().all(axis=1)
    has_grade = df["grade_true"].notna()
    if not has_proba.any():
        notes.append(f"{method}: grade metrics left out: no grade probabilities ({', '.join(PROBABILITY_COLUMNS)}).")
        return None
    usable = (has_proba & has_grade).to_numpy()
    if not usable.any():
        notes.append(f"{method}: grade metrics left out: no case with both a known grade and probabilities.")
        return None
    y = encode_grades(df["grade_true"].to_numpy()[usable])
    proba = df[list(PROBABILITY_COLUMNS)].to_numpy(float)[usable]
    present = sorted({GRADES[k] for k in y})
    if len(present) < 2:
        notes.append(f"{method}: only grade {present[0]} among the {y.size} labelled cases: AUCs are undefined.")

    def metrics_of(idx: np.ndarray) -> dict[str, float]:
        y_at, p_at = y[idx], proba[idx]
        # The one-vs-rest AUCs once per resample (what macro_ovr_auc and high_vs_rest_auc compute).
        aucs = one_vs_rest_aucs(y_at, p_at)
        return {"auc_macro_ovr": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else math.nan,
                "auc_high_vs_rest": float(aucs[HIGH]), "balanced_accuracy": balanced_accuracy(y_at, p_at),
                "ece_top_label": top_label_ece(y_at, p_at), "ece_high": high_grade_ece(y_at, p_at)}

    return TaskData("grade", "grade", df["case_id"].to_numpy()[usable], GRADE_METRIC_NAMES, metrics_of)


def _survival_data(df: pd.DataFrame, method: str, notes: list[str], times: Sequence[float] | np.ndarray | None,
                   grid: Sequence[float] | np.ndarray | None) -> TaskData | None:
    has_risk = df["log_risk"].notna()
    if not has_risk.any():
        notes.append(f"{method}: survival metrics left out: no 'log_risk' values.")
        return None
    usable = (has_risk & df["time"].notna() & df["event"].notna()).to_numpy()
    if not usable.any():
        notes.append(f"{method}: survival metrics left out: no case with follow-up, event and a log-risk.")
        return None
    rows = df[usable]
    time, event, risk = (rows[c].to_numpy(float) for c in ("time", "event", "log_risk"))
    case_ids = rows["case_id"].to_numpy()
    if event.sum() == 0:
        notes.append(f"{method}: survival metrics left out: no death among the {time.size} cases.")
        return None
    eval_times = default_evaluation_times(time, event) if times is None else np.unique(np.asarray(times, float))
    if grid is None:
        low, high = np.percentile(time, [10, 90])
        grid = np.linspace(low, high, N_BRIER_GRID) if high > low else None
    grid = None if grid is None else np.asarray(grid, float)
    censoring = censoring_survival(time, event)  # G from the same OOF cases, held fixed under resampling
    tau = float(time.max())  # deaths at the last follow-up are not counted, so G > 0 at every counted death
    names = ["c_index_harrell", "c_index_uno"]
    if eval_times.size:
        names += [f"{TD_AUC_PREFIX}{t:g}" for t in eval_times] + (["td_auc_mean"] if eval_times.size > 1 else [])
    else:
        notes.append(f"{method}: time-dependent AUC left out: no death time inside follow-up.")
    if grid is not None:
        survival = out_of_fold_survival(time, event, risk, rows["fold"].to_numpy(float), grid, notes, method)
        names.append("integrated_brier_score")
    else:
        notes.append(f"{method}: integrated Brier score left out: follow-up times span no interval.")

    def metrics_of(idx: np.ndarray) -> dict[str, float]:
        t, e, r = time[idx], event[idx], risk[idx]
        values = {"c_index_harrell": harrell_c_index(t, e, r),
                  "c_index_uno": uno_c_index(t, e, r, tau=tau, censoring=censoring)}
        if eval_times.size:
            aucs, mean_auc = cumulative_dynamic_auc(t, e, r, eval_times, censoring=censoring)
            values.update({f"{TD_AUC_PREFIX}{tk:g}": float(a) for tk, a in zip(eval_times, aucs, strict=True)})
            if eval_times.size > 1:
                values["td_auc_mean"] = mean_auc
        if grid is not None:
            values["integrated_brier_score"] = integrated_brier_score(t, e, survival[idx], grid, censoring=censoring)
        return values

    high, how = predicted_high_risk(rows)
    if how != "risk_group":
        notes.append(f"{method}: risk groups from {how} (no risk_group column).")
    fixed = {"logrank_p": logrank_test(time, event, high)["p_value"]}
    return TaskData("survival", "survival", case_ids, tuple(names), metrics_of, fixed=fixed)


def predicted_high_risk(rows: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Whether each row is in the predicted high-risk group, and where that came from.

    ``risk_group`` when every row has one, else ``log_risk > train_risk_cutoff`` when every row has a
    cutoff (the training fold's median, an honest split), else ``log_risk`` above its median.
    """
    if rows["risk_group"].notna().all():
        return (rows["risk_group"] == "high").to_numpy(), "risk_group"
    risk = rows["log_risk"].to_numpy(float)
    if rows["train_risk_cutoff"].notna().all():
        return risk > rows["train_risk_cutoff"].to_numpy(float), "log_risk > train_risk_cutoff"
    return risk > np.median(risk), "log_risk above its median"


def out_of_fold_survival(time: np.ndarray, event: np.ndarray, risk: np.ndarray, fold: np.ndarray,
                         grid: np.ndarray, notes: list[str] | None = None, method: str = "method") -> np.ndarray:
    """Survival probabilities ``S0(t)^exp(risk)`` of each case at each grid time, shape (N, T).

    The Breslow baseline ``S0`` of the cases of fold ``f`` is fitted on the cases of the other folds;
    when folds are unknown, there is a single fold, or the other folds hold no death, it is fitted on
    all cases (an in-sample baseline, with a note).
    """
    survival = np.empty((time.size, grid.size))
    everyone = breslow_survival_function(time, event, risk)
    folds = np.unique(fold[np.isfinite(fold)])
    fallback = not np.all(np.isfinite(fold)) or folds.size < 2
    for f in folds if not fallback else []:
        members = fold == f
        others = ~members
        if event[others].sum() == 0:
            fallback = True
            break
        survival[members] = breslow_survival_function(time[others], event[others], risk[others])(risk[members], grid)
    if fallback:
        survival = everyone(risk, grid)
        if notes is not None:
            notes.append(f"{method}: Breslow baseline of the Brier score fitted on all out-of-fold cases "
                         "(folds unknown, single, or without deaths elsewhere).")
    return survival


def _undefined_reason(data: TaskData, name: str) -> str:
    if data.task == "grade" and name.startswith("auc"):
        return "a class absent"
    if name == "logrank_p":
        return "a risk group is empty"
    if name.startswith(TD_AUC_PREFIX) or name == "td_auc_mean":
        return "no death or no survivor at an evaluation time"
    if name == "c_index_uno":
        return "censoring distribution reaches zero before a death"
    return "no comparable cases"


# ---------------------------------------------------------------------- internals: comparison
def _wide_table(per_method: dict[str, dict[str, dict[str, float]]], methods: list[str]) -> pd.DataFrame:
    names = sorted({name for entries in per_method.values() for name in entries}, key=metric_order)
    rows = []
    for name in names:
        info = metric_info(name)
        row: dict[str, Any] = {"task": info.task, "metric": info.label}
        for m in methods:
            entry = per_method[m].get(name)
            row[m] = (format_p_value(entry["value"]) if name == "logrank_p" else
                      format_estimate(entry["value"], entry["ci_low"], entry["ci_high"])) if entry else "–"
        for m in methods:
            entry = per_method[m].get(name, {})
            for key in ("value", "ci_low", "ci_high", "n"):
                row[f"{m} {key}"] = entry.get(key, math.nan)
        rows.append(row)
    columns = ["task", "metric", *methods, *(f"{m} {k}" for m in methods for k in ("value", "ci_low", "ci_high", "n"))]
    return pd.DataFrame(rows, index=pd.Index(names, name="metric_name"), columns=columns)


def _differences(table: pd.DataFrame, methods: list[str], reference: str, times: np.ndarray,
                 grid: np.ndarray | None, n_bootstrap: int, seed: int, confidence: float,
                 notes: list[str]) -> pd.DataFrame:
    # The notes of the second pass repeat those of method_metrics: collect them apart and drop them.
    scratch: list[str] = []
    data_of = {m: {d.name: d
                   for d in task_data(table[table["method"] == m], times=times, grid=grid, notes=scratch)}
               for m in methods}
    rows = []
    for method in methods:
        if method == reference:
            continue
        for key, mine in data_of[method].items():
            theirs = data_of[reference].get(key)
            if theirs is None:
                continue
            shared, mine_at, theirs_at = np.intersect1d(mine.case_ids, theirs.case_ids, return_indices=True)
            if shared.size < 2:
                notes.append(f"{method} vs {reference}: fewer than two shared cases for {key}.")
                continue
            for name, result in _paired_differences(mine, theirs, mine_at, theirs_at, n_bootstrap, seed,
                                                    confidence).items():
                if not math.isfinite(result["difference"]):
                    notes.append(f"{method} vs {reference}: {metric_info(name).label} difference undefined on "
                                 f"the {shared.size} shared cases.")
                    continue
                info = metric_info(name)
                better = "–"
                if info.higher_is_better is not None and result["difference"] != 0:
                    better = method if (result["difference"] > 0) == info.higher_is_better else reference
                rows.append({"method": method, "reference": reference, "metric": name, "label": info.label,
                             "task": info.task, **result, "better": better})
    frame = pd.DataFrame(rows, columns=DIFFERENCE_COLUMNS)
    if not frame.empty:
        frame = frame.iloc[sorted(range(len(frame)), key=lambda i: (methods.index(frame["method"].iloc[i]),
                                                                    metric_order(frame["metric"].iloc[i])))]
    return frame.reset_index(drop=True)


def _paired_differences(mine: TaskData, theirs: TaskData, mine_at: np.ndarray, theirs_at: np.ndarray,
                        n_bootstrap: int, seed: int, confidence: float) -> dict[str, dict[str, float]]:
    """Paired bootstrap differences of the metrics two methods share, on the shared cases at positions
    ``mine_at`` and ``theirs_at`` (the same case at the same position), resampled jointly."""
    names = [n for n in mine.metric_names if n in theirs.metric_names]
    results: dict[str, dict[str, float]] = {}
    for name in [n for n in names if n in mine.per_case and n in theirs.per_case]:
        # A mean of per-case values: exactly the bootstrap module's paired difference.
        paired = paired_bootstrap_difference(mine.per_case[name][mine_at], theirs.per_case[name][theirs_at],
                                             n_resamples=max(n_bootstrap, 1), confidence=confidence, seed=seed)
        with_interval = n_bootstrap > 0
        results[name] = {"n": paired["n"], "estimate": paired["estimate_a"],
                         "estimate_reference": paired["estimate_b"], "difference": paired["difference"],
                         **{key: paired[key] if with_interval else math.nan
                            for key in ("ci_low", "ci_high", "p_value")}}
    names = [n for n in names if n not in results]
    if not names:
        return results
    estimate, estimate_reference = mine.metrics_of(mine_at), theirs.metrics_of(theirs_at)
    draws: dict[str, list[float]] = {name: [] for name in names}
    if n_bootstrap > 0:
        for idx in bootstrap_indices(mine_at.size, n_bootstrap, seed):
            ours, reference = mine.metrics_of(mine_at[idx]), theirs.metrics_of(theirs_at[idx])
            for name in names:
                draws[name].append(ours[name] - reference[name])
    alpha = 1.0 - confidence
    for name in names:
        difference = estimate[name] - estimate_reference[name]
        sample = np.asarray(draws[name], dtype=float)
        sample = sample[np.isfinite(sample)]
        low = high = p_value = math.nan
        if sample.size >= 2 and math.isfinite(difference):
            low, high = (float(q) for q in np.quantile(sample, [alpha / 2, 1 - alpha / 2]))
            p_value = (1 + int(np.sum(np.abs(sample - difference) >= abs(difference)))) / (sample.size + 1)
        results[name] = {"n": int(mine_at.size), "estimate": float(estimate[name]),
                         "estimate_reference": float(estimate_reference[name]), "difference": float(difference),
                         "ci_low": low, "ci_high": high, "p_value": p_value}
    return results


def _subset(values: dict[str, float], names: Sequence[str]) -> dict[str, float]:
    return {name: values[name] for name in names}


def _markdown_table(table: pd.DataFrame) -> str:
    # Written out rather than DataFrame.to_markdown, which needs the optional 'tabulate' package.
    def cell(value: Any) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(cell(c) for c in table.columns) + " |"
    rule = "|" + "|".join("---" for _ in table.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


# ---------------------------------------------------------------------- internals: validation
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


def _resolve(root: Path, value: Any) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else root / path


def _load_cohort(path: Path | None, notes: list[str]) -> Manifest | None:
    if path is None:
        notes.append("no cohort manifest: overlays are left out.")
        return None
    try:
        return Manifest.load(path)
    except SarcomakitError as exc:
        notes.append(f"cohort manifest unreadable, overlays left out: {exc}")
        return None
