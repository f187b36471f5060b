"""`sarcomakit experiment federated` on a tiny three-site cohort: held-out test cases per site, every method on them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from federated.cohorts import TINY, multi_site_cohort
from sarcomakit.cli.main import app
from sarcomakit.data.manifest import Manifest
from sarcomakit.experiments.federated_comparison import site_test_split
from sarcomakit.runs.checkpoint import load_checkpoint

SITES = ["a"] * 3 + ["b"] * 3 + ["c"] * 3


def test_each_site_holds_out_its_own_test_cases(tmp_path: Path) -> None:
    manifest, _ = multi_site_cohort(tmp_path, SITES)
    fold = site_test_split(manifest, "site", 0.34, seed=0)[0]
    site_of = {c.case_id: c.site for c in manifest.cases}
    assert sorted(site_of[c] for c in fold["val"]) == ["a", "b", "c"]  # one test case per site
    assert not set(fold["train"]) & set(fold["val"]) and len(fold["train"]) == 6


@pytest.mark.slow
def test_experiment_compares_every_method_on_the_same_held_out_cases(tmp_path: Path) -> None:
    manifest, _ = multi_site_cohort(tmp_path, SITES)
    TINY.save(tmp_path / "config.json")
    out = tmp_path / "exp"
    args = ["experiment", "federated", str(manifest.source), "--out", str(out), "--config",
            str(tmp_path / "config.json"), "--rounds", "2", "--local-steps", "1", "--test-fraction", "0.34",
            "--bootstrap", "50", "--dp-epsilon", "4,8"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    test_ids = json.loads((out / "splits.json").read_text(encoding="utf-8"))[0]["val"]
    dice = pd.read_csv(out / "dice.csv")
    methods = ("centralised", "centralised_compute", "local", "fedavg", "fedprox", "cdp_fedavg", "dp_fedavg_eps4",
               "dp_fedavg_eps8")
    assert set(dice["method"]) == set(methods)
    for method in methods:  # every method scores every test case
        assert sorted(dice.loc[dice["method"] == method, "case_id"]) == sorted(test_ids)
    # the test cases are never trained on: the plan and every run saw the training cases only
    for run in [*(out / "runs").glob("*/federated.json"), *(out / "runs" / "local").glob("*/federated.json")]:
        sites = json.loads(run.read_text(encoding="utf-8"))["sites"]
        trained = {c for site in sites.values() for c in site["train"] + site["val"]}
        assert trained and not trained & set(test_ids)
    centralised = json.loads((out / "runs" / "centralised" / "federated.json").read_text(encoding="utf-8"))["sites"]
    assert list(centralised) == ["pooled"] and len(centralised["pooled"]["train"]) == 6
    assert sorted(p.name for p in (out / "runs" / "local").iterdir()) == ["a", "b", "c"]
    for epsilon in (4, 8):  # one DP run per budget, each spending its own
        privacy = json.loads((out / "runs" / f"dp_fedavg_eps{epsilon}" / "privacy.json").read_text(encoding="utf-8"))
        assert privacy["unit"] == "patient"
        assert max(site["epsilon"] for site in privacy["sites"].values()) == pytest.approx(epsilon, rel=0.05)
    # the same schedule for every run: 2 rounds from the same initial weights
    for run in ("centralised", "fedavg", "local/a"):
        assert load_checkpoint(out / "runs" / run / "fold_0" / "checkpoint_best.pt")["round"] == 1
    table = pd.read_csv(out / "comparison.csv")
    overall = table[table["site"] == "all"].set_index("method")
    assert overall.loc["centralised", "cases"] == 3 and pd.isna(overall.loc["centralised", "difference"])
    for method in ("fedavg", "local"):  # paired differences on the same cases
        mean = dice[dice["method"] == method]["dice"].mean() - dice[dice["method"] == "centralised"]["dice"].mean()
        assert overall.loc[method, "difference"] == pytest.approx(mean, abs=1e-9)
    cost = pd.read_csv(out / "cost.csv").set_index("run")
    assert cost.loc["fedavg", "sites"] == 3 and cost.loc["centralised", "sites"] == 1
    # the equal-compute reference: one pooled site taking the three sites' steps per round
    assert cost.loc["centralised_compute", "sites"] == 1
    assert cost.loc["centralised_compute", "local_steps"] == 3 * cost.loc["fedavg", "local_steps"] == 3
    pooled = json.loads((out / "runs" / "centralised_compute" / "federated.json").read_text(encoding="utf-8"))
    assert pooled["settings"]["local_steps"] == 3 and list(pooled["sites"]) == ["pooled"]
    assert cost.loc["fedavg", "bytes_per_round_all_sites"] == 6 * cost.loc["fedavg", "bytes_each_way"] > 0
    attack = pd.read_csv(out / "membership.csv").set_index("method")
    assert list(attack.index) == ["centralised", "centralised_compute", "fedavg", "fedprox", "cdp_fedavg",
                                  "dp_fedavg_eps4", "dp_fedavg_eps8"]
    client_level = json.loads((out / "runs" / "cdp_fedavg" / "privacy.json").read_text(encoding="utf-8"))
    assert client_level["unit"] == "site" and client_level["rounds"] == 2
    assert cost.loc["cdp_fedavg", "epsilon"] == pytest.approx(client_level["epsilon"])
    assert (attack["members"] == 6).all() and (attack["non_members"] == 3).all()
    assert attack["attack_auc"].between(0, 1).all()
    assert (out / "federated_comparison.png").stat().st_size > 1000
    assert "vs centralised" in (out / "comparison.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "centralised_compute" in page and "data:image/png;base64," in page
    Manifest.load(manifest.source)  # the input manifest is untouched and still loads


def test_dp_budgets_name_one_run_per_epsilon_and_bad_values_are_one_line_errors(tmp_path: Path) -> None:
    from sarcomakit.core.errors import UserInputError
    from sarcomakit.experiments.federated_comparison import dp_budgets

    assert dp_budgets(8) == {"dp_fedavg": 8.0}
    assert dp_budgets([1, 4, 0.5]) == {"dp_fedavg_eps1": 1.0, "dp_fedavg_eps4": 4.0, "dp_fedavg_eps0.5": 0.5}
    for bad in ([], [0.0], [4, 4]):
        with pytest.raises(UserInputError):
            dp_budgets(bad)
    manifest, _ = multi_site_cohort(tmp_path, SITES)
    result = CliRunner().invoke(app, ["experiment", "federated", str(manifest.source), "--out", str(tmp_path / "x"),
                                      "--dp-epsilon", "1,four"])
    assert result.exit_code == 2 and "--dp-epsilon" in result.output and not (tmp_path / "x").exists()
