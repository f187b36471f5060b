"""``sarcomakit interactive evaluate`` end to end with a classical baseline, and its errors and exit statuses."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_cohorts import write_tiny_cohort  # noqa: E402


@pytest.fixture
def cohort(tmp_path: Path) -> Path:
    return write_tiny_cohort(tmp_path / "cohort", n_cases=3).source


def test_evaluate_a_classical_baseline_on_a_synthetic_cohort(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(app, ["interactive", "evaluate", "geodesic", str(cohort), "--rounds", "3",
                                      "--protocol", "clicks", "--out", str(out), "--seed", "4"])
    assert result.exit_code == 0, result.output
    for name in ("rounds.csv", "cases.csv", "curve.csv", "summary.csv", "summary.json", "dice_vs_rounds.png"):
        assert (out / name).is_file(), name
    rounds = pd.read_csv(out / "rounds.csv")
    assert len(rounds) == 3 * 3 and set(rounds.method) == {"geodesic"}
    assert rounds.groupby("case_id")["round"].apply(list).map(lambda r: r == [1, 2, 3]).all()
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["robot"]["initial"] == "clicks" and summary["channels"] == ["T1", "T2"]
    method = summary["methods"][0]
    assert method["n_cases"] == 3 and 0 < method["mean_final_dice"] <= 1
    assert {"noc85", "noc90", "noc85_failed", "mean_dice_auc", "latency_median_s", "latency_p95_s"} <= set(method)
    assert "geodesic: final Dice" in result.output


def test_a_damaged_case_is_listed_and_the_others_are_evaluated(cohort: Path, tmp_path: Path) -> None:
    (cohort.parent / "images" / "case01_T2.nii.gz").write_bytes(b"not an image")
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(app, ["interactive", "evaluate", "geodesic", str(cohort), "--rounds", "1",
                                      "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert "case01" in result.output and "1 failed" in result.output
    assert set(pd.read_csv(out / "cases.csv").case_id) == {"case00", "case02"}


@pytest.mark.parametrize(("arguments", "message"), [
    (["watershed"], "unknown interactive model 'watershed'"),
    (["geodesic", "--channel", "T9"], "no channel T9"),
    (["geodesic", "--protocol", "lasso"], "robot initial must be one of"),
    (["geodesic", "--cases", "case07"], "no labelled case case07"),
])
def test_bad_evaluation_arguments_exit_2_with_one_line(cohort: Path, tmp_path: Path, arguments: list[str],
                                                       message: str) -> None:
    model, *options = arguments
    result = CliRunner().invoke(app, ["interactive", "evaluate", model, str(cohort), "--out", str(tmp_path / "o"),
                                      *options])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_a_single_channel_choice_reaches_the_models(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "evaluation"
    result = CliRunner().invoke(app, ["interactive", "evaluate", "random_walker", str(cohort), "--rounds", "1",
                                      "--channel", "T2", "--cases", "case00", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["channels"] == ["T2"]
