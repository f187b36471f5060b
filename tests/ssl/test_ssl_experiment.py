"""`sarcomakit experiment ssl` end to end on a tiny cohort: folds shared, pretraining never sees validation cases,
paired comparison against scratch; `sarcomakit experiment MANIFEST` still runs the multi-task comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.experiments.ssl_comparison import labelled_subsets

SMALL = ('{"epochs": 1, "iterations_per_epoch": 2, "patch_size": [16, 32, 32], "batch_size": 2, '
         '"optimizer": "adamw", "learning_rate": 0.003, "augmentation": "light", "num_workers": 0, '
         '"network_options": {"channels": [8, 16, 32], "num_res_units": 1}, "device": "cpu"}')


def test_labelled_subsets_are_nested_and_seeded() -> None:
    ids = [f"c{i}" for i in range(10)]
    subsets = labelled_subsets(ids, [2, 4, "all"], seed=0, fold=1)
    assert len(subsets["2"]) == 2 and set(subsets["2"]) <= set(subsets["4"]) and subsets["all"] == sorted(ids)
    assert subsets == labelled_subsets(ids, [2, 4, "all"], seed=0, fold=1)
    assert subsets["4"] != labelled_subsets(ids, [4], seed=0, fold=2)["4"]


@pytest.mark.slow
def test_ssl_experiment_end_to_end(tiny_cohort, tmp_path: Path) -> None:  # noqa: ANN001
    config = tmp_path / "config.json"
    config.write_text(SMALL)
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["experiment", "ssl", str(tiny_cohort.source), "--out", str(out), "--folds", "3",
                                      "--labelled", "2,all", "--methods", "scratch,mae", "--config", str(config),
                                      "--bootstrap", "50"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    dice = pd.read_csv(out / "dice.csv")
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    assert sorted(dice["method"].unique()) == ["mae", "scratch"]
    for (_method, _count), rows in dice.groupby(["method", "labelled"]):  # every case validated once per setting
        assert sorted(rows["case_id"]) == sorted(tiny_cohort.case_ids)
    for k, fold in enumerate(splits):  # pretraining saw the fold's training cases only
        pretrained_on = json.loads((out / "pretrain" / "mae" / f"fold_{k}" / "splits.json").read_text("utf-8"))[0]
        assert set(pretrained_on["train"]) | set(pretrained_on["val"]) == set(fold["train"])
        fingerprint = json.loads((out / "plans" / f"fold_{k}" / "fingerprint.json").read_text("utf-8"))
        assert {c["case_id"] for c in fingerprint["cases"]} == set(fold["train"])  # planned without its val cases
        run_config = json.loads((out / "runs" / "mae" / "n2" / f"fold_{k}" / "config.json").read_text("utf-8"))
        assert run_config["checkpoint_selection"] == "last"
        report_path = out / "runs" / "mae" / "n2" / f"fold_{k}" / "fold_0" / "init_report.json"
        report = json.loads(report_path.read_text("utf-8"))
        assert report["expected"] == len(report["loaded"]) > 0
        assert not (out / "runs" / "scratch" / "n2" / f"fold_{k}" / "fold_0" / "init_report.json").exists()
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(comparison["method"]) == {"scratch", "mae"} and set(comparison["labelled"].astype(str)) == {"2", "all"}
    assert comparison.loc[comparison["method"] == "mae", "difference"].notna().all()
    assert "difference vs scratch" in (out / "comparison.md").read_text(encoding="utf-8")
    page = (out / "report.html").read_text(encoding="utf-8")  # the same tables and plot in one HTML page
    assert "difference vs scratch" in page and "data:image/png;base64," in page
    assert (out / "dice_vs_labels.png").stat().st_size > 1000
    again = CliRunner().invoke(app, ["experiment", "ssl", str(tiny_cohort.source), "--out", str(out), "--folds", "3",
                                     "--labelled", "2,all", "--methods", "scratch,mae", "--config", str(config),
                                     "--bootstrap", "50"], catch_exceptions=False)
    assert again.exit_code == 0 and "pretraining" not in again.output  # everything reused


def test_a_transformer_method_on_the_wrong_network_is_refused_before_any_work(tiny_cohort, tmp_path: Path) -> None:  # noqa: ANN001
    config = tmp_path / "config.json"
    config.write_text(SMALL)
    result = CliRunner().invoke(app, ["experiment", "ssl", str(tiny_cohort.source), "--out", str(tmp_path / "exp"),
                                      "--methods", "scratch,mae,vit_mae", "--config", str(config)])
    assert result.exit_code == 2 and "vit_mae cannot pretrain a resunet" in result.output
    assert not (tmp_path / "exp").exists()


@pytest.mark.slow
def test_ssl_experiment_with_simmim_on_unetr(tiny_cohort, tmp_path: Path) -> None:  # noqa: ANN001
    config = tmp_path / "config.json"
    tiny_vit = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 8}
    config.write_text(SMALL.replace('{"channels": [8, 16, 32], "num_res_units": 1}', json.dumps(tiny_vit)))
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["experiment", "ssl", str(tiny_cohort.source), "--out", str(out), "--folds", "2",
                                      "--labelled", "2", "--methods", "scratch,simmim", "--network", "unetr",
                                      "--config", str(config), "--bootstrap", "20"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    dice = pd.read_csv(out / "dice.csv")
    assert sorted(dice["method"].unique()) == ["scratch", "simmim"]
    for k in range(2):  # the same validation cases for both, and every ViT tensor loaded into UNETR
        fold = dice[dice["fold"] == k]
        assert sorted(fold.loc[fold["method"] == "simmim", "case_id"]) == \
            sorted(fold.loc[fold["method"] == "scratch", "case_id"])
        report = json.loads((out / "runs" / "simmim" / "n2" / f"fold_{k}" / "fold_0" / "init_report.json")
                            .read_text("utf-8"))
        assert report["expected"] == len(report["loaded"]) and all(key.startswith("vit.") for key in report["loaded"])
        pretrain_config = json.loads((out / "pretrain" / "simmim" / f"fold_{k}" / "config.json").read_text("utf-8"))
        assert pretrain_config["network"] == "unetr" and pretrain_config["task"] == "simmim"
    comparison = pd.read_csv(out / "comparison.csv")
    assert comparison.loc[comparison["method"] == "simmim", "difference"].notna().all()


def test_the_table_gives_each_folds_labelled_cases_when_folds_differ() -> None:
    from sarcomakit.experiments.ssl_comparison import compare_dice, comparison_markdown

    rows = [{"method": method, "labelled": "all", "n_cases": n, "fold": fold, "case_id": f"{fold}-{i}",
             "dice": 0.5 + 0.1 * i + (0.05 if method == "mae" else 0.0)}
            for method in ("scratch", "mae") for fold, n in ((0, 6), (1, 10)) for i in range(3)]
    table = compare_dice(pd.DataFrame(rows), ["scratch", "mae"], ["all"], n_bootstrap=50)
    assert list(table["n_cases_per_fold"]) == ["6/10", "6/10"]
    assert "| all (6/10) | mae | 6 |" in comparison_markdown(table)
    assert table.loc[table["method"] == "mae", "difference"].iloc[0] == pytest.approx(0.05)
