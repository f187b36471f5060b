"""``sarcomakit experiment preprocessing`` end to end on a tiny cohort with a tiny budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.data.manifest import Manifest
from sarcomakit.experiments.preprocessing_comparison import (
    ARM_DEFINITIONS,
    ARMS,
    arm_plan,
    in_domain_folds,
    leave_one_site_out_folds,
)
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.config import TrainConfig


def test_folds_keep_sites_in_domain_and_hold_one_out(tiny_cohort: Manifest) -> None:
    sites = {c.case_id: c.site for c in tiny_cohort.cases}
    for fold in in_domain_folds(tiny_cohort, 3, seed=0):
        assert {sites[c] for c in fold["val"]} <= {sites[c] for c in fold["train"]}
    loso = leave_one_site_out_folds(tiny_cohort)
    assert len(loso) == 2
    for fold in loso:
        assert len({sites[c] for c in fold["val"]}) == 1
        assert not {sites[c] for c in fold["val"]} & {sites[c] for c in fold["train"]}


def test_each_arm_leaves_only_its_learnt_steps_to_the_network(tiny_cohort: Manifest, tmp_path: Path) -> None:
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json", num_samples_per_case=200, show_progress=False)
    assert [n.scheme for n in arm_plan(plan, ARM_DEFINITIONS["fixed"]).normalization] == ["zscore", "zscore"]
    assert [n.scheme for n in arm_plan(plan, ARM_DEFINITIONS["percentile"]).normalization] == ["percentile"] * 2
    zoom = arm_plan(plan, ARM_DEFINITIONS["zoom"])
    assert not zoom.resample and [n.scheme for n in zoom.normalization] == ["zscore", "zscore"]
    window = arm_plan(plan, ARM_DEFINITIONS["window"])
    assert window.resample and {n.scheme for n in window.normalization} == {"none"}
    everything = arm_plan(plan, ARM_DEFINITIONS["all"])
    assert everything.learnt_steps == ["crop", "intensity", "spacing"] and not everything.resample


def test_an_identity_crop_is_drawn_as_the_whole_patch_and_a_learnt_box_where_it_is(tiny_cohort: Manifest,
                                                                                     tmp_path: Path) -> None:
    import torch

    from sarcomakit.experiments.learnt_geometry import _roi_panel
    from sarcomakit.models.preprocessing_layers import ROICrop

    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json", num_samples_per_case=200, show_progress=False)
    case = next(c for c in tiny_cohort.cases if c.label is not None)
    crop = ROICrop(len(plan.channels))
    _, case_id, image, mask, low, high = _roi_panel([crop], case, plan, [8, 16, 16])
    assert case_id == case.case_id and image.shape == (8, 16, 16) and mask is not None and mask.any()
    np.testing.assert_allclose(low, [-0.5] * 3, atol=1e-5)  # the identity crop covers every voxel
    np.testing.assert_allclose(high, [7.5, 15.5, 15.5], atol=1e-5)
    with torch.no_grad():  # a box at centre (0, 0.5, -0.5), half-width 0.5 (rate 1: the raw output is the box)
        crop.rate = 1.0
        crop.localisation[-1].bias.copy_(torch.tensor([0.0, np.arctanh(0.5), -np.arctanh(0.5), *[np.log(1 / 3)] * 3]))
    _, _, _, _, low, high = _roi_panel([crop], case, plan, [8, 16, 16])
    np.testing.assert_allclose(low, [1.5, 7.5, -0.5], atol=1e-4)  # (c - h + 1) * n / 2 - 0.5
    np.testing.assert_allclose(high, [5.5, 15.5, 7.5], atol=1e-4)


@pytest.mark.slow
def test_experiment_runs_end_to_end(tiny_cohort: Manifest, tmp_path: Path) -> None:
    config = TrainConfig(network_options={"channels": [4, 8], "num_res_units": 1}, epochs=1, iterations_per_epoch=1,
                         batch_size=2, patch_size=[16, 32, 32], device="cpu", amp=False, num_workers=0,
                         augmentation="none", sw_overlap=0.0, checkpoint_selection="last")
    config_path = config.save(tmp_path / "config.json")
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["experiment", "preprocessing", str(tiny_cohort.source), "--out", str(out),
                                      "--folds", "2", "--bootstrap", "20", "--config", str(config_path),
                                      "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = (out / "comparison.md").read_text(encoding="utf-8")
    for arm in ARMS:
        assert f"| {arm} |" in report  # every arm has a cost row
    assert "What the layers learnt" in report and "zoom (z, y, x)" in report
    for setting in ("in_domain", "loso", "spacing_shift"):
        oof = pd.read_csv(out / setting / "oof_predictions.csv")
        assert set(oof["method"]) == set(ARMS)
        assert oof.groupby("method").size().eq(len(tiny_cohort.cases)).all()  # every case validated once per arm
        assert oof["dice"].between(0, 1).all()
        differences = pd.read_csv(out / setting / "differences.csv")
        assert set(differences["method"]) == set(ARMS) - {"fixed"}
        assert (out / setting / "comparison.md").is_file()
    costs = pd.read_csv(out / "costs.csv")
    by_arm = costs[costs["setting"] == "loso"].set_index("arm")
    assert by_arm.loc["fixed", "input_layer_parameters"] == 0
    assert by_arm.loc["all", "input_layer_parameters"] > by_arm.loc["window", "input_layer_parameters"] > 0
    assert by_arm.loc["obelisk", "input_layer_parameters"] > 0
    run_config = json.loads((out / "loso" / "runs" / "all" / "split_0" / "config.json").read_text(encoding="utf-8"))
    assert [s["layer"] for s in run_config["network_options"]["input_layers"]] == list(ARM_DEFINITIONS["all"].layers)
    assert run_config["checkpoint_selection"] == "last"  # no epoch chosen by the scored cases
    boxed = json.loads((out / "loso" / "runs" / "roi_box" / "split_0" / "config.json").read_text(encoding="utf-8"))
    assert boxed["network_options"]["input_layers"] == [{"layer": "roi", "box_weight": 1.0}]
    # each fold planned on its training cases: the held-out site's thicker slices are not in the plan
    for k, fold in enumerate(json.loads((out / "loso" / "splits.json").read_text(encoding="utf-8"))):
        fingerprint_path = out / "loso" / "plans" / f"split_{k}" / "fingerprint.json"
        fingerprint = json.loads(fingerprint_path.read_text(encoding="utf-8"))
        assert sorted([c["case_id"] for c in fingerprint["cases"]]) == sorted(fold["train"])
    shift = json.loads((out / "spacing_shift" / "splits.json").read_text(encoding="utf-8"))
    assert all(c.endswith("-thick") for c in shift[0]["val"] + shift[1]["train"])
    assert (out / "in_domain" / "learnt_intensity.png").is_file()
    assert "learnt_intensity.png" in report
    assert (out / "in_domain" / "learnt_geometry.png").is_file() and "in_domain/learnt_geometry.png" in report
    assert "in_domain/learnt_intensity_by_site.png" in report and "loso/learnt_intensity_by_site.png" in report
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "| roi_box |" not in page and "<td>roi_box</td>" in page and "data:image/png;base64," in page
    # resumable: a rerun reuses every finished arm
    again = CliRunner().invoke(app, ["experiment", "preprocessing", str(tiny_cohort.source), "--out", str(out),
                                     "--folds", "2", "--bootstrap", "20", "--config", str(config_path),
                                     "--device", "cpu"])
    assert again.exit_code == 0, again.output


@pytest.mark.slow
def test_experiment_compares_grade_and_survival_with_the_multitask_option(tiny_cohort: Manifest,
                                                                          tmp_path: Path) -> None:
    from sarcomakit.experiments.preprocessing_comparison import run_preprocessing_experiment

    config = TrainConfig(network_options={"channels": [4, 8], "num_res_units": 1}, epochs=1, iterations_per_epoch=1,
                         batch_size=2, patch_size=[16, 32, 32], device="cpu", amp=False, num_workers=0,
                         augmentation="none", sw_overlap=0.0)
    results = run_preprocessing_experiment(tiny_cohort, tmp_path / "exp", n_folds=2, config=config,
                                           arms=["window", "obelisk"], settings=["loso"], n_bootstrap=20,
                                           task="multitask")
    oof = pd.read_csv(tmp_path / "exp" / "loso" / "oof_predictions.csv")
    assert set(oof["method"]) == {"fixed", "window", "obelisk"}
    probabilities = oof[["p_low", "p_intermediate", "p_high"]]
    assert probabilities.notna().all().all() and np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)
    assert oof["log_risk"].notna().all() and oof["grade_true"].notna().all() and oof["dice"].between(0, 1).all()
    metrics = set(results["loso"].table.index)
    assert "dice_mean" in metrics and any("auc" in m for m in metrics) and any("c_index" in m for m in metrics)
    run_config_path = tmp_path / "exp" / "loso" / "runs" / "window" / "split_0" / "config.json"
    run_config = json.loads(run_config_path.read_text(encoding="utf-8"))
    assert run_config["task"] == "multitask"
