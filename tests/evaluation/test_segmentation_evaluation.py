"""evaluate_predictions and the ``sarcomakit evaluate`` command on tiny NIfTI cohorts in tmp_path."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from figure_checks import figure_shape, near_colour, read_png
from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.evaluation.segmentation import evaluate_predictions


def test_evaluate_predictions_end_to_end(cohort):
    out = cohort["root"] / "evaluation"
    result = evaluate_predictions(cohort["predictions"], cohort["manifest"], out, show_progress=False,
                                  n_resamples=500)

    # Evaluated cases carry exactly the metrics of the library function with the files' spacing.
    assert sorted(result.per_case["case_id"]) == sorted(cohort["expected"])
    for row in result.per_case.itertuples():
        expected = cohort["expected"][row.case_id]
        assert row.label == "tumour" and row.label_value == 1
        for metric in ("dice", "hd95", "surface_dice", "volume_diff_ml"):
            assert getattr(row, metric) == pytest.approx(expected[metric])
    assert result.per_case.loc[result.per_case.case_id == "case_00", "dice"].item() == 1.0
    assert result.per_case.loc[result.per_case.case_id == "case_01", "hd95"].item() == pytest.approx(0.9)

    # The wrong-grid case fails with a message naming the prediction file and the difference.
    assert set(result.failures) == {"case_03"}
    message = result.failures["case_03"]
    assert "case_03.nii.gz" in message and "not on the grid" in message and "spacing" in message
    assert set(result.missing) == {"case_04"}

    # Outputs.
    table = pd.read_csv(out / "metrics_per_case.csv")
    assert len(table) == 3 and {"case_id", "site", "dice", "hd95", "surface_dice"} <= set(table.columns)
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    dice_summary = summary["metrics"]["tumour"]["dice"]
    dices = [cohort["expected"][c]["dice"] for c in cohort["expected"]]
    assert dice_summary["n"] == 3
    assert dice_summary["mean"] == pytest.approx(np.mean(dices))
    assert dice_summary["sd"] == pytest.approx(np.std(dices, ddof=1))
    assert dice_summary["ci_low"] <= dice_summary["mean"] <= dice_summary["ci_high"]
    assert summary["n_evaluated"] == 3 and "case_03" in summary["failures"] and "case_04" in summary["missing"]
    figure = read_png(out / "metrics.png")
    assert figure.shape[:2] == figure_shape(4 * 3.0, 3.8, 120)  # Dice, HD95, surface Dice, volume difference
    quarter = figure.shape[1] // 4
    for panel in range(4):  # every panel shows the cases' mean (red diamond)
        assert near_colour(figure[:, panel * quarter:(panel + 1) * quarter], "#d62728", 30).sum() > 10
    assert result.mean("dice") == pytest.approx(np.mean(dices))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_case_selection_and_json_nan_as_null(cohort, make_image):
    out = cohort["root"] / "held_out"
    # Prediction equal to the reference except empty for one case: HD95 is undefined (NaN).
    empty = cohort["predictions"] / "case_02.nii.gz"
    array = sitk.GetArrayFromImage(sitk.ReadImage(str(empty))) * 0
    sitk.WriteImage(make_image(array), str(empty))
    result = evaluate_predictions(cohort["predictions"], Manifest.load(cohort["manifest"]), out,
                                  case_ids=["case_02"], show_progress=False, n_resamples=200)
    assert list(result.per_case.case_id) == ["case_02"]
    assert result.per_case.dice.item() == 0.0 and math.isnan(result.per_case.hd95.item())
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))  # strict JSON: no NaN tokens
    assert summary["metrics"]["tumour"]["hd95"]["mean"] is None
    assert summary["metrics"]["tumour"]["hd95"]["n_missing"] == 1


def test_user_errors_name_the_problem(cohort, tmp_path):
    with pytest.raises(UserInputError, match="prediction folder not found"):
        evaluate_predictions(tmp_path / "nowhere", cohort["manifest"], tmp_path / "o", show_progress=False)
    with pytest.raises(UserInputError, match="no case"):
        evaluate_predictions(cohort["predictions"], cohort["manifest"], tmp_path / "o", case_ids=["zzz"],
                             show_progress=False)
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(UserInputError, match="holds no prediction"):
        evaluate_predictions(empty_dir, cohort["manifest"], tmp_path / "o", show_progress=False)


def test_multiple_labels_give_one_row_per_label(tmp_path, make_image, grid_shape):
    reference = np.zeros(grid_shape, np.uint8)
    reference[3:8, 5:15, 5:15] = 1
    reference[4:7, 8:12, 8:12] = 2  # necrotic core inside the tumour
    prediction = reference.copy()
    prediction[prediction == 2] = 1  # core missed
    sitk.WriteImage(make_image(reference), str(tmp_path / "ref.nii.gz"))
    (tmp_path / "pred").mkdir()
    sitk.WriteImage(make_image(prediction), str(tmp_path / "pred" / "c1.nrrd"))
    manifest = Manifest(channels=["T1"], cases=[Case("c1", {"T1": tmp_path / "ref.nii.gz"}, tmp_path / "ref.nii.gz")],
                        labels={"background": 0, "tumour": 1, "necrosis": 2})
    result = evaluate_predictions(tmp_path / "pred", manifest, tmp_path / "out", show_progress=False,
                                  n_resamples=200)
    by_label = result.per_case.set_index("label")
    assert list(by_label.index) == ["tumour", "necrosis"]
    assert by_label.loc["necrosis", "dice"] == 0.0
    assert 0 < by_label.loc["tumour", "dice"] < 1
    only_core = evaluate_predictions(tmp_path / "pred", manifest, tmp_path / "out2", labels=[2],
                                     show_progress=False, n_resamples=200)
    assert list(only_core.per_case.label) == ["necrosis"]


def test_cli_evaluate_prints_the_summary_and_writes_outputs(cohort):
    out = cohort["root"] / "cli_out"
    result = CliRunner().invoke(app, ["evaluate", str(cohort["predictions"]), str(cohort["manifest"]),
                                      "--out", str(out), "--tolerance-mm", "1.5", "--bootstrap", "200"])
    # case_03 is on the wrong grid: outputs are written, the exit status says a case failed.
    assert result.exit_code == 1, result.output
    for text in ("Dice", "HD95 (mm)", "Surface Dice", "mean", "sd", "median", "95% CI", "1.5 mm", "case_03"):
        assert text in result.output
    table = pd.read_csv(out / "metrics_per_case.csv")
    assert sorted(table["case_id"]) == sorted(cohort["expected"])  # case_03 failed, case_04 has no prediction
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["tolerance_mm"] == 1.5 and summary["n_evaluated"] == 3
    assert summary["metrics"]["tumour"]["dice"]["mean"] == pytest.approx(table["dice"].mean())


def test_cli_evaluate_selected_cases_succeeds_and_bad_path_is_one_line(cohort):
    runner = CliRunner()
    ok = runner.invoke(app, ["evaluate", str(cohort["predictions"]), str(cohort["manifest"]),
                             "--cases", "case_00,case_01", "--bootstrap", "200"])
    assert ok.exit_code == 0, ok.output
    default_out = cohort["predictions"] / "evaluation"  # without --out, next to the predictions
    assert json.loads((default_out / "summary.json").read_text(encoding="utf-8"))["n_evaluated"] == 2
    assert sorted(pd.read_csv(default_out / "metrics_per_case.csv")["case_id"]) == ["case_00", "case_01"]
    bad = runner.invoke(app, ["evaluate", str(cohort["root"] / "missing"), str(cohort["manifest"])])
    assert bad.exit_code == 2
    assert "prediction folder not found" in bad.output
    assert "Traceback" not in bad.output
