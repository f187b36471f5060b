"""Number formatting rules shared by tables, reports, figure legends and console lines."""

from __future__ import annotations

import math

import pytest

from sarcomakit.evaluation.formatting import (
    format_estimate,
    format_interval,
    format_number,
    format_p_value,
    p_value_phrase,
)


@pytest.mark.parametrize(("value", "text"), [
    (0.81234, "0.812"), (-0.0456, "-0.046"), (0.0, "0.000"), (99.99, "99.990"), (100.0, "100.0"),
    (12345.67, "12,345.7"), (0.000123, "0.000123"), (-4e-7, "-4e-07"), (math.nan, "–"), (None, "–"),
    (math.inf, "inf"),
])
def test_numbers(value, text):
    assert format_number(value) == text


def test_estimates_and_intervals():
    assert format_estimate(0.8123, 0.7, 0.9) == "0.812 [0.700, 0.900]"
    assert format_estimate(-0.05, -0.1, -0.02) == "-0.050 [-0.100, -0.020]"  # unambiguous with negative bounds
    assert format_estimate(0.8, math.nan, 0.9) == "0.800"
    assert format_estimate(150.0, 120.5, 180.25) == "150.0 [120.5, 180.2]"
    assert format_interval(0.1, 0.2) == "[0.100, 0.200]" and format_interval(math.nan, math.nan) == "–"


@pytest.mark.parametrize(("p", "text", "phrase"), [
    (0.5, "0.5", "p = 0.5"), (0.01234, "0.012", "p = 0.012"), (0.001, "0.001", "p = 0.001"),
    (0.00099, "< 0.001", "p < 0.001"), (math.nan, "–", "p –"), (None, "–", "p –"),
])
def test_p_values(p, text, phrase):
    assert format_p_value(p) == text
    assert p_value_phrase(p) == phrase


def test_pathology_estimates_read_like_the_comparison_tables():
    from sarcomakit.pathology.analysis.metrics import Estimate

    assert str(Estimate(0.8123, 0.7, 0.9)) == format_estimate(0.8123, 0.7, 0.9) == "0.812 [0.700, 0.900]"
