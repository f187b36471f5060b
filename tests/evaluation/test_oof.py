"""Writing the out-of-fold table: rows from training and DataFrames from experiments read back the same."""

from __future__ import annotations

import math

import pandas as pd

from sarcomakit.evaluation.oof import OOF_COLUMNS, load_oof, write_oof


def test_rows_are_written_with_the_standard_columns_and_read_back(tmp_path):
    rows = [{"case_id": "a", "method": "multitask", "fold": 0, "grade_true": "high", "p_low": 0.1,
             "p_intermediate": 0.2, "p_high": 0.7, "grade_pred": "high", "time": 400.0, "event": 1,
             "log_risk": 0.25, "risk_group": "high", "train_risk_cutoff": 0.1, "dice": 0.8, "hd95": 3.5,
             "not_a_column": "dropped"},
            {"case_id": "b", "method": "multitask", "fold": 1, "grade_true": None, "time": None, "event": None,
             "dice": 0.7}]
    path = write_oof(rows, tmp_path / "fold_0" / "oof_predictions.csv")
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(OOF_COLUMNS)
    assert lines[2].startswith("b,multitask,1,,,,,,,,")  # None and missing keys are empty cells
    table = load_oof(path)
    assert list(table.columns) == list(OOF_COLUMNS)
    assert table.loc[0, "p_high"] == 0.7 and table.loc[0, "event"] == 1.0 and table.loc[0, "risk_group"] == "high"
    assert table.loc[1, "grade_true"] is None and math.isnan(table.loc[1, "time"]) and table.loc[1, "dice"] == 0.7


def test_a_frame_gets_the_standard_columns_first_and_keeps_its_others(tmp_path):
    frame = pd.DataFrame({"extra": ["x"], "method": ["radiomics"], "case_id": ["a"], "p_low": [0.2],
                          "p_intermediate": [0.3], "p_high": [0.5]})
    path = write_oof(frame, tmp_path / "oof_predictions.csv")
    written = pd.read_csv(path)
    assert list(written.columns) == [*OOF_COLUMNS, "extra"]
    assert written.loc[0, "p_high"] == 0.5 and written["dice"].isna().all()
    assert list(load_oof(path).columns) == [*OOF_COLUMNS, "extra"]
