"""Play the robot user against interactive models on labelled cases and collect the round-by-round figures.

For every case and model, a fresh :class:`~sarcomakit.interactive.session.InteractiveSession`
receives the robot's initial prompts (round 1), then one correction per round on the largest
error component, up to ``n_rounds``. After each round it records Dice, surface Dice and the
latency of the prediction (the session's ``predict``, ROI growth included). When the robot finds
nothing left to correct, the mask stays and the round repeats its figures with no latency.

The robot of a case is seeded by ``seed + case index`` and is fresh for each model, so every
model receives the same initial prompts (a paired comparison); corrections then depend on each
model's own errors, as with a real user.

Outputs (:class:`InteractiveEvaluation`): a long table of rounds, a table per case (NoC@85/90,
AUC of the Dice curve, final Dice), the mean curve per method with bootstrap intervals over
cases, and a summary per method (see :mod:`sarcomakit.interactive.metrics` for definitions).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json, write_text
from sarcomakit.evaluation.bootstrap import bootstrap_ci
from sarcomakit.interactive.metrics import (
    NOC_CAP,
    dice_curve_auc,
    latency_summary,
    mean_curve,
    noc,
    round_scores,
    rounds_to_reach,
)
from sarcomakit.interactive.protocol import InteractiveModel
from sarcomakit.interactive.robot import RobotConfig, RobotUser
from sarcomakit.interactive.session import InteractiveSession


@dataclass(frozen=True)
class InteractiveCase:
    """One labelled image: the image (array ``(Z, Y, X)`` / ``(C, Z, Y, X)`` or SimpleITK) and its reference mask."""

    case_id: str
    image: np.ndarray | sitk.Image
    reference: np.ndarray | sitk.Image
    spacing: tuple[float, float, float] | None = None


@dataclass
class CaseRecord:
    """The figures of one case under one method, one entry per round."""

    case_id: str
    method: str
    dice: list[float] = field(default_factory=list)
    surface_dice: list[float] = field(default_factory=list)
    latency_s: list[float] = field(default_factory=list)
    n_prompts: list[int] = field(default_factory=list)


@dataclass
class InteractiveEvaluation:
    """Round-by-round records of every (case, method) pair, and the tables built from them."""

    records: list[CaseRecord]
    thresholds: tuple[float, ...] = (0.85, 0.90)
    noc_cap: int = NOC_CAP

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(record.method for record in self.records))

    def rounds_frame(self) -> pd.DataFrame:
        """One row per (method, case, round): dice, surface_dice, latency_s, n_prompts."""
        rows = [{"method": r.method, "case_id": r.case_id, "round": k + 1, "dice": r.dice[k],
                 "surface_dice": r.surface_dice[k], "latency_s": r.latency_s[k], "n_prompts": r.n_prompts[k]}
                for r in self.records for k in range(len(r.dice))]
        return pd.DataFrame(rows, columns=["method", "case_id", "round", "dice", "surface_dice", "latency_s",
                                           "n_prompts"])

    def case_frame(self) -> pd.DataFrame:
        """One row per (method, case): final Dice, AUC of the Dice curve, rounds to each threshold (NaN: never)."""
        rows = []
        for r in self.records:
            row: dict[str, object] = {"method": r.method, "case_id": r.case_id, "final_dice": r.dice[-1],
                                      "final_surface_dice": r.surface_dice[-1], "dice_auc": dice_curve_auc(r.dice)}
            for threshold in self.thresholds:
                reached = rounds_to_reach(r.dice, threshold, self.noc_cap)
                row[_noc_key(threshold)] = float("nan") if reached is None else reached
            rows.append(row)
        return pd.DataFrame(rows)

    def curve_frame(self, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
        """Mean Dice per (method, round) with a bootstrap interval over cases."""
        rows = []
        for method in self.methods:
            curves = [r.dice for r in self.records if r.method == method]
            means = mean_curve(curves)
            length = len(means)
            padded = np.array([c + [c[-1]] * (length - len(c)) for c in curves], dtype=float)
            for k in range(length):
                low, high = bootstrap_ci(padded[:, k], confidence=confidence, seed=seed)
                rows.append({"method": method, "round": k + 1, "mean_dice": means[k], "ci_low": low, "ci_high": high,
                             "n_cases": len(curves)})
        return pd.DataFrame(rows)

    def summary(self) -> pd.DataFrame:
        """One row per method: mean Dice at the last round, mean AUC, NoC (mean, failures) per threshold, latency."""
        rows = []
        for method in self.methods:
            records = [r for r in self.records if r.method == method]
            curves = [r.dice for r in records]
            row: dict[str, object] = {"method": method, "n_cases": len(records),
                                      "rounds": max(len(c) for c in curves),
                                      "mean_final_dice": float(np.mean([c[-1] for c in curves])),
                                      "mean_final_surface_dice": float(np.mean([r.surface_dice[-1] for r in records])),
                                      "mean_dice_auc": float(np.mean([dice_curve_auc(c) for c in curves]))}
            for threshold in self.thresholds:
                result = noc(curves, threshold, self.noc_cap)
                row[_noc_key(threshold)] = result.mean
                row[f"{_noc_key(threshold)}_failed"] = result.n_failed
            latency = latency_summary([s for r in records for s in r.latency_s])
            row["latency_median_s"] = latency["median_s"]
            row["latency_p95_s"] = latency["p95_s"]
            rows.append(row)
        return pd.DataFrame(rows)


    def save(self, out_dir: str | Path, *, title: str = "", metadata: Mapping[str, object] | None = None,
             ) -> dict[str, Path]:
        """Write the tables and the Dice-vs-rounds figure into ``out_dir`` (each file atomically).

        Files: ``rounds.csv`` (per method, case and round), ``cases.csv`` (per method and case: final
        Dice, AUC, NoC), ``curve.csv`` (mean Dice per round with bootstrap intervals), ``summary.csv``
        and ``summary.json`` (per method; the JSON also holds ``metadata``), ``dice_vs_rounds.png``.

        Returns:
            The written paths by name.
        """
        from sarcomakit.reporting.interactive import dice_rounds_figure

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        curve, summary = self.curve_frame(), self.summary()
        paths = {"rounds": write_text(out / "rounds.csv", self.rounds_frame().to_csv(index=False)),
                 "cases": write_text(out / "cases.csv", self.case_frame().to_csv(index=False)),
                 "curve": write_text(out / "curve.csv", curve.to_csv(index=False)),
                 "summary": write_text(out / "summary.csv", summary.to_csv(index=False))}
        records = json.loads(summary.to_json(orient="records"))
        paths["summary_json"] = write_json(out / "summary.json", {**dict(metadata or {}), "methods": records,
                                                                  "thresholds": list(self.thresholds),
                                                                  "noc_cap": self.noc_cap})
        paths["figure"] = dice_rounds_figure(curve, out / "dice_vs_rounds.png", title=title,
                                             thresholds=self.thresholds)
        return paths


def evaluate_interactive(models: InteractiveModel | Mapping[str, InteractiveModel],
                         cases: Sequence[InteractiveCase | tuple[np.ndarray | sitk.Image, np.ndarray | sitk.Image]], *,
                         n_rounds: int = 10, robot: RobotConfig | None = None, seed: int = 0,
                         thresholds: Sequence[float] = (0.85, 0.90), noc_cap: int = NOC_CAP,
                         tolerance_mm: float = 2.0, session_options: Mapping[str, Any] | None = None,
                         ) -> InteractiveEvaluation:
    """Play the robot user for ``n_rounds`` on every case with every model.

    Args:
        models: one model, or models by method name.
        cases: :class:`InteractiveCase` objects or ``(image, reference)`` pairs (named
            ``case000``, ``case001``, ... in order).
        n_rounds: rounds per case, the initial prompts being round 1.
        robot: the simulated annotator's protocol (default :class:`RobotConfig`).
        seed: base seed of the robots (case ``i`` uses ``seed + i``).
        thresholds: Dice thresholds of NoC.
        noc_cap: rounds after which a case counts as a NoC failure.
        tolerance_mm: tolerance of the surface Dice.
        session_options: keyword arguments of :class:`InteractiveSession` (ROI margin, growth...).

    Returns:
        :class:`InteractiveEvaluation` with one record per (case, method).
    """
    if n_rounds < 1:
        raise UserInputError(f"n_rounds must be at least 1, got {n_rounds}.")
    if isinstance(models, Mapping):
        named = dict(models)
    else:
        named = {str(getattr(models, "name", type(models).__name__)): models}
    if not named:
        raise UserInputError("no model to evaluate.")
    config = robot or RobotConfig()
    records = []
    for index, case in enumerate(_as_cases(cases)):
        reference = _reference_array(case)
        for method, model in named.items():
            session = InteractiveSession(model, case.image, spacing=case.spacing, **dict(session_options or {}))
            if session.shape != reference.shape:
                raise UserInputError(f"case {case.case_id}: the reference has shape {reference.shape}, "
                                     f"the image {session.shape}.")
            records.append(_play(session, reference, RobotUser(config, seed=seed + index), n_rounds, tolerance_mm,
                                 CaseRecord(case.case_id, method)))
    return InteractiveEvaluation(records=records, thresholds=tuple(thresholds), noc_cap=noc_cap)


def _play(session: InteractiveSession, reference: np.ndarray, robot: RobotUser, n_rounds: int, tolerance_mm: float,
          record: CaseRecord) -> CaseRecord:
    mask = session.mask
    for round_number in range(1, n_rounds + 1):
        prompts = robot.initial_prompts(reference) if round_number == 1 else robot.corrective_prompts(reference, mask)
        latency = float("nan")
        if prompts:
            for prompt in prompts:
                session.add_prompt(prompt)
            mask = session.predict()
            latency = float(session.last_latency_s or 0.0)
        scores = round_scores(mask, reference, session.spacing, tolerance_mm)
        record.dice.append(scores["dice"])
        record.surface_dice.append(scores["surface_dice"])
        record.latency_s.append(latency)
        record.n_prompts.append(len(session.prompts))
    return record


def _as_cases(cases: Sequence[InteractiveCase | tuple]) -> list[InteractiveCase]:
    out = []
    for index, case in enumerate(cases):
        if isinstance(case, InteractiveCase):
            out.append(case)
        elif isinstance(case, tuple) and len(case) == 2:
            out.append(InteractiveCase(f"case{index:03d}", case[0], case[1]))
        else:
            raise UserInputError(f"case {index} is neither an InteractiveCase nor an (image, reference) pair.")
    if not out:
        raise UserInputError("no cases to evaluate.")
    return out


def _reference_array(case: InteractiveCase) -> np.ndarray:
    reference = case.reference
    if isinstance(reference, sitk.Image):
        reference = sitk.GetArrayFromImage(reference)
    mask = np.asarray(reference) > 0
    if mask.ndim != 3 or not mask.any():
        raise UserInputError(f"case {case.case_id}: the reference must be a non-empty 3D mask, "
                             f"got shape {mask.shape} with {int(mask.sum())} foreground voxels.")
    return mask


def _noc_key(threshold: float) -> str:
    return f"noc{round(threshold * 100)}"
