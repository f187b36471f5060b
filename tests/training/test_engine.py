"""A tiny training run learns, checkpoints, resumes, and refuses to overwrite a finished fold."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry, read_image
from sarcomakit.inference.predictor import Predictor, predict
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.config import TrainConfig
from sarcomakit.runs.folder import RunFolder
from sarcomakit.training.api import train
from sarcomakit.training.fold import poly_learning_rate

CONFIG = TrainConfig(epochs=6, iterations_per_epoch=6, patch_size=[16, 32, 32], batch_size=2, optimizer="adamw",
                     learning_rate=3e-3, augmentation="light", num_workers=0, n_folds=3,
                     network_options={"channels": [8, 16, 32], "num_res_units": 1}, device="cpu")


def test_poly_schedule() -> None:
    assert poly_learning_rate(0.01, 0, 100) == 0.01
    assert poly_learning_rate(0.01, 50, 100) == pytest.approx(0.01 * 0.5**0.9)


@pytest.mark.slow
def test_training_reduces_loss_resumes_and_predicts_on_input_geometry(tiny_cohort, tmp_path: Path) -> None:
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json")
    run_dir = tmp_path / "run"
    result = train(tiny_cohort, plan, run_dir, folds=(0,), config=CONFIG).folds[0]
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.8, losses
    assert result.score_name == "val_dice" and result.best_score > 0.3
    run = RunFolder.open(run_dir)
    assert set(run.trained_folds()) == {0}
    history = pd.read_csv(run_dir / "fold_0" / "history.csv")  # one row per epoch, as the run returned it
    assert list(history["epoch"]) == list(range(CONFIG.epochs))
    np.testing.assert_allclose(history["train_loss"], losses, rtol=1e-6)
    assert len(run.splits()) == 3

    with pytest.raises(UserInputError, match="already has a checkpoint"):
        train(tiny_cohort, plan, run_dir, folds=(0,), config=CONFIG)
    resumed = train(tiny_cohort, plan, run_dir, folds=(0,), config=CONFIG.updated(epochs=8), resume=True).folds[0]
    assert [h["epoch"] for h in resumed.history] == list(range(8))

    out = tmp_path / "pred"
    outcome = predict(run_dir, tiny_cohort.source, out, save_probabilities=True)
    assert not outcome.failures and len(outcome.results) == len(tiny_cohort)
    for case in tiny_cohort:
        mask = read_image(out / f"{case.case_id}.nii.gz")
        reference = read_image(case.images["T1"])
        assert Geometry.of(mask).matches(Geometry.of(reference), atol=1e-6)
        probs = sitk.GetArrayFromImage(read_image(out / f"{case.case_id}_probabilities.nii.gz"))
        assert probs.shape == (*Geometry.of(reference).array_shape, 2)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
    second = predict(run_dir, tiny_cohort.source, out)
    assert len(second.skipped) == len(tiny_cohort) and not second.results

    with pytest.raises(UserInputError, match="no checkpoint_best.pt"):
        Predictor.from_run(run_dir, folds=[2])
