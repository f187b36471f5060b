"""Bootstrap intervals: coverage in simulation, determinism, NaN handling, agreement with scipy; resampling
by patient; one percentile rule for every interval and paired difference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from sarcomakit.evaluation.bootstrap import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_metric,
    difference_interval,
    grouped_bootstrap_indices,
    paired_bootstrap_difference,
    percentile_bounds,
    resampled_intervals,
    summarise,
)


def test_percentile_ci_covers_the_true_mean_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    true_mean, trials = 0.8, 200
    covered = 0
    for trial in range(trials):
        sample = rng.beta(8, 2, size=30)  # skewed like Dice; mean 0.8
        low, high = bootstrap_ci(sample, n_resamples=500, seed=trial)
        covered += low <= true_mean <= high
    # Nominal 95%; the percentile interval under-covers slightly at n = 30.
    assert 0.88 <= covered / trials <= 0.99


def test_deterministic_for_a_seed_and_different_across_seeds():
    values = np.random.default_rng(1).normal(size=25)
    assert bootstrap_ci(values, seed=7) == bootstrap_ci(values, seed=7)
    assert bootstrap_ci(values, seed=7) != bootstrap_ci(values, seed=8)


def test_matches_scipy_bootstrap_with_the_same_generator():
    values = np.random.default_rng(2).exponential(size=40)
    for method, scipy_method in (("percentile", "percentile"), ("bca", "BCa"), ("basic", "basic")):
        expected = stats.bootstrap((values,), np.median, n_resamples=999, method=scipy_method,
                                   rng=np.random.default_rng(3)).confidence_interval
        assert bootstrap_ci(values, np.median, n_resamples=999, seed=3, method=method) == pytest.approx(
            (expected.low, expected.high))


def test_nan_values_are_ignored_and_degenerate_samples_are_explicit():
    values = np.array([0.7, np.nan, 0.8, 0.9, np.nan, 0.75])
    assert bootstrap_ci(values, seed=0) == bootstrap_ci(values[np.isfinite(values)], seed=0)
    assert all(math.isnan(v) for v in bootstrap_ci([0.5]))
    assert all(math.isnan(v) for v in bootstrap_ci([np.nan, np.nan]))
    assert bootstrap_ci([0.9, 0.9, 0.9]) == (0.9, 0.9)


def test_statistic_without_axis_argument_gives_the_same_interval():
    values = np.random.default_rng(4).normal(size=20)
    assert bootstrap_ci(values, lambda x: float(np.mean(x)), seed=1) == pytest.approx(
        bootstrap_ci(values, np.mean, seed=1))


def test_confidence_and_method_are_validated():
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci([1.0, 2.0], method="student")
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=95)


def test_summarise_reports_descriptives_and_the_ci_of_the_mean():
    values = [0.6, 0.7, np.nan, 0.8, 0.9]
    summary = summarise(values, seed=0)
    assert summary["n"] == 4 and summary["n_missing"] == 1
    assert summary["mean"] == pytest.approx(0.75)
    assert summary["sd"] == pytest.approx(np.std([0.6, 0.7, 0.8, 0.9], ddof=1))
    assert summary["median"] == pytest.approx(0.75)
    assert summary["ci_low"] <= summary["mean"] <= summary["ci_high"]
    empty = summarise([np.nan])
    assert empty["n"] == 0 and math.isnan(empty["mean"]) and math.isnan(empty["ci_low"])


def test_paired_difference_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(5)
    case_difficulty = rng.normal(0.8, 0.1, size=40)
    model_a = case_difficulty + rng.normal(0, 0.01, size=40)
    better = model_a + 0.02
    result = paired_bootstrap_difference(better, model_a, seed=0)
    assert result["n"] == 40
    assert result["difference"] == pytest.approx(0.02)
    assert result["ci_low"] <= 0.02 <= result["ci_high"]
    assert result["p_value"] < 0.01

    same = paired_bootstrap_difference(model_a + rng.normal(0, 0.01, size=40), model_a, seed=0)
    assert same["ci_low"] < 0 < same["ci_high"] or same["p_value"] > 0.05


def test_paired_difference_drops_incomplete_pairs():
    a = np.array([0.9, np.nan, 0.8, 0.7])
    b = np.array([0.8, 0.5, np.nan, 0.6])
    result = paired_bootstrap_difference(a, b)
    assert result["n"] == 2
    assert result["difference"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="same length"):
        paired_bootstrap_difference([1.0, 2.0], [1.0])


def test_bootstrap_indices_shape_and_determinism():
    first = bootstrap_indices(10, 50, seed=3)
    assert first.shape == (50, 10) and first.min() >= 0 and first.max() < 10
    np.testing.assert_array_equal(first, bootstrap_indices(10, 50, seed=3))


def test_one_row_per_patient_resamples_exactly_like_rows():
    # grouping by patient draws patients from the same generator stream as rows are drawn without groups
    grouped = grouped_bootstrap_indices(np.arange(12)[::-1], 40, seed=5)
    np.testing.assert_array_equal(np.array(grouped), 11 - bootstrap_indices(12, 40, seed=5))


def test_patient_bootstrap_of_duplicated_slides_equals_the_bootstrap_of_one_slide_each():
    # every patient has 4 identical slides: resampling patients gives the interval of the 15 distinct values;
    # resampling slides would treat the copies as independent and give a narrower interval
    values = np.random.default_rng(2).normal(size=15)
    slides, patients = np.repeat(values, 4), np.repeat(np.arange(15), 4)
    _, low, high = bootstrap_metric(lambda i: values[i].mean(), 15, n_resamples=400, seed=1)
    _, low_grouped, high_grouped = bootstrap_metric(lambda i: slides[i].mean(), 60, n_resamples=400, seed=1,
                                                    groups=patients)
    assert (float(low_grouped), float(high_grouped)) == pytest.approx((float(low), float(high)), abs=1e-12)
    _, low_rows, high_rows = bootstrap_metric(lambda i: slides[i].mean(), 60, n_resamples=400, seed=1)
    assert high_rows - low_rows < 0.7 * (high - low)
    with pytest.raises(ValueError, match="one group per row"):
        bootstrap_metric(lambda i: slides[i].mean(), 60, n_resamples=10, groups=patients[:-1])


def test_array_metric_and_named_metrics_get_the_same_intervals():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=30), rng.normal(size=30)
    point, low, high = bootstrap_metric(lambda i: np.array([x[i].mean(), np.median(y[i])]), 30, n_resamples=200,
                                        seed=9, confidence=0.9)
    named = resampled_intervals({"mean_x": x.mean(), "median_y": float(np.median(y))},
                                lambda i: {"mean_x": x[i].mean(), "median_y": np.median(y[i]), "unused": 0.0},
                                n=30, n_bootstrap=200, seed=9, confidence=0.9)
    for k, name in enumerate(("mean_x", "median_y")):
        assert (named[name]["value"], named[name]["ci_low"], named[name]["ci_high"]) == (point[k], low[k], high[k])
    draws = np.array([x[i].mean() for i in bootstrap_indices(30, 200, seed=9)])
    assert (low[0], high[0]) == pytest.approx(tuple(np.quantile(draws, [0.05, 0.95])), abs=1e-12)
    assert set(named) == {"mean_x", "median_y"}


def test_percentile_bounds_use_finite_draws_element_by_element():
    draws = np.array([[0.0, np.nan, 1.0], [1.0, np.nan, np.nan], [2.0, 5.0, 3.0], [3.0, np.nan, np.inf]])
    low, high = percentile_bounds(draws, confidence=0.5)
    np.testing.assert_allclose(low, [0.75, np.nan, 1.5])
    np.testing.assert_allclose(high, [2.25, np.nan, 2.5])
    without_resamples = resampled_intervals({"a": 1.0}, lambda i: {"a": 1.0}, n=5, n_bootstrap=0, seed=0,
                                            confidence=0.95)["a"]
    assert without_resamples["value"] == 1.0
    assert math.isnan(without_resamples["ci_low"]) and math.isnan(without_resamples["ci_high"])


def test_difference_interval_p_value_and_undefined_cases():
    draws = np.array([0.5, 1.0, 1.5, 2.0, np.nan])  # d = 1: |d* - 1| >= 1 holds for 2.0 only
    low, high, p = difference_interval(1.0, draws, confidence=0.5)
    assert (low, high) == pytest.approx((0.875, 1.625)) and p == pytest.approx(2 / 5)
    assert all(math.isnan(v) for v in difference_interval(math.nan, draws))
    assert all(math.isnan(v) for v in difference_interval(1.0, np.array([1.0, np.nan])))

