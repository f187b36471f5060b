"""How evaluation figures are written as text: numbers, estimates with their interval, p-values.

One set of rules for every table, report, figure legend and console line, radiology and pathology
alike, so that the same figure reads the same wherever it appears:

- a number has 3 decimals, 1 decimal (with thousands separators) from 100 up, and 3 significant
  digits below 0.001 (``0.000123``, ``1.23e-07``); NaN and None are "–";
- an estimate with its interval is ``"value [low, high]"`` (the value alone when the interval is
  undefined); the coverage (95%...) is stated once, in the table's title or header;
- a p-value has 2 significant digits, "< 0.001" below that.

Example:
    >>> format_estimate(0.8123, 0.7, 0.9)
    '0.812 [0.700, 0.900]'
    >>> format_p_value(0.01234), format_p_value(2e-5)
    ('0.012', '< 0.001')
"""

from __future__ import annotations

import math

MISSING = "–"
P_VALUE_FLOOR = 0.001


def format_number(value: float | None) -> str:
    """3 decimals (1 with thousands separators from 100 up, 3 significant digits below 0.001); NaN or None
    as "–"."""
    if value is None or math.isnan(value):
        return MISSING
    if abs(value) >= 100:
        return f"{value:,.1f}"
    if 0 < abs(value) < 0.001:
        return f"{value:.3g}"
    return f"{value:.3f}"


def format_interval(low: float, high: float) -> str:
    """``"[low, high]"``; "–" when either bound is not finite."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return MISSING
    return f"[{format_number(low)}, {format_number(high)}]"


def format_estimate(value: float, low: float, high: float) -> str:
    """``"value [low, high]"``, or the value alone without a finite interval."""
    interval = format_interval(low, high)
    return format_number(value) if interval == MISSING else f"{format_number(value)} {interval}"


def format_p_value(p_value: float | None) -> str:
    """A p-value with 2 significant digits, "< 0.001" below that; NaN or None as "–"."""
    if p_value is None or not math.isfinite(p_value):
        return MISSING
    return f"< {P_VALUE_FLOOR:g}" if p_value < P_VALUE_FLOOR else f"{p_value:.2g}"


def p_value_phrase(p_value: float | None) -> str:
    """``"p = 0.012"``, ``"p < 0.001"`` or ``"p –"``, for a sentence or a legend."""
    text = format_p_value(p_value)
    return f"p {text}" if text.startswith("<") or text == MISSING else f"p = {text}"
