"""Compare methods on their out-of-fold predictions: every task's metrics with bootstrap 95% intervals,
and paired bootstrap differences against a reference method.

The pieces, each in its own module:

- :mod:`~sarcomakit.evaluation.oof`: the out-of-fold table (columns, validation, reading, writing), and
  :mod:`~sarcomakit.evaluation.oof_source`: the experiment or run folder holding it;
- :mod:`~sarcomakit.evaluation.task_data`: the cases and metric function of each task a method predicts;
- :mod:`~sarcomakit.evaluation.method_metrics`: one method's metrics with percentile bootstrap intervals;
- :mod:`~sarcomakit.evaluation.paired_differences`: each method against the reference on shared cases;
- :mod:`~sarcomakit.evaluation.comparison_tables`: the tables, Markdown and files written;
- :mod:`~sarcomakit.evaluation.metric_catalogue`: labels, tasks and directions of the metrics.

Every method is evaluated at the same time-dependent AUC times and on the same Brier time grid, both
taken from the cohort's survival data (each case once), and bootstrapped with the same seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from sarcomakit.core.errors import UserInputError
from sarcomakit.evaluation.comparison_tables import wide_table
from sarcomakit.evaluation.method_metrics import method_metrics
from sarcomakit.evaluation.metric_catalogue import metric_info
from sarcomakit.evaluation.oof import load_oof, validate_oof
from sarcomakit.evaluation.paired_differences import paired_differences
from sarcomakit.evaluation.task_data import cohort_survival_times


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
    differences = paired_differences(table, chosen, reference, times=eval_times, grid=grid, n_bootstrap=n_bootstrap,
                                     seed=seed, confidence=confidence, notes=notes)
    return ComparisonResult(table=wide_table(per_method, chosen), differences=differences, notes=notes,
                            metrics=long, reference=reference, methods=chosen, n_bootstrap=n_bootstrap,
                            confidence=confidence)
