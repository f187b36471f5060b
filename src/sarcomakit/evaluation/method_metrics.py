"""Every metric of one method's out-of-fold predictions, with percentile bootstrap intervals over cases.

The cases of each task (:func:`~sarcomakit.evaluation.task_data.task_data`) are resampled jointly,
every metric of the task on the same resamples (:func:`~sarcomakit.evaluation.bootstrap.resampled_intervals`).
A metric undefined on the method's cases is left out with a note saying why, never reported as NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from sarcomakit.evaluation.bootstrap import resampled_intervals
from sarcomakit.evaluation.metric_catalogue import metric_info, metric_order
from sarcomakit.evaluation.survival import TD_AUC_PREFIX
from sarcomakit.evaluation.task_data import TaskData, task_data


def method_metrics(df_method: pd.DataFrame, *, n_bootstrap: int = 1000, seed: int = 0,
                   times: Sequence[float] | np.ndarray | None = None,
                   grid: Sequence[float] | np.ndarray | None = None, confidence: float = 0.95,
                   notes: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Every metric one method's OOF predictions allow, with percentile bootstrap intervals.

    Args:
        df_method: validated OOF rows of one method (e.g. ``oof[oof.method == "multitask"]``).
        n_bootstrap: bootstrap resamples over cases (0: no intervals).
        seed: seed of the resampling (the same seed resamples each task's cases the same way as
            :func:`~sarcomakit.evaluation.grade.grade_metrics`).
        times, grid: see :func:`~sarcomakit.evaluation.task_data.task_data`.
        confidence: coverage of the intervals.
        notes: receives one line per metric left out, and why.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high", "n"}}``, metrics named as in
        :data:`~sarcomakit.evaluation.metric_catalogue.METRICS` plus ``td_auc@<days>``; ``n`` is the number
        of cases used; ``logrank_p`` has no interval (NaN bounds).
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
        intervals = resampled_intervals(defined, data.metrics_of, n=data.n, n_bootstrap=n_bootstrap, seed=seed,
                                        confidence=confidence)
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
