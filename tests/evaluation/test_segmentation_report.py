"""The segmentation report: sections, overlays of chosen cases, and ``sarcomakit evaluate --report``."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
from PIL import Image
from typer.testing import CliRunner

from figure_checks import near_colour
from sarcomakit.cli.main import app
from sarcomakit.data.manifest import Manifest
from sarcomakit.evaluation.segmentation import evaluate_predictions
from sarcomakit.reporting.figures import REFERENCE_COLOUR
from sarcomakit.reporting.segmentation_report import choose_overlay_cases, write_segmentation_report


def test_overlay_cases_span_worst_to_best():
    table = pd.DataFrame({"case_id": list("abcdefg"), "label": "tumour",
                          "dice": [0.5, 0.9, 0.7, 0.95, 0.3, 0.8, float("nan")]})
    chosen = choose_overlay_cases(table, 3)
    assert chosen[0] == "g" and chosen[-1] == "d"  # undefined first, best last
    assert len(chosen) == 3
    assert choose_overlay_cases(table, 10) == table.sort_values("dice", na_position="first").case_id.tolist()
    assert choose_overlay_cases(table, 0) == []


def test_report_has_summary_per_case_table_overlays_and_left_out_cases(cohort):
    manifest = Manifest.load(cohort["manifest"])
    result = evaluate_predictions(cohort["predictions"], manifest, cohort["root"] / "eval", show_progress=False,
                                  n_resamples=200)
    path = write_segmentation_report(result, manifest, cohort["predictions"], cohort["root"] / "eval" / "report.html",
                                     n_overlays=2)
    text = path.read_text(encoding="utf-8")
    for heading in ("Segmentation metrics", "Per-case metrics", "Overlays", "Cases left out"):
        assert f">{heading}</h2>" in text
    assert "case_03" in text and "not on the grid" in text and "case_04" in text
    # metrics.png + two overlays, all embedded.
    assert len(re.findall(r'<img src="data:image/png;base64,', text)) == 3
    assert sorted(p.name for p in (cohort["root"] / "eval" / "report_figures").iterdir()) == [
        "case_00_overlay.png", "case_02_overlay.png"]  # best and worst Dice


def test_cli_evaluate_with_report(cohort):
    out = cohort["root"] / "cli_report"
    result = CliRunner().invoke(app, ["evaluate", str(cohort["predictions"]), str(cohort["manifest"]), "--out",
                                      str(out), "--cases", "case_00,case_01,case_02", "--report",
                                      "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    assert "report.html" in result.output
    text = (out / "report.html").read_text(encoding="utf-8")
    assert {"Segmentation metrics", "Per-case metrics", "Overlays"} <= set(re.findall(r">([^<]+)</h2>", text))
    assert all(case in text for case in ("case_00", "case_01", "case_02"))
    assert "case_03" not in text and "case_04" not in text  # not selected with --cases
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
              for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', text)]
    assert len(images) >= 2  # metrics.png and at least one overlay, embedded
    above_legend = [image[: int(0.85 * image.shape[0])] for image in images]  # the legend repeats the colours
    overlays = [image for image in above_legend if near_colour(image, REFERENCE_COLOUR, 60).sum() > 50]
    assert len(overlays) == len(images) - 1  # every image but metrics.png shows a reference contour
