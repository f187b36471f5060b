"""Interactive metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sarcomakit.interactive.metrics import (
    dice_curve_auc,
    latency_summary,
    mean_curve,
    noc,
    round_scores,
    rounds_to_reach,
)


def test_rounds_to_reach_counts_from_one_and_respects_the_cap():
    curve = [0.5, 0.84, 0.85, 0.95]
    assert rounds_to_reach(curve, 0.85) == 3
    assert rounds_to_reach(curve, 0.90) == 4
    assert rounds_to_reach(curve, 0.50) == 1
    assert rounds_to_reach(curve, 0.96) is None
    assert rounds_to_reach(curve, 0.90, cap=3) is None


def test_noc_counts_failures_as_the_cap_and_reports_them():
    curves = [[0.9, 0.95], [0.6, 0.86, 0.91], [0.5, 0.6, 0.7]]
    at85 = noc(curves, 0.85)
    assert at85.per_case == (1, 2, None)
    assert at85.mean == pytest.approx((1 + 2 + 20) / 3)
    assert (at85.n_failed, at85.n_cases) == (1, 3)
    at90 = noc(curves, 0.90, cap=5)
    assert at90.per_case == (1, 3, None)
    assert at90.mean == pytest.approx((1 + 3 + 5) / 3)
    assert at90.n_failed == 1


def test_dice_curve_auc_is_the_normalised_trapezoid():
    # Trapezoid over rounds 1..4: (0.4+0.6)/2 + (0.6+0.9)/2 + (0.9+0.9)/2 = 2.15, over 3 intervals.
    assert dice_curve_auc([0.4, 0.6, 0.9, 0.9]) == pytest.approx(2.15 / 3)
    assert dice_curve_auc([0.8, 0.8, 0.8]) == pytest.approx(0.8)
    assert dice_curve_auc([0.7]) == 0.7
    assert math.isnan(dice_curve_auc([]))


def test_latency_summary_median_and_p95():
    seconds = [float(s) for s in range(1, 21)] + [float("nan")]
    summary = latency_summary(seconds)
    assert summary["median_s"] == 10.5
    assert summary["p95_s"] == pytest.approx(19.05)  # 1 + 0.95 * 19, linear interpolation
    assert summary["n"] == 20 and summary["mean_s"] == 10.5
    assert math.isnan(latency_summary([])["median_s"])


def test_round_scores_of_shifted_cubes():
    a = np.zeros((30, 30, 30), bool)
    a[10:20, 10:20, 10:20] = True
    b = np.roll(a, 2, axis=0)
    scores = round_scores(b, a, spacing=(1.0, 1.0, 1.0), tolerance_mm=2.0)
    assert scores["dice"] == pytest.approx(0.8)
    assert scores["surface_dice"] == pytest.approx(1.0)  # every surface voxel within 2 mm
    assert round_scores(b, a, tolerance_mm=1.0)["surface_dice"] < 1.0


def test_mean_curve_pads_shorter_curves_with_their_last_value():
    assert np.allclose(mean_curve([[0.5, 0.7, 0.9], [0.6]]), [0.55, 0.65, 0.75])
