"""Paired differences between methods on the cases both predicted, with bootstrap intervals and p-values.

A difference ``metric(method) - metric(reference)`` is computed on the cases both methods predicted,
resampling those cases jointly for both (the same case at the same position), so the interval accounts
for the pairing. Its interval and two-sided p-value are those of
:func:`~sarcomakit.evaluation.bootstrap.difference_interval`:
``p = (1 + #{|d* - d| >= |d|}) / (B + 1)`` over the ``B`` finite resamples (Efron & Tibshirani, 1993).
A mean of per-case values (Dice, HD95) goes through
:func:`~sarcomakit.evaluation.bootstrap.paired_bootstrap_difference`.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sarcomakit.evaluation.bootstrap import bootstrap_indices, difference_interval, paired_bootstrap_difference
from sarcomakit.evaluation.metric_catalogue import metric_info, metric_order
from sarcomakit.evaluation.task_data import TaskData, task_data

DIFFERENCE_COLUMNS = ["method", "reference", "metric", "label", "task", "n", "estimate", "estimate_reference",
                      "difference", "ci_low", "ci_high", "p_value", "better"]


def paired_differences(oof: pd.DataFrame, methods: list[str], reference: str, *, times: np.ndarray,
                       grid: np.ndarray | None, n_bootstrap: int, seed: int, confidence: float,
                       notes: list[str]) -> pd.DataFrame:
    """Differences of every method but ``reference`` against ``reference``, metric by metric.

    Args:
        oof: the validated OOF table.
        methods: the methods compared, in order (the reference among them).
        reference: the method the others are compared with.
        times, grid: time-dependent AUC times and Brier grid, the same for every method.
        n_bootstrap, seed, confidence: bootstrap settings (0 resamples: no intervals or p-values).
        notes: receives one line per difference left out, and why.

    Returns:
        One row per method and metric, columns :data:`DIFFERENCE_COLUMNS`: ``n`` (cases both predicted),
        ``estimate``, ``estimate_reference``, ``difference`` (method - reference), ``ci_low``, ``ci_high``,
        ``p_value``, ``better`` (the method the point difference favours, from the metric's direction);
        rows ordered by method, then metric.
    """
    # The notes of the second pass repeat those of method_metrics: collect them apart and drop them.
    scratch: list[str] = []
    data_of = {m: {d.name: d
                   for d in task_data(oof[oof["method"] == m], times=times, grid=grid, notes=scratch)}
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
            for name, result in shared_case_differences(mine, theirs, mine_at, theirs_at, n_bootstrap, seed,
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


def shared_case_differences(mine: TaskData, theirs: TaskData, mine_at: np.ndarray, theirs_at: np.ndarray,
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
    for name in names:
        difference = estimate[name] - estimate_reference[name]
        low, high, p_value = difference_interval(difference, np.asarray(draws[name], dtype=float), confidence)
        results[name] = {"n": int(mine_at.size), "estimate": float(estimate[name]),
                         "estimate_reference": float(estimate_reference[name]), "difference": float(difference),
                         "ci_low": low, "ci_high": high, "p_value": p_value}
    return results
