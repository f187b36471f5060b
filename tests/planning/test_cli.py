"""``sarcomakit plan`` and ``sarcomakit preprocess`` through the typer app."""

from __future__ import annotations

import json

import pytest
from planning_data import write_cohort
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.planning import Plan, PreprocessedCase

runner = CliRunner()


def test_plan_then_preprocess(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", n_cases=2)
    plan_path = tmp_path / "plans" / "plan.json"
    result = runner.invoke(app, ["plan", str(manifest.source), "--out", str(plan_path), "--memory-mb", "500",
                                 "--channel-kind", "CT=zscore"])
    assert result.exit_code == 0, result.output
    for text in ("target spacing", "normalisation MR", "zscore", "patch size", "batch size", "low-resolution axis z"):
        assert text in result.output
    plan = Plan.load(plan_path)
    assert plan.memory_budget_mb == 500 and [n.scheme for n in plan.normalization] == ["zscore", "zscore"]
    assert json.loads((tmp_path / "plans" / "fingerprint.json").read_text("utf-8"))["cases"][0]["case_id"] == "case0"

    out = tmp_path / "pre"
    result = runner.invoke(app, ["preprocess", str(manifest.source), "--plan", str(plan_path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    case = PreprocessedCase.load(out, "case1")
    assert case.data.shape[0] == 2 and case.label is not None
    result = runner.invoke(app, ["preprocess", str(manifest.source), "--plan", str(plan_path), "--out", str(out)])
    assert result.exit_code == 0 and "2 skipped" in result.output


def test_plan_defaults_beside_manifest_and_overrides(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", n_cases=2)
    result = runner.invoke(app, ["plan", str(manifest.source), "--target-spacing", "3,1,1", "--patch-size", "16,32,32"])
    assert result.exit_code == 0, result.output
    plan = Plan.load(tmp_path / "cohort" / "plan.json")
    assert plan.target_spacing == [3.0, 1.0, 1.0] and plan.patch_size == [16, 32, 32]
    assert plan.normalization[1].scheme == "ct"


@pytest.mark.parametrize("options, message", [
    (["--target-spacing", "3,1"], "three values"),
    (["--target-spacing", "a,b,c"], "not a comma list"),
    (["--channel-kind", "CT"], "CHANNEL=KIND"),
    (["--channel-kind", "CT=bone"], "unknown channel kind"),
])
def test_bad_options_are_user_errors(tmp_path, options, message):
    manifest = write_cohort(tmp_path / "cohort", n_cases=1)
    result = runner.invoke(app, ["plan", str(manifest.source), *options])
    assert result.exit_code == 2 and message in result.output  # one line, no traceback
    assert "Traceback" not in result.output


def test_preprocess_with_missing_plan_is_a_user_error(tmp_path):
    manifest = write_cohort(tmp_path / "cohort", n_cases=1)
    result = runner.invoke(app, ["preprocess", str(manifest.source), "--plan", str(tmp_path / "nope.json"),
                                 "--out", str(tmp_path / "pre")])
    assert result.exit_code == 2 and "plan file not found" in result.output
