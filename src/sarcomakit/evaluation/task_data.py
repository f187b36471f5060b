"""The cases and metric functions of each task one method predicts, from its out-of-fold rows.

A method comparison resamples cases, so each task is reduced to the cases it can be scored on and a
function computing its metrics on any subset of them (:class:`TaskData`); the bootstrap and the paired
differences only call that function. Metrics, each from :mod:`sarcomakit.evaluation.grade` and
:mod:`sarcomakit.evaluation.survival`:

- segmentation: mean Dice and mean HD95 (mm) over the cases with a finite value;
- grade: macro one-vs-rest AUC, high-vs-rest AUC, balanced accuracy of the arg-max class, ECE of the
  top-label confidence and of ``p(high)``, over the cases with a known grade and probabilities;
- survival: Harrell's C; Uno's C, whose censoring distribution ``G`` is the Kaplan-Meier estimate on the
  same OOF cases (no separate training set exists for pooled out-of-fold risks, and every case was
  held out exactly once), counting deaths before the last follow-up time (where ``G`` stays positive);
  cumulative/dynamic AUC at the 25th, 50th and 75th percentiles of the death times and its
  Kaplan-Meier-weighted mean; the integrated Brier score of ``S(t | x) = S0(t)^exp(risk)`` over 50 times
  from the 10th to the 90th percentile of follow-up, where the Breslow baseline ``S0`` of a fold's cases
  is fitted on the OOF risks of the *other* folds (their risks were not fitted on the case's data),
  falling back to all OOF cases when there is one fold or the other folds have no death; the log-rank
  p-value between the predicted low- and high-risk groups (``risk_group``, else
  ``log_risk > train_risk_cutoff``, else the median log-risk).

Under resampling the references (``G``, ``S0``, the time grid) stay fixed. A task or metric that cannot
be computed (a missing column, no death, a single grade class) is left out with a note.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sarcomakit.data.manifest import GRADES
from sarcomakit.evaluation.grade import encode_grades, grade_values
from sarcomakit.evaluation.metric_catalogue import COMPARED_GRADE_METRICS, metric_info
from sarcomakit.evaluation.oof import PROBABILITY_COLUMNS
from sarcomakit.evaluation.survival import (
    TD_AUC_PREFIX,
    breslow_survival_function,
    brier_time_grid,
    censoring_survival,
    default_evaluation_times,
    logrank_test,
    survival_values,
)

N_BRIER_GRID = 50


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
    return default_evaluation_times(time, event), brier_time_grid(time, N_BRIER_GRID)


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
        values = grade_values(y[idx], proba[idx])
        return {name: values[name] for name in COMPARED_GRADE_METRICS}

    return TaskData("grade", "grade", df["case_id"].to_numpy()[usable], COMPARED_GRADE_METRICS, metrics_of)


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
    grid = brier_time_grid(time, N_BRIER_GRID) if grid is None else np.asarray(grid, float)
    censoring = censoring_survival(time, event)  # G from the same OOF cases, held fixed under resampling
    tau = float(time.max())  # deaths at the last follow-up are not counted, so G > 0 at every counted death
    names = ["c_index_harrell", "c_index_uno"]
    if eval_times.size:
        names += [f"{TD_AUC_PREFIX}{t:g}" for t in eval_times] + (["td_auc_mean"] if eval_times.size > 1 else [])
    else:
        notes.append(f"{method}: time-dependent AUC left out: no death time inside follow-up.")
    survival = None
    if grid is not None:
        survival = out_of_fold_survival(time, event, risk, rows["fold"].to_numpy(float), grid, notes, method)
        names.append("integrated_brier_score")
    else:
        notes.append(f"{method}: integrated Brier score left out: follow-up times span no interval.")

    def metrics_of(idx: np.ndarray) -> dict[str, float]:
        values = survival_values(time[idx], event[idx], risk[idx], censoring=censoring, tau=tau, times=eval_times,
                                 survival=None if survival is None else survival[idx], grid=grid)
        return {name: values[name] for name in names}  # a single time's mean AUC repeats it: left out

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
