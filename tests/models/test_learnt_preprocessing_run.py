"""A run with every learnable preprocessing layer on the minimal pipeline: it trains, records what it learnt,
and predicts masks on each input's own grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from sarcomakit.core.io.image import read_image
from sarcomakit.data.manifest import Manifest
from sarcomakit.inference.predictor import Predictor
from sarcomakit.models import ComposedNetwork
from sarcomakit.models.preprocessing_layers import INPUT_LAYERS, input_layer_specs
from sarcomakit.planning.fingerprint import Fingerprint
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.training.api import train

LAYERS = ["window", "monotone", "normaliser", "resizer", "zoom", "roi", "obelisk"]


def test_training_with_every_layer_lowers_the_loss_and_predicts_on_the_input_grid(tiny_cohort: Manifest,
                                                                                   tmp_path: Path) -> None:
    assert sorted(LAYERS) == INPUT_LAYERS.names()
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json", patch_size=[16, 32, 32], pipeline="minimal",
                       num_samples_per_case=500, show_progress=False)
    assert plan.learnt_steps == ["intensity", "spacing"] and not plan.resample
    assert {n.scheme for n in plan.normalization} == {"none"}
    fingerprint = Fingerprint.load(tmp_path / "fingerprint.json")
    specs = input_layer_specs(LAYERS, plan, fingerprint)
    specs[LAYERS.index("resizer")]["scale"] = [1.0, 0.5, 0.5]
    specs[LAYERS.index("obelisk")].update(offsets=4, features=4, groups=2)
    config = TrainConfig(network_options={"channels": [4, 8], "num_res_units": 1, "input_layers": specs},
                         epochs=6, iterations_per_epoch=4, batch_size=2, optimizer="adamw", learning_rate=3e-3,
                         augmentation="none", device="cpu", amp=False, num_workers=0, n_folds=2,
                         checkpoint_selection="last", sw_overlap=0.25)
    run_dir = tmp_path / "run"
    result = train(tiny_cohort, plan, run_dir, folds=(0,), config=config, preprocessed_dir=tmp_path / "pre")
    history = result.folds[0].history
    assert history[-1]["train_loss"] < history[0]["train_loss"]

    recorded = Plan.load(run_dir / "plan.json")
    assert recorded.learnt_steps == ["intensity", "spacing"]
    assert TrainConfig.load(run_dir / "config.json").network_options["input_layers"] == specs
    state = load_checkpoint(run_dir / "fold_0" / "checkpoint_last.pt")["model"]
    assert any(k.startswith("input_layers.") for k in state)
    initial_level = (torch.tensor(specs[0]["low"]) + torch.tensor(specs[0]["high"])) / 2
    assert not torch.allclose(state["input_layers.0.level"], initial_level)  # the windows were trained

    predictor = Predictor.from_run(run_dir, device="cpu")
    assert isinstance(predictor.models[0], ComposedNetwork) and len(predictor.models[0].input_layers) == len(LAYERS)
    for case in tiny_cohort.cases[:2]:  # the two orientations of the cohort
        prediction = predictor.predict_case(case)
        image = read_image(case.images["T1"])
        assert prediction.mask.GetSize() == image.GetSize()
        assert np.allclose(prediction.mask.GetSpacing(), image.GetSpacing())
        assert np.allclose(prediction.mask.GetDirection(), image.GetDirection())
        assert sitk.GetArrayViewFromImage(prediction.mask).dtype == np.uint8
