"""Bootstrap confidence intervals over cases, for one sample and for paired comparisons.

Cases are the resampling unit: a 95% interval says how much a cohort-level figure (mean Dice,
median HD95, ...) would move if the study were repeated on another cohort of the same size.
Every function here ignores NaN values (a case where a metric is undefined), reports how many
values it used, and is deterministic for a given ``seed``.

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

import numpy as np
from scipy import stats

Statistic = Callable[..., float]
_SCIPY_METHODS = {"percentile": "percentile", "basic": "basic", "bca": "BCa"}


def bootstrap_indices(n: int, n_resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """Case indices of ``n_resamples`` bootstrap samples of ``n`` cases, shape (n_resamples, n).

    Use it to bootstrap a figure computed from several per-case arrays at once (an AUC from labels
    and scores, a C-index from times, events and risks) with the same resamples for every model.
    """
    if n < 1:
        raise ValueError("cannot resample an empty sample")
    return np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))


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
    the pairing. The two-sided p-value tests "no difference" by shifting the bootstrap distribution of
    the difference ``d*`` to zero (Efron & Tibshirani, 1993, ch. 16):
    ``p = (1 + #{|d* - d| >= |d|}) / (n_resamples + 1)``.

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
    alpha = 1.0 - confidence
    low, high = np.quantile(resampled, [alpha / 2, 1 - alpha / 2])
    extreme = int(np.sum(np.abs(resampled - difference) >= abs(difference)))
    return {"n": n, "estimate_a": estimate_a, "estimate_b": estimate_b, "difference": difference,
            "ci_low": float(low), "ci_high": float(high), "p_value": (1 + extreme) / (n_resamples + 1)}


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
    return np.shape(result) == (2,)


def _statistic_of_resamples(values: np.ndarray, indices: np.ndarray, statistic: Statistic) -> np.ndarray:
    if _accepts_axis(statistic):
        return np.asarray(statistic(values[indices], axis=-1), dtype=float)
    return np.array([statistic(values[row]) for row in indices], dtype=float)
