"""The evaluation protocol: robot rounds per case and method, NoC, curves and latency tables."""

from __future__ import annotations

import math

import numpy as np
import pytest
from interactive_volumes import sphere_in_noise

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.classical import GeodesicModel, RandomWalkerModel
from sarcomakit.interactive.evaluate import InteractiveCase, evaluate_interactive
from sarcomakit.interactive.robot import RobotConfig


class Nothing:
    name = "nothing"

    def predict(self, image, prompts, previous_mask, roi, *, spacing=None):
        return np.zeros(roi.shape, bool)


class ReferenceByShape:
    """Perfect model keyed by image shape (each test case has its own shape)."""

    name = "perfect"

    def __init__(self, references: list[np.ndarray]) -> None:
        self.references = {r.shape: r for r in references}

    def predict(self, image, prompts, previous_mask, roi, *, spacing=None):
        return self.references[image.shape[1:]][roi.slices]


def cases() -> list[tuple[np.ndarray, np.ndarray]]:
    return [sphere_in_noise(seed=0, shape=(24, 28, 28), radius=7),
            sphere_in_noise(seed=1, shape=(22, 30, 26), radius=6)]


def test_perfect_and_empty_models_give_the_extreme_figures():
    pairs = cases()
    evaluation = evaluate_interactive({"perfect": ReferenceByShape([r for _, r in pairs]), "nothing": Nothing()},
                                      pairs, n_rounds=3)
    summary = evaluation.summary().set_index("method")
    assert summary.loc["perfect", "mean_final_dice"] == 1.0
    assert summary.loc["perfect", "noc85"] == 1.0 and summary.loc["perfect", "noc90_failed"] == 0
    assert summary.loc["nothing", "mean_final_dice"] == 0.0
    assert summary.loc["nothing", "noc90"] == 20.0 and summary.loc["nothing", "noc90_failed"] == 2
    rounds = evaluation.rounds_frame()
    perfect = rounds[rounds.method == "perfect"]
    # Nothing to correct after a perfect round: the robot stops, no latency is recorded.
    assert perfect[perfect["round"] > 1].latency_s.isna().all()
    assert perfect[perfect["round"] == 1].latency_s.notna().all()
    nothing = rounds[rounds.method == "nothing"]
    assert nothing.latency_s.notna().all()
    # Two initial scribbles, then one correction per round.
    assert all(list(group.n_prompts) == [2, 3, 4] for _, group in nothing.groupby("case_id"))


def test_classical_baselines_played_by_the_robot():
    pairs = cases()
    named = [InteractiveCase(f"sphere{i}", image, reference) for i, (image, reference) in enumerate(pairs)]
    evaluation = evaluate_interactive({"random_walker": RandomWalkerModel(), "geodesic": GeodesicModel()}, named,
                                      n_rounds=2, robot=RobotConfig(plane="axial"), seed=3)
    rounds = evaluation.rounds_frame()
    assert len(rounds) == 2 * 2 * 2
    assert set(rounds.case_id) == {"sphere0", "sphere1"}
    assert rounds.dice.between(0, 1).all() and rounds.surface_dice.between(0, 1).all()
    # Same initial prompts for both methods (paired comparison): same prompt count in round 1.
    first = rounds[rounds["round"] == 1].pivot(index="case_id", columns="method", values="n_prompts")
    assert (first["random_walker"] == first["geodesic"]).all()
    summary = evaluation.summary().set_index("method")
    assert (summary.mean_final_dice > 0.85).all()
    assert {"noc85", "noc85_failed", "noc90", "noc90_failed", "mean_dice_auc", "latency_median_s",
            "latency_p95_s"} <= set(summary.columns)
    assert (summary.latency_p95_s >= summary.latency_median_s).all()
    per_case = evaluation.case_frame()
    assert len(per_case) == 4 and {"noc85", "noc90", "dice_auc", "final_dice"} <= set(per_case.columns)
    curve = evaluation.curve_frame()
    assert len(curve) == 2 * 2
    assert (curve.ci_low <= curve.mean_dice + 1e-12).all() and (curve.mean_dice <= curve.ci_high + 1e-12).all()


def test_noc_of_a_case_is_nan_in_the_case_table_when_never_reached():
    pairs = cases()[:1]
    evaluation = evaluate_interactive(Nothing(), pairs, n_rounds=2)
    row = evaluation.case_frame().iloc[0]
    assert math.isnan(row["noc85"]) and row["final_dice"] == 0.0


def test_bad_evaluation_inputs_are_user_errors():
    image, reference = cases()[0]
    with pytest.raises(UserInputError, match="no cases"):
        evaluate_interactive(Nothing(), [])
    with pytest.raises(UserInputError, match="n_rounds"):
        evaluate_interactive(Nothing(), [(image, reference)], n_rounds=0)
    with pytest.raises(UserInputError, match="non-empty 3D mask"):
        evaluate_interactive(Nothing(), [(image, np.zeros_like(reference))])
    with pytest.raises(UserInputError, match="shape"):
        evaluate_interactive(Nothing(), [(image, reference[:-1])])
