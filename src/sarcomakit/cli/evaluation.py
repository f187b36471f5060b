"""CLI commands of the evaluation group: ``sarcomakit evaluate``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("evaluate")
    def evaluate(
        prediction_dir: Path = typer.Argument(..., help="Folder of predicted masks named {case_id}.nii.gz."),
        manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json) with the reference labels."),
        out: Path | None = typer.Option(None, "--out", "-o",
                                        help="Output folder (default: PREDICTION_DIR/evaluation)."),
        tolerance_mm: float = typer.Option(2.0, "--tolerance-mm", min=0.0,
                                           help="Surface Dice tolerance in mm."),
        label: list[int] | None = typer.Option(None, "--label",
                                               help="Foreground label value to evaluate, repeat for several "
                                                    "(default: every declared non-zero label)."),
        cases: str | None = typer.Option(None, "--cases",
                                         help="Comma-separated case ids to evaluate (default: all cases)."),
        n_resamples: int = typer.Option(2000, "--bootstrap", min=100, help="Bootstrap resamples for the CIs."),
        report: bool = typer.Option(False, "--report", help="Also write report.html with overlays of chosen cases."),
    ) -> None:
        """Per-case Dice, HD95, surface Dice and volume difference in physical units, with bootstrap 95% CIs.

        Writes metrics_per_case.csv, summary.json and metrics.png (and report.html with --report).
        Exits with status 1 when a case could not be evaluated (its reason is printed); cases
        without a prediction are listed only.
        """
        from sarcomakit.data.manifest import Manifest
        from sarcomakit.evaluation.segmentation import evaluate_predictions

        cohort = Manifest.load(manifest)
        out_dir = out if out is not None else prediction_dir / "evaluation"
        case_ids = [c.strip() for c in cases.split(",") if c.strip()] if cases else None
        result = evaluate_predictions(prediction_dir, cohort, out_dir, tolerance_mm=tolerance_mm,
                                      labels=label or None, case_ids=case_ids, n_resamples=n_resamples)
        console = Console()
        result.print(console)
        console.print(f"Wrote {out_dir / 'metrics_per_case.csv'}, summary.json and metrics.png.", highlight=False,
                      soft_wrap=True)
        if report:
            from sarcomakit.reporting.segmentation_report import write_segmentation_report

            path = write_segmentation_report(result, cohort, prediction_dir, out_dir / "report.html",
                                             metadata={"tolerance (mm)": tolerance_mm})
            console.print(f"Wrote {path}", highlight=False, soft_wrap=True)
        if result.failures:
            raise typer.Exit(1)
