"""Survival metrics for a predicted risk score: concordance, time-dependent AUC, Brier score, Kaplan-Meier.

Conventions: ``time`` is the follow-up (days), ``event`` 1 for an observed death and 0 for censoring,
``risk`` a score where *higher means worse* (a Cox log-risk). Beware that lifelines'
``concordance_index`` expects the opposite (a predicted survival time), so pass it ``-risk``.

Definitions (each checked against lifelines or scikit-survival in the tests):

- Harrell's C: over comparable pairs (``i`` died at ``t_i`` and ``j`` was still followed after
  ``t_i``, or was censored at ``t_i``), the fraction with ``risk_i > risk_j``; tied risks count 1/2.
- Uno's C: the same with each pair weighted by ``1 / G(t_i)^2``, ``G`` the Kaplan-Meier estimate of the
  censoring distribution on a reference (training) set, and only deaths before ``tau`` counted
  (Uno et al., 2011). Less dependent on the censoring pattern than Harrell's.
- Cumulative/dynamic AUC at ``t``: cases died by ``t`` (IPCW-weighted ``1/G(t_i)``), controls still
  followed after ``t``; its mean over several ``t`` is weighted by the Kaplan-Meier drop (Lambert &
  Chevret, 2014), as in scikit-survival.
- Brier score at ``t`` (Graf et al., 1999): ``mean_i [ 1{t_i<=t, died} S(t|x_i)^2 / G(t_i)
  + 1{t_i>t} (1 - S(t|x_i))^2 / G(t) ]``; the integrated Brier score is its trapezoidal integral
  over a time grid divided by the grid's span. ``S(t|x) = S0(t)^exp(risk)`` from a Breslow baseline.
- Log-rank test between predicted low and high risk groups (two-sided chi-square, 1 degree of freedom).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import chi2

from sarcomakit.evaluation.bootstrap import resampled_intervals

ArrayLike = np.ndarray | list[float]
TD_AUC_PREFIX = "td_auc@"


# ---------------------------------------------------------------------- Kaplan-Meier
@dataclass(frozen=True)
class StepFunction:
    """A right-continuous step function: ``value_before`` until ``times[0]``, then ``values[k]`` on
    ``[times[k], times[k+1])``."""

    times: np.ndarray
    values: np.ndarray
    value_before: float = 1.0

    def __call__(self, t: ArrayLike | float) -> np.ndarray:
        t = np.asarray(t, dtype=float)
        index = np.searchsorted(self.times, t, side="right") - 1
        return np.where(index < 0, self.value_before, self.values[np.clip(index, 0, None)])


@dataclass(frozen=True)
class KaplanMeierCurve:
    """Kaplan-Meier estimate at every distinct observed time, with the counts behind it."""

    times: np.ndarray
    survival: np.ndarray
    at_risk: np.ndarray
    deaths: np.ndarray
    censored: np.ndarray

    def __call__(self, t: ArrayLike | float) -> np.ndarray:
        """Estimated survival probability at ``t`` (1 before the first time)."""
        return StepFunction(self.times, self.survival)(t)


def kaplan_meier(time: ArrayLike, event: ArrayLike) -> KaplanMeierCurve:
    """Kaplan-Meier estimate ``S(t) = prod_{t_k <= t} (1 - d_k / n_k)`` (``d_k`` deaths among ``n_k`` at risk)."""
    times, deaths, censored, at_risk = _counts(time, event)
    survival = np.cumprod(1.0 - deaths / at_risk)
    return KaplanMeierCurve(times, survival, at_risk, deaths, censored)


def censoring_survival(time: ArrayLike, event: ArrayLike) -> StepFunction:
    """Kaplan-Meier estimate ``G(t)`` of the probability of being still uncensored after ``t``.

    Censorings are the "events" and deaths leave the risk set: ``G(t) = prod_{t_k <= t}
    (1 - c_k / (n_k - d_k))`` (as scikit-survival's ``CensoringDistributionEstimator``).
    """
    times, deaths, censored, at_risk = _counts(time, event)
    remaining = at_risk - deaths
    ratio = np.divide(censored, remaining, out=np.zeros_like(censored), where=censored > 0)
    return StepFunction(times, np.cumprod(1.0 - ratio))


# ---------------------------------------------------------------------- concordance
def harrell_c_index(time: ArrayLike, event: ArrayLike, risk: ArrayLike, tied_tol: float = 1e-8) -> float:
    """Harrell's concordance index of ``risk`` (higher = worse); NaN without comparable pairs."""
    time, event, risk = _as_arrays(time, event, risk)
    return _weighted_concordance(time, event, risk, np.ones_like(time), tied_tol)


def uno_c_index(time: ArrayLike, event: ArrayLike, risk: ArrayLike, train_time: ArrayLike | None = None,
                train_event: ArrayLike | None = None, tau: float | None = None, tied_tol: float = 1e-8, *,
                censoring: StepFunction | None = None) -> float:
    """Uno's IPCW concordance index truncated at ``tau``.

    Args:
        time, event, risk: the evaluated cases.
        train_time, train_event: the set on which the censoring distribution ``G`` is estimated
            (default: the evaluated cases themselves).
        tau: only deaths before ``tau`` count (default: no truncation).
        censoring: ``G`` already estimated (:func:`censoring_survival`); replaces ``train_*``.

    Returns:
        The C-index, or NaN without comparable pairs or when ``G`` reaches zero at a death before ``tau``.
    """
    time, event, risk = _as_arrays(time, event, risk)
    g = censoring if censoring is not None else _censoring_reference(time, event, train_time, train_event)
    counted = event.astype(bool) if tau is None else event.astype(bool) & (time < tau)
    g_at_death = g(time[counted])
    if np.any(g_at_death <= 0):
        return float("nan")
    weights = np.zeros_like(time)
    weights[counted] = 1.0 / g_at_death**2
    return _weighted_concordance(time, event, risk, weights, tied_tol)


def _weighted_concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray, weights: np.ndarray,
                          tied_tol: float) -> float:
    died = event.astype(bool)
    later = time[None, :] > time[:, None]
    censored_same_time = (time[None, :] == time[:, None]) & ~died[None, :]
    comparable = died[:, None] & (later | censored_same_time)
    difference = risk[:, None] - risk[None, :]
    score = np.where(np.abs(difference) <= tied_tol, 0.5, (difference > 0).astype(float))
    pair_weight = weights[:, None] * comparable
    total = pair_weight.sum()
    return float((pair_weight * score).sum() / total) if total > 0 else float("nan")


# ---------------------------------------------------------------------- time-dependent AUC
def cumulative_dynamic_auc(time: ArrayLike, event: ArrayLike, risk: ArrayLike, times: ArrayLike,
                           train_time: ArrayLike | None = None, train_event: ArrayLike | None = None,
                           tied_tol: float = 1e-8, *, censoring: StepFunction | None = None
                           ) -> tuple[np.ndarray, float]:
    """Cumulative/dynamic AUC of ``risk`` at each of ``times``, and its Kaplan-Meier-weighted mean.

    ``AUC(t) = sum_{i case, j control} w_i [1{r_i > r_j} + 1/2 1{r_i = r_j}] / (sum_i w_i * #controls)``
    with cases ``t_i <= t`` and died (``w_i = 1 / G(t_i)``) and controls ``t_j > t``.

    Args:
        time, event, risk: the evaluated cases.
        times: evaluation times (sorted and deduplicated here).
        train_time, train_event: reference set of the censoring distribution (default: the evaluated cases).
        censoring: ``G`` already estimated (:func:`censoring_survival`); replaces ``train_*``.

    Returns:
        ``(auc_at_times, mean_auc)``; NaN where a time has no case or no control. The mean is
        ``sum_k AUC(t_k) (S(t_{k-1}) - S(t_k)) / (1 - S(t_last))`` with ``S`` the Kaplan-Meier estimate of
        the evaluated cases and ``S(t_0) = 1`` (the AUC itself for a single time).
    """
    time, event, risk = _as_arrays(time, event, risk)
    times = np.unique(np.asarray(times, dtype=float))
    g = censoring if censoring is not None else _censoring_reference(time, event, train_time, train_event)
    died = event.astype(bool)
    weights = np.zeros_like(time)
    with np.errstate(divide="ignore"):
        weights[died] = 1.0 / g(time[died])
    difference = risk[:, None] - risk[None, :]
    score = np.where(np.abs(difference) <= tied_tol, 0.5, (difference > 0).astype(float))
    aucs = np.full(times.size, np.nan)
    for k, t in enumerate(times):
        cases = died & (time <= t)
        controls = time > t
        denominator = weights[cases].sum() * controls.sum()
        if denominator > 0 and np.isfinite(denominator):
            aucs[k] = (weights[cases, None] * score[np.ix_(cases, controls)]).sum() / denominator
    if times.size == 1:
        return aucs, float(aucs[0])
    survival = kaplan_meier(time, event)(times)
    drop = -np.diff(np.r_[1.0, survival])
    if not np.all(np.isfinite(aucs)) or survival[-1] >= 1.0:
        return aucs, float("nan")
    return aucs, float((aucs * drop).sum() / (1.0 - survival[-1]))


# ---------------------------------------------------------------------- Breslow and Brier
@dataclass(frozen=True)
class BreslowSurvival:
    """Survival curves of a Cox model: ``S(t | x) = S0(t) ** exp(risk)``, ``S0 = exp(-H0)``.

    ``H0`` is Breslow's cumulative baseline hazard ``H0(t) = sum_{t_k <= t} d_k / sum_{j: t_j >= t_k} exp(r_j)``
    over the distinct observed times ``t_k`` of the training cases.
    """

    times: np.ndarray
    cumulative_baseline_hazard: np.ndarray

    def baseline_survival(self, times: ArrayLike) -> np.ndarray:
        """``S0(t)`` at each time (1 before the first training time)."""
        return np.exp(-StepFunction(self.times, self.cumulative_baseline_hazard, 0.0)(times))

    def __call__(self, risk: ArrayLike, times: ArrayLike) -> np.ndarray:
        """Survival probabilities of each case (rows) at each time (columns), shape (N, T)."""
        hazard = StepFunction(self.times, self.cumulative_baseline_hazard, 0.0)(np.asarray(times, dtype=float))
        return np.exp(-np.exp(np.asarray(risk, dtype=float))[:, None] * hazard[None, :])


def breslow_survival_function(train_time: ArrayLike, train_event: ArrayLike, train_risk: ArrayLike) -> BreslowSurvival:
    """Fit Breslow's baseline hazard on training times, events and log-risks (see :class:`BreslowSurvival`)."""
    time, event, risk = _as_arrays(train_time, train_event, train_risk)
    times, inverse = np.unique(time, return_inverse=True)
    deaths = np.bincount(inverse, weights=event, minlength=times.size)
    shift = risk.max()  # exp(risk - shift) cannot overflow; the shift cancels in the ratio below
    exp_risk = np.bincount(inverse, weights=np.exp(risk - shift), minlength=times.size)
    risk_set_sum = np.cumsum(exp_risk[::-1])[::-1]
    increments = deaths / (risk_set_sum * np.exp(shift))
    return BreslowSurvival(times, np.cumsum(increments))


def brier_scores(time: ArrayLike, event: ArrayLike, survival: np.ndarray, times: ArrayLike,
                 train_time: ArrayLike | None = None, train_event: ArrayLike | None = None, *,
                 censoring: StepFunction | None = None) -> np.ndarray:
    """IPCW Brier score at each of ``times`` (module docstring), from survival probabilities (N, T).

    A term whose censoring weight is undefined (``G = 0``) counts zero, as in scikit-survival. ``G`` is
    estimated on ``train_*`` (default: the evaluated cases), or given as ``censoring``.
    """
    time = np.asarray(time, dtype=float)
    died = np.asarray(event, dtype=float).astype(bool)
    times = np.asarray(times, dtype=float)
    survival = np.asarray(survival, dtype=float).reshape(time.size, times.size)
    g = censoring if censoring is not None else _censoring_reference(time, died.astype(float), train_time, train_event)
    g_at_time, g_at_times = g(time)[:, None], g(times)[None, :]
    cases = died[:, None] & (time[:, None] <= times[None, :])
    controls = time[:, None] > times[None, :]
    case_term = np.divide(survival**2, g_at_time, out=np.zeros_like(survival), where=cases & (g_at_time > 0))
    control_term = np.divide((1.0 - survival) ** 2, g_at_times, out=np.zeros_like(survival),
                             where=controls & (g_at_times > 0))
    scores = (case_term + control_term).mean(axis=0)
    return scores


def integrated_brier_score(time: ArrayLike, event: ArrayLike, survival: np.ndarray, times: ArrayLike,
                           train_time: ArrayLike | None = None, train_event: ArrayLike | None = None, *,
                           censoring: StepFunction | None = None) -> float:
    """Trapezoidal integral of the Brier score over ``times`` (at least two, increasing) over their span."""
    times = np.asarray(times, dtype=float)
    if times.size < 2 or np.any(np.diff(times) <= 0):
        raise ValueError("the integrated Brier score needs at least two increasing times")
    scores = brier_scores(time, event, survival, times, train_time, train_event, censoring=censoring)
    return float(np.trapezoid(scores, times) / (times[-1] - times[0]))


# ---------------------------------------------------------------------- risk groups
def risk_groups(risk: ArrayLike, cutoff: float) -> np.ndarray:
    """True for the high-risk group (``risk > cutoff``)."""
    return np.asarray(risk, dtype=float) > cutoff


def logrank_test(time: ArrayLike, event: ArrayLike, group: ArrayLike) -> dict[str, float]:
    """Two-group log-rank test: ``chi2 = (O_1 - E_1)^2 / V`` over the distinct death times.

    At each death time with ``d`` deaths among ``n`` at risk (``n_1`` in group 1):
    ``E_1 = d n_1 / n`` and ``V = d (n_1 / n) (1 - n_1 / n) (n - d) / (n - 1)``.

    Returns:
        ``statistic`` and two-sided ``p_value`` (NaN when a group is empty or there is no death).
    """
    time, event, _ = _as_arrays(time, event, np.zeros(len(time)))
    in_group = np.asarray(group).astype(bool)
    if in_group.all() or not in_group.any() or event.sum() == 0:
        return {"statistic": float("nan"), "p_value": float("nan")}
    times, inverse = np.unique(time, return_inverse=True)
    deaths = np.bincount(inverse, weights=event, minlength=times.size)
    deaths_1 = np.bincount(inverse, weights=event * in_group, minlength=times.size)
    at_risk = np.cumsum(np.bincount(inverse, minlength=times.size)[::-1])[::-1].astype(float)
    at_risk_1 = np.cumsum(np.bincount(inverse, weights=in_group.astype(float), minlength=times.size)[::-1])[::-1]
    share = at_risk_1 / at_risk
    expected = deaths * share
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.where(at_risk > 1, deaths * share * (1 - share) * (at_risk - deaths) / (at_risk - 1), 0.0)
    total_variance = variance.sum()
    if total_variance <= 0:
        return {"statistic": float("nan"), "p_value": float("nan")}
    statistic = float((deaths_1.sum() - expected.sum()) ** 2 / total_variance)
    return {"statistic": statistic, "p_value": float(chi2.sf(statistic, df=1))}


# ---------------------------------------------------------------------- all together
def default_evaluation_times(time: ArrayLike, event: ArrayLike) -> np.ndarray:
    """The 25th, 50th and 75th percentiles of the observed death times (distinct, inside follow-up)."""
    time, event, _ = _as_arrays(time, event, np.zeros(len(time)))
    death_times = time[event.astype(bool)]
    if death_times.size == 0:
        return np.empty(0)
    candidates = np.unique(np.percentile(death_times, [25, 50, 75], method="lower"))
    return candidates[(candidates >= time.min()) & (candidates < time.max())]


def brier_time_grid(time: ArrayLike, n_grid: int = 50) -> np.ndarray | None:
    """``n_grid`` times evenly spaced from the 10th to the 90th percentile of ``time``, where the
    integrated Brier score is taken; None when that range is empty (it would integrate over nothing)."""
    low, high = np.percentile(np.asarray(time, dtype=float), [10, 90])
    return np.linspace(low, high, n_grid) if high > low else None


def survival_values(time: np.ndarray, event: np.ndarray, risk: np.ndarray, *, censoring: StepFunction, tau: float,
                    times: np.ndarray, survival: np.ndarray | None = None,
                    grid: np.ndarray | None = None) -> dict[str, float]:
    """The resampled survival metrics of some cases against fixed references: what a bootstrap recomputes.

    The references (censoring distribution ``G``, truncation ``tau``, evaluation times, Brier grid) stay
    fixed while the cases change, so that the interval reflects the cases only.

    Args:
        time, event, risk: the cases (risk: higher = worse), as float arrays.
        censoring: ``G`` (:func:`censoring_survival` of the reference set).
        tau: truncation of Uno's C-index.
        times: times of the time-dependent AUC (sorted, distinct; may be empty).
        survival: each case's predicted survival at the ``grid`` times, shape (N, T); with ``grid``,
            for the integrated Brier score.
        grid: the Brier time grid.

    Returns:
        ``c_index_harrell``, ``c_index_uno``; with evaluation times ``td_auc@<t>`` per time and
        ``td_auc_mean`` (the AUC itself for a single time); with ``survival`` and ``grid``
        ``integrated_brier_score``. NaN where a metric is undefined on these cases.
    """
    values = {"c_index_harrell": harrell_c_index(time, event, risk),
              "c_index_uno": uno_c_index(time, event, risk, tau=tau, censoring=censoring)}
    if times.size:
        aucs, mean_auc = cumulative_dynamic_auc(time, event, risk, times, censoring=censoring)
        values.update({f"{TD_AUC_PREFIX}{t:g}": float(a) for t, a in zip(times, aucs, strict=True)})
        values["td_auc_mean"] = mean_auc
    if survival is not None and grid is not None:
        values["integrated_brier_score"] = integrated_brier_score(time, event, survival, grid, censoring=censoring)
    return values


def survival_metrics(time: ArrayLike, event: ArrayLike, risk: ArrayLike, train_time: ArrayLike | None = None,
                     train_event: ArrayLike | None = None, train_risk: ArrayLike | None = None,
                     times: ArrayLike | None = None, tau: float | None = None, cutoff: float | None = None,
                     n_bootstrap: int = 1000, seed: int = 0, confidence: float = 0.95,
                     n_grid: int = 50) -> dict[str, dict[str, float]]:
    """Every survival metric of the module with a percentile bootstrap interval over the evaluated cases.

    The reference set (``train_*``) fixes the censoring distribution ``G``, the Breslow baseline and the
    risk-group cutoff; it is held fixed while the evaluated cases are resampled. Without it the
    evaluated cases are their own reference (an in-sample baseline, fine for out-of-fold risks).

    Args:
        time, event, risk: evaluated cases (risk: higher = worse).
        train_time, train_event, train_risk: reference set (all three, or none).
        times: times of the time-dependent AUC (default :func:`default_evaluation_times`).
        tau: truncation of Uno's C-index (default: the last reference time, so that ``G > 0`` at every
            counted death even when the reference's longest follow-up is censored).
        cutoff: risk separating low and high groups (default: median risk of the reference set).
        n_bootstrap, seed, confidence: bootstrap settings (0 resamples: no intervals).
        n_grid: number of grid times of the integrated Brier score, evenly spaced from the 10th to
            the 90th percentile of the evaluated follow-up times.

    Returns:
        ``{metric: {"value", "ci_low", "ci_high"}}`` for ``c_index_harrell``, ``c_index_uno``,
        ``td_auc@<t>`` per time, ``td_auc_mean``, ``integrated_brier_score``, ``logrank_p`` (its
        interval is NaN: a p-value has no bootstrap interval) and the counts ``n``, ``n_events``.
    """
    time, event, risk = _as_arrays(time, event, risk)
    reference = (train_time, train_event, train_risk)
    if any(r is None for r in reference) and any(r is not None for r in reference):
        raise ValueError("give train_time, train_event and train_risk together, or none of them")
    ref_time, ref_event, ref_risk = (_as_arrays(train_time, train_event, train_risk)  # type: ignore[arg-type]
                                     if train_time is not None else (time, event, risk))
    eval_times = default_evaluation_times(time, event) if times is None else np.unique(np.asarray(times, float))
    grid = brier_time_grid(time, n_grid)
    # S(t | x) from the reference's Breslow baseline, per case: a resample takes the rows of its cases
    survival = None if grid is None else breslow_survival_function(ref_time, ref_event, ref_risk)(risk, grid)
    g = censoring_survival(ref_time, ref_event)
    uno_tau = float(ref_time.max()) if tau is None else float(tau)
    threshold = float(np.median(ref_risk)) if cutoff is None else float(cutoff)

    def metrics_of(idx: np.ndarray) -> dict[str, float]:
        values = survival_values(time[idx], event[idx], risk[idx], censoring=g, tau=uno_tau, times=eval_times,
                                 survival=None if survival is None else survival[idx], grid=grid)
        values.setdefault("integrated_brier_score", float("nan"))
        return values

    everyone = np.arange(time.size)
    point = metrics_of(everyone)
    results = resampled_intervals(point, metrics_of, n=time.size, n_bootstrap=n_bootstrap, seed=seed,
                                  confidence=confidence)
    nan = float("nan")
    results["logrank_p"] = {"value": logrank_test(time, event, risk_groups(risk, threshold))["p_value"],
                            "ci_low": nan, "ci_high": nan}
    results["n"] = {"value": float(time.size), "ci_low": nan, "ci_high": nan}
    results["n_events"] = {"value": float(event.sum()), "ci_low": nan, "ci_high": nan}
    return results


# ---------------------------------------------------------------------- internals
def _as_arrays(time: ArrayLike, event: ArrayLike, risk: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    time = np.asarray(time, dtype=float).ravel()
    event = np.asarray(event, dtype=float).ravel()
    risk = np.asarray(risk, dtype=float).ravel()
    if not time.size == event.size == risk.size:
        raise ValueError(f"time, event and risk differ in length ({time.size}, {event.size}, {risk.size})")
    if not np.all(np.isfinite(time)) or np.any(time < 0):
        raise ValueError("survival times must be finite and non-negative")
    if not np.all(np.isin(event, (0.0, 1.0))):
        raise ValueError("events must be 0 (censored) or 1 (died)")
    if not np.all(np.isfinite(risk)):
        raise ValueError("risk scores must be finite")
    return time, event, risk


def _counts(time: ArrayLike, event: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    time, event, _ = _as_arrays(time, event, np.zeros(len(time)))
    times, inverse = np.unique(time, return_inverse=True)
    deaths = np.bincount(inverse, weights=event, minlength=times.size)
    total = np.bincount(inverse, minlength=times.size).astype(float)
    at_risk = np.cumsum(total[::-1])[::-1]
    return times, deaths, total - deaths, at_risk


def _censoring_reference(time: np.ndarray, event: np.ndarray, train_time: ArrayLike | None,
                         train_event: ArrayLike | None) -> StepFunction:
    if (train_time is None) != (train_event is None):
        raise ValueError("give train_time and train_event together")
    if train_time is None or train_event is None:
        return censoring_survival(time, event)
    return censoring_survival(train_time, train_event)
