"""The CLI end to end on a tiny cohort: plan -> train -> predict -> evaluate, and user errors."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.io.image import Geometry, read_image

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_help_lists_the_main_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("synth", "validate", "plan", "train", "predict", "evaluate", "demo", "wsi"):
        assert command in result.output


def test_user_error_is_one_message_without_traceback(tmp_path: Path) -> None:
    result = invoke("train", tmp_path / "missing.csv", "--plan", tmp_path / "plan.json")
    assert result.exit_code == 2
    assert "missing.csv" in result.output and "Traceback" not in result.output


@pytest.mark.slow
def test_plan_train_predict_evaluate(tiny_cohort, tmp_path: Path) -> None:
    manifest = tiny_cohort.source
    plan = tmp_path / "plan.json"
    assert invoke("plan", manifest, "--out", plan).exit_code == 0
    run = tmp_path / "run"
    options = ["--fold", "0", "--folds", "3", "--epochs", "3", "--iterations", "4", "--batch-size", "2",
               "--optimizer", "adamw", "--lr", "0.003", "--augmentation", "light", "--workers", "0"]
    result = invoke("train", manifest, "--plan", plan, "--out", run, *options)
    assert result.exit_code == 0, result.output
    assert (run / "fold_0" / "checkpoint_best.pt").is_file() and (run / "config.json").is_file()

    again = invoke("train", manifest, "--plan", plan, "--out", run, *options)
    assert again.exit_code == 2 and "--resume" in again.output
    other = invoke("train", manifest, "--plan", plan, "--out", run, *options, "--network", "segresnet")
    assert other.exit_code == 2 and "other training options" in other.output

    pred = tmp_path / "pred"
    result = invoke("predict", run, manifest, pred)
    assert result.exit_code == 0, result.output
    case = tiny_cohort.cases[0]
    assert Geometry.of(read_image(pred / f"{case.case_id}.nii.gz")).matches(Geometry.of(read_image(case.images["T1"])))

    single = tmp_path / "single"
    one_case = f"T1={case.images['T1']},T2={case.images['T2']}"
    assert invoke("predict", run, one_case, single).exit_code == 0
    assert len(list(single.glob("*.nii.gz"))) == 1

    result = invoke("evaluate", pred, manifest, "--out", tmp_path / "eval")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "eval" / "metrics_per_case.csv").is_file()
