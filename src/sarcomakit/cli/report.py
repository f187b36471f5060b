"""CLI command ``sarcomakit report``: the comparison table and HTML report of an experiment or multi-task run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    import pandas as pd  # imported lazily at run time: the CLI starts without it


def register(app: typer.Typer) -> None:
    """Add this group's commands to the app."""

    @app.command("report")
    def report(
        source_dir: Path = typer.Argument(..., help="Experiment folder or multi-task run folder holding "
                                                    "oof_predictions.csv."),
        out: Path | None = typer.Option(None, "--out", "-o", help="HTML report to write "
                                                                  "(default: SOURCE_DIR/report.html)."),
        reference: str | None = typer.Option(None, "--reference",
                                             help="Method the others are compared with (default: the "
                                                  "experiment's reference, else multitask)."),
        n_bootstrap: int = typer.Option(1000, "--bootstrap", min=0, help="Bootstrap resamples over cases."),
        seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
    ) -> None:
        """Metrics of every method with bootstrap 95% intervals, paired differences against the reference, and
        an HTML report with ROC, reliability, Kaplan-Meier and overlay figures.

        Also writes comparison.csv, comparison.md and differences.csv beside the report. An experiment folder
        without out-of-fold predictions but with a comparison.md (ssl, preprocessing, federated) gets that
        comparison.md rendered as the report again.
        """
        if not (source_dir / "oof_predictions.csv").exists() and (source_dir / "comparison.md").is_file():
            _markdown_report(source_dir, out)
            return
        from sarcomakit.evaluation.comparison import compare_methods
        from sarcomakit.evaluation.comparison_tables import display_differences, display_table, write_comparison
        from sarcomakit.evaluation.oof_source import load_oof_source
        from sarcomakit.reporting.multitask_report import REPORT_FILE, write_multitask_report

        source = load_oof_source(source_dir)
        console = Console()
        result = compare_methods(source.oof, source.choose_reference(reference), n_bootstrap=n_bootstrap, seed=seed,
                                 methods=source.methods)
        console.print(_rich_table(display_table(result),
                                  f"Out-of-fold metrics, value [95% CI] ({n_bootstrap} bootstrap resamples)"))
        differences = display_differences(result)
        if not differences.empty:
            console.print(_rich_table(differences, f"Paired differences: method - {result.reference}"))
        for note in result.notes + source.notes:
            console.print(f"[dim]note: {escape(note)}[/dim]", highlight=False, soft_wrap=True)
        target = out if out is not None else source.root / REPORT_FILE
        tables = write_comparison(result, target.parent)
        path = write_multitask_report(source, target, comparison=result)
        console.print(f"Wrote {path}", highlight=False, soft_wrap=True)
        console.print(f"Wrote {', '.join(str(p) for p in tables.values())}", highlight=False, soft_wrap=True)


def _markdown_report(source_dir: Path, out: Path | None) -> None:
    """``SOURCE_DIR/comparison.md`` (and its figures) as one HTML page, the experiment's settings under the title."""
    import json

    from sarcomakit.reporting.markdown_report import write_markdown_report

    settings_file = source_dir / "experiment.json"
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else None
    path = write_markdown_report(source_dir / "comparison.md", out, title=f"Experiment {source_dir.resolve().name}",
                                 metadata=settings if isinstance(settings, dict) else None)
    Console().print(f"Wrote {path}", highlight=False, soft_wrap=True)


def _rich_table(frame: pd.DataFrame, title: str) -> Table:
    table = Table(title=title)
    for k, column in enumerate(frame.columns):
        table.add_column(escape(str(column)), justify="left" if k == 0 or column in ("method", "metric") else "right")
    for row in frame.itertuples(index=False):
        table.add_row(*(escape(str(v)) for v in row))
    return table
