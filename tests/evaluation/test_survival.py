"""Survival metrics against lifelines and scikit-survival on the same inputs, with ties and censoring."""

from __future__ import annotations

import math

import numpy as np
import pytest

from figure_checks import figure_shape, near_colour, read_png
from sarcomakit.evaluation.survival import (
    breslow_survival_function,
    brier_scores,
    censoring_survival,
    cumulative_dynamic_auc,
    default_evaluation_times,
    harrell_c_index,
    integrated_brier_score,
    kaplan_meier,
    logrank_test,
    risk_groups,
    survival_metrics,
    uno_c_index,
)

lifelines = pytest.importorskip("lifelines")
sksurv_metrics = pytest.importorskip("sksurv.metrics")
from lifelines.statistics import logrank_test as lifelines_logrank  # noqa: E402
from lifelines.utils import concordance_index as lifelines_concordance  # noqa: E402
from sksurv.linear_model.coxph import BreslowEstimator  # noqa: E402
from sksurv.nonparametric import CensoringDistributionEstimator  # noqa: E402
from sksurv.util import Surv  # noqa: E402


def cohort(n: int, seed: int, tie_step: float = 30.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Times rounded to ``tie_step`` days (many tied times), ~35% censoring, risks with ties too."""
    rng = np.random.default_rng(seed)
    risk = np.round(rng.normal(size=n), 1)  # rounding gives tied risks
    death = rng.exponential(800 * np.exp(-risk))
    censor = rng.uniform(100, 2000, size=n)
    time = np.maximum(np.round(np.minimum(death, censor) / tie_step) * tie_step, tie_step)
    event = (death <= censor).astype(float)
    return time, event, risk


@pytest.fixture(params=[0, 1, 2])
def data(request):
    train = cohort(120, seed=100 + request.param)
    test = cohort(60, seed=request.param)
    return train, test


def test_cohort_has_ties_and_censoring(data):
    _, (time, event, risk) = data
    assert len(np.unique(time)) < len(time) and len(np.unique(risk)) < len(risk)
    assert 0.2 < 1 - event.mean() < 0.8


def test_harrell_matches_lifelines_and_sksurv(data):
    _, (time, event, risk) = data
    ours = harrell_c_index(time, event, risk)
    # lifelines expects a score where higher means longer survival
    assert ours == pytest.approx(lifelines_concordance(time, -risk, event), abs=1e-6)
    assert ours == pytest.approx(sksurv_metrics.concordance_index_censored(event.astype(bool), time, risk)[0],
                                 abs=1e-6)


def test_harrell_known_values():
    time = np.array([1.0, 2.0, 3.0])
    event = np.array([1.0, 1.0, 0.0])
    assert harrell_c_index(time, event, [3.0, 2.0, 1.0]) == 1.0
    assert harrell_c_index(time, event, [1.0, 2.0, 3.0]) == 0.0
    assert harrell_c_index(time, event, [1.0, 1.0, 1.0]) == 0.5
    assert math.isnan(harrell_c_index(time, np.zeros(3), [1.0, 2.0, 3.0]))


@pytest.mark.parametrize("tau", [None, 900.0])
def test_uno_matches_sksurv(data, tau):
    (tr_time, tr_event, _), (time, event, risk) = data
    # keep test times inside the training follow-up, as scikit-survival requires
    keep = time < tr_time.max()
    time, event, risk = time[keep], event[keep], risk[keep]
    expected = sksurv_metrics.concordance_index_ipcw(Surv.from_arrays(tr_event, tr_time),
                                                    Surv.from_arrays(event, time), risk, tau=tau)[0]
    assert uno_c_index(time, event, risk, tr_time, tr_event, tau=tau) == pytest.approx(expected, abs=1e-6)


def test_censoring_distribution_matches_sksurv(data):
    (tr_time, tr_event, _), (time, _, _) = data
    reference = CensoringDistributionEstimator().fit(Surv.from_arrays(tr_event, tr_time))
    query = np.clip(time, None, tr_time.max())
    np.testing.assert_allclose(censoring_survival(tr_time, tr_event)(query), reference.predict_proba(query),
                               atol=1e-12)


def test_cumulative_dynamic_auc_matches_sksurv(data):
    (tr_time, tr_event, _), (time, event, risk) = data
    keep = time < tr_time.max()
    time, event, risk = time[keep], event[keep], risk[keep]
    times = default_evaluation_times(time, event)
    assert times.size >= 2
    expected, expected_mean = sksurv_metrics.cumulative_dynamic_auc(
        Surv.from_arrays(tr_event, tr_time), Surv.from_arrays(event, time), risk, times)
    aucs, mean_auc = cumulative_dynamic_auc(time, event, risk, times, tr_time, tr_event)
    np.testing.assert_allclose(aucs, expected, atol=1e-6)
    assert mean_auc == pytest.approx(expected_mean, abs=1e-6)


def test_breslow_matches_sksurv(data):
    (tr_time, tr_event, tr_risk), (_, _, risk) = data
    ours = breslow_survival_function(tr_time, tr_event, tr_risk)
    reference = BreslowEstimator().fit(tr_risk, tr_event.astype(bool), tr_time)
    grid = np.unique(tr_time)[:-1]
    np.testing.assert_allclose(ours.baseline_survival(grid), reference.baseline_survival_(grid), atol=1e-10)
    expected = np.stack([fn(grid) for fn in reference.get_survival_function(risk)])
    np.testing.assert_allclose(ours(risk, grid), expected, atol=1e-10)


def test_brier_and_integrated_brier_match_sksurv(data):
    (tr_time, tr_event, tr_risk), (time, event, risk) = data
    keep = time < tr_time.max()
    time, event, risk = time[keep], event[keep], risk[keep]
    grid = np.linspace(np.percentile(time, 10), np.percentile(time, 90), 25)
    survival = breslow_survival_function(tr_time, tr_event, tr_risk)(risk, grid)
    train, test = Surv.from_arrays(tr_event, tr_time), Surv.from_arrays(event, time)
    _, expected = sksurv_metrics.brier_score(train, test, survival, grid)
    np.testing.assert_allclose(brier_scores(time, event, survival, grid, tr_time, tr_event), expected, atol=1e-10)
    assert integrated_brier_score(time, event, survival, grid, tr_time, tr_event) == pytest.approx(
        sksurv_metrics.integrated_brier_score(train, test, survival, grid), abs=1e-10)


def test_kaplan_meier_matches_lifelines(data):
    _, (time, event, _) = data
    ours = kaplan_meier(time, event)
    fitter = lifelines.KaplanMeierFitter().fit(time, event)
    query = np.r_[0.0, ours.times, ours.times + 0.5]
    np.testing.assert_allclose(ours(query), fitter.survival_function_at_times(query).to_numpy(), atol=1e-10)


def test_logrank_matches_lifelines(data):
    _, (time, event, risk) = data
    high = risk_groups(risk, float(np.median(risk)))
    ours = logrank_test(time, event, high)
    reference = lifelines_logrank(time[high], time[~high], event[high], event[~high])
    assert ours["statistic"] == pytest.approx(reference.test_statistic, rel=1e-9)
    assert ours["p_value"] == pytest.approx(reference.p_value, rel=1e-9)


def test_logrank_degenerate_groups_give_nan():
    time, event = np.array([1.0, 2.0, 3.0]), np.array([1.0, 0.0, 1.0])
    assert math.isnan(logrank_test(time, event, np.ones(3, bool))["p_value"])
    assert math.isnan(logrank_test(time, np.zeros(3), np.array([1, 0, 1]))["p_value"])


def test_survival_metrics_values_match_the_functions_and_intervals_bracket_them(data):
    (tr_time, tr_event, tr_risk), (time, event, risk) = data
    result = survival_metrics(time, event, risk, tr_time, tr_event, tr_risk, n_bootstrap=100, seed=3)
    assert result["c_index_harrell"]["value"] == pytest.approx(harrell_c_index(time, event, risk))
    assert result["n"]["value"] == len(time) and result["n_events"]["value"] == event.sum()
    times = default_evaluation_times(time, event)
    assert {f"td_auc@{t:g}" for t in times} <= set(result)
    for name in ("c_index_harrell", "c_index_uno", "td_auc_mean", "integrated_brier_score"):
        entry = result[name]
        assert np.isfinite(entry["value"]), name
        assert entry["ci_low"] <= entry["value"] <= entry["ci_high"], name
    # the risk carries signal: concordance clearly above chance
    assert result["c_index_harrell"]["value"] > 0.6
    assert 0 <= result["logrank_p"]["value"] <= 1
    again = survival_metrics(time, event, risk, tr_time, tr_event, tr_risk, n_bootstrap=100, seed=3)
    np.testing.assert_equal(again, result)  # NaN-aware


def test_survival_metrics_without_reference_and_with_bad_inputs():
    time, event, risk = cohort(40, seed=9)
    result = survival_metrics(time, event, risk, n_bootstrap=50)
    assert np.isfinite(result["c_index_uno"]["value"])
    with pytest.raises(ValueError, match="together"):
        survival_metrics(time, event, risk, train_time=time)
    with pytest.raises(ValueError, match="non-negative"):
        harrell_c_index(-time, event, risk)
    with pytest.raises(ValueError, match="0 \\(censored\\)"):
        harrell_c_index(time, event * 2, risk)


def test_kaplan_meier_figure_is_written(tmp_path):
    from sarcomakit.reporting.clinical_figures import GROUP_COLOURS, plot_kaplan_meier

    time, event, risk = cohort(50, seed=4)
    assert (risk > 0).any() and (risk <= 0).any()
    two = read_png(plot_kaplan_meier(time, event, risk, tmp_path / "km.png", cutoff=0.0))
    assert two.shape[:2] == figure_shape(5.6, 5.0, 120)
    low, high = GROUP_COLOURS["low risk"], GROUP_COLOURS["high risk"]
    assert near_colour(two, low, 30).sum() > 200 and near_colour(two, high, 30).sum() > 200
    # one group only (cutoff above every risk) still draws, with the p-value marked n/a
    one = read_png(plot_kaplan_meier(time, event, risk, tmp_path / "one.png", cutoff=99.0))
    assert near_colour(one, low, 30).sum() > 200 and not near_colour(one, high, 30).any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["km.png", "one.png"]


def test_uno_in_survival_metrics_stays_defined_past_a_censored_last_reference_time():
    (time, event, risk), (ref_time, ref_event, ref_risk) = cohort(60, seed=5), cohort(60, seed=6)
    last = np.argmax(ref_time)
    ref_event[last] = 0.0  # G drops to 0 at the reference's last time
    time[np.argmax(event)] = ref_time.max() + 30  # a death after the reference's follow-up
    event[np.argmax(event)] = 1.0
    assert np.isnan(uno_c_index(time, event, risk, ref_time, ref_event))
    result = survival_metrics(time, event, risk, ref_time, ref_event, ref_risk, n_bootstrap=20)
    expected = uno_c_index(time, event, risk, ref_time, ref_event, tau=ref_time.max())
    assert np.isfinite(expected) and result["c_index_uno"]["value"] == pytest.approx(expected)
