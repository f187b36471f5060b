"""`sarcomakit experiment` on a tiny cohort: same folds for every method, OOF table, comparison table."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.experiments.multitask_comparison import radiomics_available

SMALL_CONFIG = ('{"epochs": 1, "iterations_per_epoch": 2, "patch_size": [16, 32, 32], "batch_size": 2, '
                '"optimizer": "adamw", "learning_rate": 0.003, "augmentation": "light", "num_workers": 0, '
                '"network_options": {"channels": [8, 16, 32], "num_res_units": 1}, "device": "cpu"}')


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """Every pipe table of a Markdown text as (header cells, body rows of cells)."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    block: list[list[str]] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif block:
            assert set("".join(block[1])) <= {"-", ":"}, "second line of a table must be its rule"
            tables.append((block[0], block[2:]))
            block = []
    return tables


@pytest.mark.slow
def test_experiment_writes_comparison_on_shared_folds(tiny_cohort, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(SMALL_CONFIG)
    methods = ["multitask", "grade_only"] + (["radiomics"] if radiomics_available() else [])
    out = tmp_path / "exp"
    result = CliRunner().invoke(app, ["experiment", str(tiny_cohort.source), "--out", str(out), "--folds", "3",
                                      "--methods", ",".join(methods), "--config", str(config),
                                      "--bootstrap", "50"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    oof = pd.read_csv(out / "oof_predictions.csv")
    assert sorted(oof["method"].unique()) == sorted(methods)
    for method in methods:  # every case is predicted exactly once per method, in the same fold
        rows = oof[oof["method"] == method].sort_values("case_id")
        assert list(rows["case_id"]) == sorted(tiny_cohort.case_ids)
    folds = oof.pivot(index="case_id", columns="method", values="fold")
    assert (folds.nunique(axis=1) == 1).all()
    splits = json.loads((out / "splits.json").read_text(encoding="utf-8"))
    for k, fold in enumerate(splits):  # each fold planned without its validation cases; last epoch kept
        fingerprint = json.loads((out / "plans" / f"split_{k}" / "fingerprint.json").read_text(encoding="utf-8"))
        assert {c["case_id"] for c in fingerprint["cases"]} == set(fold["train"])
        assert set(oof.loc[(oof["method"] == "multitask") & (oof["fold"] == k), "case_id"]) == set(fold["val"])
        run_config = json.loads((out / "runs" / "multitask" / f"split_{k}" / "config.json").read_text(encoding="utf-8"))
        assert run_config["checkpoint_selection"] == "last"
    assert oof.loc[oof["method"] == "grade_only", "dice"].isna().all()
    comparison = pd.read_csv(out / "comparison.csv", keep_default_na=False)
    assert set(methods) <= set(comparison.columns)
    # the Markdown table holds the same cells as comparison.csv, one column per method, reference first
    header, rows = markdown_tables((out / "comparison.md").read_text(encoding="utf-8"))[0]
    assert header[:2] == ["metric", "multitask"] and sorted(header[1:]) == sorted(methods)
    assert [row[0] for row in rows] == list(comparison["metric"])
    for row in rows:
        expected = comparison.loc[comparison["metric"] == row[0], header[1:]].iloc[0]
        assert row[1:] == list(expected)
    # and those cells are the out-of-fold predictions' metrics: mean Dice, none for grade_only
    dice = dict(zip(header, next(row for row in rows if row[0] == "Dice (mean)"), strict=True))
    mean_dice = oof.loc[oof["method"] == "multitask", "dice"].mean()
    assert dice["multitask"].startswith(f"{mean_dice:.3f}") and dice["grade_only"] == "–"
    differences = pd.read_csv(out / "differences.csv")
    assert set(differences["reference"]) == {"multitask"}
    assert set(differences["method"]) == set(methods) - {"multitask"}
    assert np.allclose(differences["difference"], differences["estimate"] - differences["estimate_reference"],
                       atol=1e-5)


def test_cli_method_list_matches_the_library() -> None:
    from sarcomakit.cli.experiment import METHODS
    from sarcomakit.experiments.multitask_comparison import ALL_METHODS

    assert METHODS == ALL_METHODS
