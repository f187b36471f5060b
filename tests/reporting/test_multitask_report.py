"""Multi-task report and 'sarcomakit report': sections, embedded figures and overlays from run and experiment
folders, and the command's outputs and errors."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
import typer
from typer.testing import CliRunner

from figure_checks import near_colour, read_png
from sarcomakit.cli.report import register
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import GRADES, Case, Manifest
from sarcomakit.evaluation.comparison import compare_methods
from sarcomakit.evaluation.oof_source import load_oof_source
from sarcomakit.reporting.multitask_report import write_multitask_report

N_CASES = 24
EMBEDDED_PNG = "data:image/png;base64,"


def make_oof(methods: tuple[str, ...] = ("multitask", "radiomics", "segmentation"), seed: int = 0) -> pd.DataFrame:
    """Out-of-fold rows with a planted grade and survival signal (strong for multitask, weak for radiomics)."""
    rng = np.random.default_rng(seed)
    grade = np.arange(N_CASES) % 3
    latent = grade - 1 + rng.normal(0, 0.5, N_CASES)
    death = rng.exponential(900 * np.exp(-latent))
    censor = rng.uniform(300, 2500, N_CASES)
    rows = []
    for method in methods:
        strength = {"multitask": 3.0, "radiomics": 0.5}.get(method)
        for i in range(N_CASES):
            row = {"case_id": f"case{i:02d}", "method": method, "fold": i % 3, "grade_true": GRADES[grade[i]],
                   "time": round(min(death[i], censor[i])), "event": int(death[i] <= censor[i])}
            if strength is not None:
                logits = strength * np.eye(3)[grade[i]] + rng.normal(0, 1, 3)
                p = np.exp(logits) / np.exp(logits).sum()
                risk = strength * latent[i] + rng.normal(0, 1)
                row.update(p_low=p[0], p_intermediate=p[1], p_high=p[2], grade_pred=GRADES[int(p.argmax())],
                           log_risk=risk, risk_group="high" if risk > 0 else "low", train_risk_cutoff=0.0)
            if method != "radiomics":
                row.update(dice=float(rng.uniform(0.6, 0.95)), hd95=float(rng.uniform(1, 12)))
            rows.append(row)
    return pd.DataFrame(rows)


def write_cohort(folder: Path, case_ids: list[str]) -> tuple[Path, Path]:
    """Tiny volumes with a cubic tumour (label) and a shifted prediction per case; returns (manifest, masks)."""
    images, masks = folder / "images", folder / "predictions"
    images.mkdir(parents=True)
    masks.mkdir()
    cases = []
    rng = np.random.default_rng(1)
    for k, case_id in enumerate(case_ids):
        label = np.zeros((8, 20, 20), np.uint8)
        label[2:6, 6:14, 6:14] = 1
        prediction = np.roll(label, k % 3, axis=2)
        arrays = {"t1": rng.normal(100, 10, label.shape).astype(np.float32) + 50 * label,
                  "label": label, "prediction": prediction}
        paths = {}
        for name, array in arrays.items():
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((0.8, 0.8, 3.0))
            paths[name] = (masks / f"{case_id}.nii.gz" if name == "prediction"
                           else images / f"{case_id}_{name}.nii.gz")
            sitk.WriteImage(image, str(paths[name]))
        cases.append(Case(case_id, {"t1": paths["t1"]}, label=paths["label"]))
    manifest = folder / "manifest.json"
    Manifest(channels=["t1"], cases=cases).save(manifest)
    return manifest, masks


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    oof = make_oof(("multitask",))
    oof.to_csv(run / "oof_predictions.csv", index=False)
    write_cohort(run, sorted(oof["case_id"].unique()))
    return run


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory) -> Path:
    experiment = tmp_path_factory.mktemp("experiment")
    make_oof().to_csv(experiment / "oof_predictions.csv", index=False)
    (experiment / "experiment.json").write_text(json.dumps({
        "methods": ["multitask", "segmentation", "radiomics"], "reference": "multitask", "folds": 3, "seed": 0,
        "cohort": None, "prediction_dirs": {"multitask": None}}))
    return experiment


def section_titles(html: str) -> list[str]:
    return re.findall(r"<h2>(.*?)</h2>", html)


def test_run_report_has_every_section_embedded_figures_and_overlays(run_dir):
    path = write_multitask_report(run_dir, n_bootstrap=40)
    assert path == run_dir / "report.html"
    html = path.read_text(encoding="utf-8")
    assert section_titles(html) == ["Summary", "Paired differences against multitask", "Grade", "Survival",
                                    "Segmentation", "Per-case predictions"]
    overlays = sorted((run_dir / "report_figures").glob("overlay_multitask_*.png"))
    assert len(overlays) == 4
    # ROC + reliability, Kaplan-Meier + time-dependent AUC, Dice/HD95 distribution, 4 overlays.
    assert html.count(EMBEDDED_PNG) == 2 + 2 + 1 + 4
    assert "Harrell" in html and "C-index" in html and "log-rank" in html and "predicted high" in html
    assert all(f"case{i:02d}" in html for i in range(N_CASES))
    assert "No other method shares a task" in html
    assert re.search(r"0\.\d{3} \[0\.\d{3}, [01]\.\d{3}\]", html)  # value [low, high]


def test_experiment_report_compares_methods_without_overlays(experiment_dir, tmp_path):
    source = load_oof_source(experiment_dir)
    comparison = compare_methods(source.oof, "multitask", n_bootstrap=30, methods=source.methods)
    path = write_multitask_report(source, tmp_path / "out" / "comparison.html", comparison=comparison)
    html = path.read_text(encoding="utf-8")
    titles = section_titles(html)
    assert titles[:2] == ["Summary", "Paired differences against multitask"]
    assert {"Grade", "Survival", "Segmentation", "Per-case predictions", "Notes"} <= set(titles)
    assert "radiomics" in html and "segmentation" in html
    assert "no overlays" in html
    roc = tmp_path / "out" / "comparison_figures" / "grade_roc_radiomics.png"
    assert base64.b64encode(roc.read_bytes()).decode() in html  # the figure shown is the file written
    pixels = read_png(roc)
    assert all(near_colour(pixels, colour, 30).sum() > 100 for colour in ("#1f77b4", "#ff7f0e", "#2ca02c"))
    assert html.count(EMBEDDED_PNG) == 2 * 2 + 2 + 1 + 1  # grade x2 methods, KM x2, td-AUC, Dice/HD95


def test_report_of_a_segmentation_only_run_leaves_out_grade_and_survival(tmp_path):
    make_oof(("segmentation",)).to_csv(tmp_path / "oof_predictions.csv", index=False)
    html = write_multitask_report(tmp_path, n_bootstrap=20).read_text(encoding="utf-8")
    titles = section_titles(html)
    assert "Grade" not in titles and "Survival" not in titles
    assert "Segmentation" in titles and "Summary" in titles


def app_with_report() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("version")  # a second command keeps 'report' a named subcommand
    def version() -> None:
        """Unused."""

    return app


def test_cli_prints_the_table_and_writes_report_and_tables(experiment_dir, tmp_path):
    out = tmp_path / "cli" / "report.html"
    result = CliRunner().invoke(app_with_report(), ["report", str(experiment_dir), "--out", str(out),
                                                    "--bootstrap", "25", "--reference", "radiomics"])
    assert result.exit_code == 0, result.output
    assert "Out-of-fold metrics" in result.output and "Paired differences: method - radiomics" in result.output
    assert "Paired differences against radiomics" in out.read_text(encoding="utf-8")
    markdown = (out.parent / "comparison.md").read_text(encoding="utf-8")
    assert "reference: radiomics" in markdown
    assert "| metric | multitask | segmentation | radiomics |" in markdown  # the experiment's order
    differences = pd.read_csv(out.parent / "differences.csv")
    assert set(differences["reference"]) == {"radiomics"}
    assert set(differences["method"]) == {"multitask"}  # segmentation shares no task with radiomics
    table = pd.read_csv(out.parent / "comparison.csv", index_col="metric_name")
    assert {"multitask", "radiomics", "segmentation"} <= set(table.columns)
    assert table.loc["dice_mean", "radiomics"] == "–"  # radiomics predicts no mask


@pytest.mark.parametrize(("make_args", "message"), [
    (lambda folder: ["report", str(folder)], "oof_predictions.csv"),
    (lambda folder: ["report", str(folder / "absent")], "folder not found"),
])
def test_cli_errors_for_a_folder_without_predictions(tmp_path, make_args, message):
    result = CliRunner().invoke(app_with_report(), make_args(tmp_path))
    assert isinstance(result.exception, UserInputError)
    assert message in str(result.exception)
    assert not (tmp_path / "report.html").exists()


def test_cli_unknown_reference_is_a_user_error(experiment_dir):
    result = CliRunner().invoke(app_with_report(), ["report", str(experiment_dir), "--reference", "nnunet",
                                                    "--bootstrap", "0"])
    assert isinstance(result.exception, UserInputError) and "nnunet" in str(result.exception)
