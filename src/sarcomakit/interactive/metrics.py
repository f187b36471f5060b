"""Figures of interactive segmentation: per-round Dice, NoC@85/90, area under the Dice curve, latency.

Rounds are counted from 1: round 1 is the first interaction (the initial prompts), round ``k``
the state after ``k - 1`` corrections, and ``dices[k - 1]`` the Dice after round ``k``.

- **NoC@t** (number of clicks/interactions, as in the interactive-segmentation literature): the
  first round whose Dice reaches ``t``; a case that does not reach it within the rounds played
  (or within ``cap``, 20 by convention) counts as ``cap`` and is counted as a failure, and both the
  mean NoC and the number of failures are reported, since the mean alone hides the failures.
  A NoC is only exact up to the number of rounds played: play ``cap`` rounds to compare with
  papers.
- **AUC of the Dice curve**: the trapezoidal area under Dice against round, divided by the
  number of round intervals, so it lies in [0, 1] and equals the Dice when the curve is flat;
  with one round it is that round's Dice.
- **Latency**: median and 95th percentile (linear interpolation) of the seconds per interaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.integrate import trapezoid

from sarcomakit.evaluation.metrics import Spacing, dice, surface_dice

#: Conventional cap of NoC.
NOC_CAP = 20


def round_scores(prediction: np.ndarray, reference: np.ndarray, spacing: Spacing = None,
                 tolerance_mm: float = 2.0) -> dict[str, float]:
    """Dice and surface Dice (at ``tolerance_mm``) of one round's mask, from :mod:`sarcomakit.evaluation.metrics`."""
    return {"dice": dice(prediction, reference),
            "surface_dice": surface_dice(prediction, reference, spacing, tolerance_mm=tolerance_mm)}


def rounds_to_reach(dices: Sequence[float], threshold: float, cap: int = NOC_CAP) -> int | None:
    """The first round (1-based) whose Dice is at least ``threshold``, None if none within ``cap`` rounds."""
    for round_number, value in enumerate(dices[:cap], start=1):
        if value >= threshold:
            return round_number
    return None


@dataclass(frozen=True)
class NocSummary:
    """NoC at one threshold over cases: mean with failures counted as ``cap``, and the failures."""

    threshold: float
    mean: float
    n_failed: int
    n_cases: int
    per_case: tuple[int | None, ...]


def noc(curves: Sequence[Sequence[float]], threshold: float, cap: int = NOC_CAP) -> NocSummary:
    """NoC@``threshold`` over the Dice curves of several cases.

    Args:
        curves: per case, the Dice after each round played.
        threshold: Dice to reach, e.g. 0.85 or 0.90.
        cap: rounds after which a case counts as a failure.

    Example:
        >>> summary = noc([[0.7, 0.86, 0.9], [0.5, 0.6, 0.7]], 0.85)
        >>> summary.per_case, summary.mean, summary.n_failed
        ((2, None), 11.0, 1)
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    per_case = tuple(rounds_to_reach(curve, threshold, cap) for curve in curves)
    counted = [cap if value is None else value for value in per_case]
    return NocSummary(threshold=threshold, mean=float(np.mean(counted)) if counted else float("nan"),
                      n_failed=sum(value is None for value in per_case), n_cases=len(per_case), per_case=per_case)


def dice_curve_auc(dices: Sequence[float]) -> float:
    """Normalised area under Dice against round: ``trapezoid(dices) / (n - 1)``, or the Dice when ``n == 1``.

    Example:
        >>> dice_curve_auc([0.5, 0.7, 0.9])
        0.7
    """
    values = np.asarray(dices, dtype=float)
    if values.size == 0:
        return float("nan")
    if values.size == 1:
        return float(values[0])
    return float(trapezoid(values) / (values.size - 1))


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Median, 95th percentile, mean and count of per-interaction latencies (NaN entries ignored)."""
    values = np.asarray(seconds, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return {"median_s": float("nan"), "p95_s": float("nan"), "mean_s": float("nan"), "n": 0}
    return {"median_s": float(np.median(values)), "p95_s": float(np.percentile(values, 95)),
            "mean_s": float(values.mean()), "n": int(values.size)}


def mean_curve(curves: Sequence[Sequence[float]]) -> np.ndarray:
    """Mean Dice per round over cases; curves of unequal length are padded with their last value.

    Padding with the last value is what a user sees: when the robot stops (nothing left to
    correct) the mask stays as it is.
    """
    if not curves:
        return np.zeros(0)
    length = max(len(curve) for curve in curves)
    padded = np.array([list(curve) + [curve[-1]] * (length - len(curve)) for curve in curves], dtype=float)
    return padded.mean(axis=0)
