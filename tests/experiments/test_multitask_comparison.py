"""`sarcomakit experiment` on a tiny cohort: same folds for every method, OOF table, comparison table."""

from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.experiments.multitask_comparison import radiomics_available

SMALL_CONFIG = ('{"epochs": 1, "iterations_per_epoch": 2, "patch_size": [16, 32, 32], "batch_size": 2, '
                '"optimizer": "adamw", "learning_rate": 0.003, "augmentation": "light", "num_workers": 0, '
                '"network_options": {"channels": [8, 16, 32], "num_res_units": 1}, "device": "cpu"}')


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
    assert oof.loc[oof["method"] == "grade_only", "dice"].isna().all()
    comparison = pd.read_csv(out / "comparison.csv")
    assert set(methods) <= set(comparison.columns)
    assert (out / "comparison.md").read_text().count("|") > 10
    assert (out / "differences.csv").is_file()


def test_cli_method_list_matches_the_library() -> None:
    from sarcomakit.cli.experiment import METHODS
    from sarcomakit.experiments.multitask_comparison import ALL_METHODS

    assert METHODS == ALL_METHODS
