"""The in-process simulator: FedAvg's round, end to end through the CLI and predict, bad sites, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.federated import simulation
from sarcomakit.federated.simulation import FederatedSettings, simulate
from sarcomakit.inference.predictor import predict
from sarcomakit.runs.checkpoint import load_checkpoint

from .cohorts import TINY, multi_site_cohort


def test_one_round_of_fedavg_is_the_case_weighted_mean_of_the_sites(tmp_path: Path, monkeypatch) -> None:
    manifest, plan = multi_site_cohort(tmp_path, ["a", "a", "a", "b", "b"])
    returned = []
    original = simulation.train_site

    def spy(*args, **kwargs):
        update = original(*args, **kwargs)
        returned.append(update)
        return update

    monkeypatch.setattr(simulation, "train_site", spy)
    settings = FederatedSettings(strategy="fedavg", rounds=1, local_steps=2, val_fraction=0.0)
    simulate(manifest, plan, tmp_path / "run", settings=settings, config=TINY)
    assert [(u.site, u.n_cases) for u in returned] == [("a", 3), ("b", 2)]
    start = simulation.initial_weights(simulation.build_task(TINY), plan, TINY)
    saved = load_checkpoint(tmp_path / "run" / "fold_0" / "rounds" / "round_000.pt")["model"]
    a, b = (u.weights for u in returned)
    moved = False
    for key in saved:
        expected = (3 * a[key] + 2 * b[key]) / 5
        torch.testing.assert_close(saved[key], expected, rtol=1e-6, atol=1e-7)
        moved |= not torch.equal(saved[key], start[key])
    assert moved  # the sites trained, and the global weights changed


@pytest.mark.slow
def test_cli_simulates_three_sites_for_two_rounds_and_predict_uses_the_run(tmp_path: Path) -> None:
    manifest, plan = multi_site_cohort(tmp_path, ["s1", "s1", "s2", "s2", "s3", "s3"])
    TINY.save(tmp_path / "config.json")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["federated", "simulate", str(manifest.source),
                                      "--plan", str(tmp_path / "plan.json"), "--config", str(tmp_path / "config.json"),
                                      "--out", str(out),
                                      "--site-column", "site", "--rounds", "2", "--strategy", "fedavg",
                                      "--local-steps", "2", "--val-fraction", "0"])
    assert result.exit_code == 0, result.output
    history = pd.read_csv(out / "fold_0" / "history.csv")
    assert sorted(zip(history["round"], history["site"], strict=True)) == [
        (r, s) for r in (0, 1) for s in ("s1", "s2", "s3")]
    assert (history["status"] == "ok").all()
    assert sorted(p.name for p in (out / "fold_0" / "rounds").iterdir()) == ["round_000.pt", "round_001.pt"]
    outcome = predict(out, manifest.source, tmp_path / "pred")
    assert not outcome.failures and len(outcome.results) == len(manifest)
    assert (tmp_path / "pred" / "case00.nii.gz").is_file()


def test_a_site_without_cases_or_with_other_channels_is_skipped_and_the_round_goes_on(tmp_path: Path) -> None:
    manifest, plan = multi_site_cohort(tmp_path, ["good", "good", "bad", "bad"], blank_t2_site="bad")
    unlabelled = [c for c in manifest.cases]
    # a third site whose only case has no label: nothing to train a segmentation on
    import dataclasses

    from sarcomakit.data.manifest import Manifest
    extra = dataclasses.replace(unlabelled[0], case_id="nolabel", site="empty", label=None)
    path = tmp_path / "three.csv"
    Manifest(channels=manifest.channels, cases=[*manifest.cases, extra]).save(path)
    settings = FederatedSettings(strategy="fedavg", rounds=2, local_steps=1, val_fraction=0.0)
    result = simulate(Manifest.load(path), plan, tmp_path / "run", settings=settings, config=TINY)
    reasons = {(row["round"], row["site"]): row["reason"] for row in result.skipped}
    assert set(reasons) == {(r, s) for r in (0, 1) for s in ("bad", "empty")}
    assert "T2" in reasons[(0, "bad")] or "channel" in reasons[(0, "bad")]
    assert "label" in reasons[(0, "empty")]
    ok = [row for row in result.history if row["status"] == "ok"]
    assert [(row["round"], row["site"]) for row in ok] == [(0, "good"), (1, "good")]
    log = (tmp_path / "run" / "fold_0" / "train.log").read_text(encoding="utf-8")
    assert "site bad skipped" in log and "site empty skipped" in log
    assert (tmp_path / "run" / "fold_0" / "rounds" / "round_001.pt").is_file()


def test_a_site_that_fails_while_training_is_left_out_and_a_crashed_run_resumes(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    manifest, plan = multi_site_cohort(tmp_path, ["a", "a", "b", "b"])
    original = simulation.train_site
    calls = {"n": 0}

    def flaky(task, plan_, config, site, weights, **kwargs):
        calls["n"] += 1
        if site.name == "b" and kwargs["round_index"] == 0:
            raise RuntimeError("connection lost")
        if kwargs["round_index"] == 2 and calls.get("crash", True):
            calls["crash"] = False
            raise KeyboardInterrupt  # the whole process dies mid-round
        return original(task, plan_, config, site, weights, **kwargs)

    monkeypatch.setattr(simulation, "train_site", flaky)
    settings = FederatedSettings(strategy="fedyogi", rounds=3, local_steps=1, val_fraction=0.0)
    with pytest.raises(KeyboardInterrupt):
        simulate(manifest, plan, tmp_path / "run", settings=settings, config=TINY)
    last = load_checkpoint(tmp_path / "run" / "fold_0" / "checkpoint_last.pt")
    assert last["round"] == 1 and last["server"]["m"]  # the server optimiser's moments are kept
    failed = [row for row in last["history"] if row["status"] == "failed"]
    assert [(row["round"], row["site"]) for row in failed] == [(0, "b")] and "connection lost" in failed[0]["reason"]
    result = simulate(manifest, plan, tmp_path / "run", settings=settings, config=TINY, resume=True)
    assert [(row["round"], row["site"]) for row in result.history if row["status"] == "ok"] == [
        (0, "a"), (1, "a"), (1, "b"), (2, "a"), (2, "b")]
    summary = json.loads((tmp_path / "run" / "fold_0" / "summary.json").read_text(encoding="utf-8"))
    assert summary["rounds_run"] == 3


def test_client_level_dp_in_the_simulator_writes_epsilon_per_round_and_refuses_other_strategies(tmp_path: Path) -> None:
    from sarcomakit.federated.privacy import central_dp_epsilon

    manifest, plan = multi_site_cohort(tmp_path, ["s1", "s1", "s2", "s2", "s3", "s3"])
    TINY.save(tmp_path / "config.json")
    common = ["federated", "simulate", str(manifest.source), "--plan", str(tmp_path / "plan.json"), "--config",
              str(tmp_path / "config.json"), "--rounds", "2", "--local-steps", "1", "--val-fraction", "0",
              "--central-dp-noise", "1.0", "--central-dp-clip", "0.5"]
    result = CliRunner().invoke(app, [*common, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    privacy = json.loads((tmp_path / "run" / "privacy.json").read_text(encoding="utf-8"))
    assert privacy["unit"] == "site" and privacy["rounds"] == 2 and privacy["clipping_norm"] == 0.5
    assert privacy["epsilon"] == pytest.approx(central_dp_epsilon(1.0, 2, 1e-3))
    round0, round1 = (load_checkpoint(tmp_path / "run" / "fold_0" / "rounds" / f"round_00{r}.pt")["model"]
                      for r in (0, 1))
    assert any(not torch.equal(round0[k], round1[k]) for k in round0)
    refused = CliRunner().invoke(app, [*common, "--strategy", "fedmedian", "--out", str(tmp_path / "other")])
    assert refused.exit_code == 2 and "client-level DP" in refused.output
