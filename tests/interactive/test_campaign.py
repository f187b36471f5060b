"""Active learning: the selection strategies, and ``sarcomakit interactive campaign`` end to end on a tiny cohort."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.campaign import CampaignConfig, k_centre_greedy, uncertainty_score
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.config import TrainConfig
from sarcomakit.training.api import train

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_cohorts import write_tiny_cohort  # noqa: E402


def test_uncertainty_scores_rank_disagreeing_samples_higher() -> None:
    confident = np.stack([np.full((4, 4, 4), 0.98), np.full((4, 4, 4), 0.99)])
    doubtful = np.stack([np.full((4, 4, 4), 0.1), np.full((4, 4, 4), 0.9)])
    for strategy in ("entropy", "variance"):
        assert uncertainty_score(doubtful, strategy) > uncertainty_score(confident, strategy)
    # variance is MONAI's VarianceMetric: the mean over voxels of the variance over samples
    assert uncertainty_score(doubtful, "variance") == pytest.approx(np.var([0.1, 0.9]), rel=1e-4)


def test_k_centre_greedy_covers_the_feature_space() -> None:
    class Named:
        def __init__(self, case_id: str) -> None:
            self.case_id = case_id

    features = {"a": np.array([0.0, 0.0]), "b": np.array([0.1, 0.0]), "c": np.array([5.0, 5.0]),
                "d": np.array([-4.0, 3.0]), "l": np.array([0.05, 0.05])}
    pool = [Named(n) for n in "abcd"]
    chosen = k_centre_greedy(pool, [Named("l")], features, 2)  # type: ignore[arg-type]
    assert [c.case_id for c in chosen] == ["c", "d"]  # far from the labelled case, then far from both


def test_bad_campaign_settings_are_user_errors() -> None:
    with pytest.raises(UserInputError, match="unknown strategy"):
        CampaignConfig(strategies=("oracle",))
    with pytest.raises(UserInputError, match="per_round"):
        CampaignConfig(per_round=0)


@pytest.mark.slow
def test_campaign_runs_every_strategy_on_a_tiny_cohort(tmp_path: Path) -> None:
    manifest = write_tiny_cohort(tmp_path / "cohort", n_cases=8)
    plan = plan_cohort(manifest, tmp_path / "plan.json", show_progress=False)
    config = TrainConfig(task="interactive", task_options={"single_channel": True, "scale_range": [1, 1]},
                         epochs=1, iterations_per_epoch=2, patch_size=[16, 32, 32], batch_size=2, augmentation="none",
                         num_workers=0, n_folds=2, network_options={"channels": [8, 16, 32], "num_res_units": 1},
                         device="cpu")
    train(manifest, plan, tmp_path / "run", folds=(0,), config=config)
    out = tmp_path / "campaign"
    before = {k: v.clone() for k, v in torch.load(tmp_path / "run" / "fold_0" / "checkpoint_best.pt",
                                                  weights_only=True)["model"].items()}
    result = CliRunner().invoke(app, [
        "interactive", "campaign", str(tmp_path / "run"), str(manifest.source), "--out", str(out), "--seeds", "0",
        "--initial", "1", "--per-round", "1", "--rounds", "2", "--steps", "2", "--max-interactions", "3",
        "--mc-samples", "2", "--test-fraction", "0.25", "--channel", "T2"])
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out / "campaign.csv")
    assert set(frame.strategy) == {"random", "entropy", "variance", "coreset"}
    for _, rows in frame.groupby("strategy"):
        assert list(rows["round"]) == [0, 1, 2] and list(rows.n_labelled) == [1, 2, 3]
        assert rows.cumulative_interactions.is_monotonic_increasing
        assert rows.interactions.between(1, 3).all() and rows.heldout_dice.between(0, 1).all()
        picked = " ".join(rows.picked).split()
        assert len(picked) == len(set(picked)) == 3  # no case is annotated twice
    # every strategy starts from the same first case (a paired comparison)
    assert frame[frame["round"] == 0].picked.nunique() == 1
    assert (out / "campaign.png").stat().st_size > 1000 and (out / "campaign_summary.csv").is_file()
    after = torch.load(tmp_path / "run" / "fold_0" / "checkpoint_best.pt", weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # the run's weights are left alone
