"""Percentile bootstrap intervals over cases (or patients), for one sample, for metrics of several
per-case arrays, and for paired comparisons.

Cases are the resampling unit: a 95% interval says how much a cohort-level figure (mean Dice, an AUC,
a C-index...) would move if the study were repeated on another cohort of the same size. When a patient
contributes several rows (slides, lesions), pass ``groups`` to resample patients and keep each
patient's rows together; resampling rows would treat correlated rows as independent and give intervals
that are too narrow.

- :func:`bootstrap_ci`: a statistic of one per-case sample (mean Dice...), by ``scipy.stats.bootstrap``
  (percentile, basic or BCa).
- :func:`bootstrap_metric` and :func:`resampled_intervals`: a metric of the cases at given indices (an
  AUC from labels and scores, a C-index from times, events and risks), every metric on the same
  resamples. The percentile interval of a metric is taken over the resamples where it is finite
  (a resample may lack a class), and is NaN when fewer than two are.
- :func:`paired_bootstrap_difference` and :func:`difference_interval`: the difference of two methods on
  the same cases, with a percentile interval and a two-sided p-value.

Every function is deterministic for a given ``seed``.

Example:
    >>> import numpy as np
    >>> values = np.random.default_rng(1).normal(0.8, 0.05, size=40)
    >>> low, high = bootstrap_ci(values, seed=0)
    >>> bool(low < values.mean() < high)
    True
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import stats

Statistic = Callable[..., float]
IndexMetric = Callable[[np.ndarray], Any]
_SCIPY_METHODS = {"percentile": "percentile", "basic": "basic", "bca": "BCa"}


def bootstrap_indices(n: int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Case indices of ``n_resamples`` bootstrap samples of ``n`` cases, shape (n_resamples, n).

    Use it to bootstrap a figure computed from several per-case arrays at once (an AUC from labels
    and scores, a C-index from times, events and risks) with the same resamples for every model.
    """
    if n < 1:
        raise ValueError("cannot resample an empty sample")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


def grouped_bootstrap_indices(groups: Sequence[Any] | np.ndarray, n_resamples: int = 2000,
                              seed: int = 0) -> list[np.ndarray]:
    """Row indices of ``n_resamples`` bootstrap samples of the groups (patients) of ``groups``.

    Each resample draws as many groups as there are, with replacement, and takes every row of each
    drawn group (in row order), so a resample's size varies with the groups drawn.

    Args:
        groups: the group (patient id) of each row.
        n_resamples, seed: number of resamples and seed of the generator.
    """
    unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
    if unique.size < 1:
        raise ValueError("cannot resample an empty sample")
    members = [np.flatnonzero(inverse == g) for g in range(unique.size)]
    drawn = np.random.default_rng(seed).integers(0, unique.size, size=(n_resamples, unique.size))
    return [np.concatenate([members[g] for g in row]) for row in drawn]


def resample_indices(n: int, n_resamples: int, seed: int,
                     groups: Sequence[Any] | np.ndarray | None = None) -> np.ndarray | list[np.ndarray]:
    """Row indices of each resample: of the rows (:func:`bootstrap_indices`), or of whole groups
    (:func:`grouped_bootstrap_indices`) when ``groups`` (one per row) is given; none when
    ``n_resamples`` or ``n`` is 0."""
    if n_resamples <= 0 or n <= 0:
        return []
    if groups is None:
        return bootstrap_indices(n, n_resamples, seed)
    if len(groups) != n:
        raise ValueError(f"groups must give one group per row ({n}), got {len(groups)}")
    return grouped_bootstrap_indices(groups, n_resamples, seed)


def percentile_bounds(draws: np.ndarray, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap draws, element by element over the first axis.

    Each element's bounds are the ``alpha / 2`` and ``1 - alpha / 2`` quantiles of its finite draws
    (``alpha = 1 - confidence``; linear interpolation, numpy's default); NaN where fewer than two draws
    are finite.

    Args:
        draws: shape (n_resamples, ...), one row per resample.
        confidence: coverage of the interval.

    Returns:
        ``(low, high)``, each of shape ``draws.shape[1:]``.
    """
    draws = np.asarray(draws, dtype=float)
    flat = draws.reshape(draws.shape[0], int(np.prod(draws.shape[1:])))
    alpha = 1.0 - confidence
    low, high = np.full(flat.shape[1], np.nan), np.full(flat.shape[1], np.nan)
    for j in range(flat.shape[1]):
        sample = flat[:, j][np.isfinite(flat[:, j])]
        if sample.size >= 2:
            low[j], high[j] = np.quantile(sample, [alpha / 2, 1 - alpha / 2])
    return low.reshape(draws.shape[1:]), high.reshape(draws.shape[1:])


def bootstrap_metric(metric: IndexMetric, n: int, n_resamples: int = 1000, seed: int = 0,
                     confidence: float = 0.95, groups: Sequence[Any] | np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Point estimate and percentile bootstrap interval of a metric of the rows at given indices.

    Args:
        metric: ``metric(indices) -> float or array`` computed on the rows at ``indices`` (an
            ``arange(n)`` for the point estimate); arrays of a fixed shape get an interval per element.
        n: number of rows.
        n_resamples: number of resamples (0: NaN intervals).
        seed: seed of the resampling.
        confidence: coverage of the interval.
        groups: the group (patient) of each row, to resample whole groups (:func:`grouped_bootstrap_indices`).

    Returns:
        ``(point, low, high)``, arrays of the metric's shape (0-d for a scalar metric); bounds from
        :func:`percentile_bounds` (finite resamples only).
    """
    point = np.asarray(metric(np.arange(n)), dtype=float)
    draws = [np.asarray(metric(idx), dtype=float) for idx in resample_indices(n, n_resamples, seed, groups)]
    low, high = percentile_bounds(np.array(draws).reshape(len(draws), *point.shape), confidence)
    return point, low, high


def resampled_intervals(values: dict[str, float], metrics_of: Callable[[np.ndarray], dict[str, float]], n: int,
                        n_bootstrap: int, seed: int, confidence: float,
                        groups: Sequence[Any] | np.ndarray | None = None) -> dict[str, dict[str, float]]:
    """Percentile bootstrap intervals of several named metrics computed on the same resamples.

    Args:
        values: the point estimates, by metric name.
        metrics_of: computes every metric on the rows at the given indices (it may return more names
            than ``values``: only those of ``values`` get an interval).
        n: number of rows.
        n_bootstrap: number of resamples (0: intervals are NaN).
        seed, confidence: resampling seed and interval coverage.
        groups: the group (patient) of each row, to resample whole groups.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high"}}``; NaN bounds when fewer than two resamples gave
        a finite value.
    """
    names = list(values)
    if not names:
        return {}
    draws = [[drawn[name] for name in names]
             for drawn in (metrics_of(idx) for idx in resample_indices(n, n_bootstrap, seed, groups))]
    low, high = percentile_bounds(np.asarray(draws, dtype=float).reshape(-1, len(names)), confidence)
    return {name: {"value": float(values[name]), "ci_low": float(low[k]), "ci_high": float(high[k])}
            for k, name in enumerate(names)}


def difference_interval(difference: float, draws: np.ndarray, confidence: float = 0.95
                        ) -> tuple[float, float, float]:
    """Percentile interval and two-sided p-value of a paired difference from its bootstrap draws.

    The p-value tests "no difference" by shifting the bootstrap distribution of the difference ``d*``
    to zero (Efron & Tibshirani, 1993, ch. 16): ``p = (1 + #{|d* - d| >= |d|}) / (B + 1)`` over the
    ``B`` finite draws.

    Returns:
        ``(ci_low, ci_high, p_value)``; NaN when ``difference`` is not finite or fewer than two draws are.
    """
    sample = np.asarray(draws, dtype=float).ravel()
    sample = sample[np.isfinite(sample)]
    if sample.size < 2 or not np.isfinite(difference):
        return float("nan"), float("nan"), float("nan")
    low, high = percentile_bounds(sample[:, None], confidence)
    extreme = int(np.sum(np.abs(sample - difference) >= abs(difference)))
    return float(low[0]), float(high[0]), (1 + extreme) / (sample.size + 1)


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: Statistic = np.mean,
                 n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                 method: str = "percentile") -> tuple[float, float]:
    """Bootstrap confidence interval of ``statistic`` over the finite values of ``values``.

    Resamples the values with replacement ``n_resamples`` times (``scipy.stats.bootstrap``) and
    returns the interval given by ``method``: ``"percentile"`` (the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles of the resampled statistic), ``"basic"`` or ``"bca"``
    (bias-corrected and accelerated).

    Args:
        values: per-case values; NaN values are dropped.
        statistic: a function of a 1-D array (``np.mean``, ``np.median``...); one that accepts
            ``axis=`` is evaluated on all resamples at once.
        n_resamples: number of bootstrap resamples.
        confidence: coverage of the interval, in (0, 1).
        seed: seed of the resampling generator.
        method: ``"percentile"``, ``"basic"`` or ``"bca"``.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with fewer than two finite values, ``(v, v)`` when all
        values equal ``v``.
    """
    if method not in _SCIPY_METHODS:
        raise ValueError(f"method must be one of {sorted(_SCIPY_METHODS)}, got {method!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    finite = _finite(values)
    if finite.size < 2:
        return float("nan"), float("nan")
    if np.all(finite == finite[0]):
        value = float(statistic(finite))
        return value, value
    with warnings.catch_warnings():
        # A resample statistic may be constant for tiny samples (e.g. medians); the interval is still valid.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap((finite,), statistic, n_resamples=n_resamples, confidence_level=confidence,
                                 method=_SCIPY_METHODS[method], rng=np.random.default_rng(seed),
                                 vectorized=_accepts_axis(statistic))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def paired_bootstrap_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                                statistic: Statistic = np.mean, n_resamples: int = 2000,
                                confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Difference ``statistic(a) - statistic(b)`` of two paired samples, with a bootstrap CI and p-value.

    ``a[i]`` and ``b[i]`` belong to the same case (e.g. the Dice of two models on case ``i``); pairs
    where either value is NaN are dropped. Cases are resampled jointly, so the interval accounts for
    the pairing. The interval and the two-sided p-value are those of :func:`difference_interval`.

    Returns:
        ``n`` (pairs used), ``estimate_a``, ``estimate_b``, ``difference``, ``ci_low``, ``ci_high``
        (percentile interval) and ``p_value``; NaN entries with fewer than two pairs.
    """
    first = np.asarray(a, dtype=float).ravel()
    second = np.asarray(b, dtype=float).ravel()
    if first.shape != second.shape:
        raise ValueError(f"paired samples must have the same length, got {first.size} and {second.size}")
    keep = np.isfinite(first) & np.isfinite(second)
    first, second = first[keep], second[keep]
    n = int(first.size)
    nan = float("nan")
    if n < 2:
        estimate_a = float(statistic(first)) if n else nan
        estimate_b = float(statistic(second)) if n else nan
        return {"n": n, "estimate_a": estimate_a, "estimate_b": estimate_b,
                "difference": estimate_a - estimate_b, "ci_low": nan, "ci_high": nan, "p_value": nan}
    estimate_a, estimate_b = float(statistic(first)), float(statistic(second))
    difference = estimate_a - estimate_b
    indices = bootstrap_indices(n, n_resamples, seed)
    resampled = (_statistic_of_resamples(first, indices, statistic)
                 - _statistic_of_resamples(second, indices, statistic))
    low, high, p_value = difference_interval(difference, resampled, confidence)
    return {"n": n, "estimate_a": estimate_a, "estimate_b": estimate_b, "difference": difference,
            "ci_low": low, "ci_high": high, "p_value": p_value}


def summarise(values: Sequence[float] | np.ndarray, **kw: object) -> dict[str, float]:
    """Descriptive summary of per-case values with a bootstrap CI of the mean.

    Args:
        values: per-case values; NaN values are counted in ``n_missing`` and otherwise ignored.
        **kw: passed to :func:`bootstrap_ci` (``n_resamples``, ``confidence``, ``seed``, ``method``,
            ``statistic`` to bound another statistic than the mean).

    Returns:
        ``n``, ``n_missing``, ``mean``, ``sd`` (sample, ddof=1), ``median``, ``ci_low``, ``ci_high``.
    """
    raw = np.asarray(values, dtype=float).ravel()
    finite = raw[np.isfinite(raw)]
    n = int(finite.size)
    nan = float("nan")
    low, high = bootstrap_ci(finite, **kw)  # type: ignore[arg-type]
    return {
        "n": n,
        "n_missing": int(raw.size - n),
        "mean": float(finite.mean()) if n else nan,
        "sd": float(finite.std(ddof=1)) if n > 1 else nan,
        "median": float(np.median(finite)) if n else nan,
        "ci_low": low,
        "ci_high": high,
    }


# ---------------------------------------------------------------------- internals
def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _accepts_axis(statistic: Statistic) -> bool:
    try:
        result = statistic(np.arange(6.0).reshape(2, 3), axis=-1)
    except TypeError:
        return False
    return tuple(np.shape(result)) == (2,)


def _statistic_of_resamples(values: np.ndarray, indices: np.ndarray, statistic: Statistic) -> np.ndarray:
    if _accepts_axis(statistic):
        return np.asarray(statistic(values[indices], axis=-1), dtype=float)
    return np.array([statistic(values[row]) for row in indices], dtype=float)
