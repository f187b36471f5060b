"""``sarcomakit export``: trained runs in formats other tools load without sarcomakit (``export bundle``: MONAI)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from sarcomakit.cli.options import folds_and_checkpoint

export_app = typer.Typer(help="Export a trained run for other tools (a MONAI bundle).", no_args_is_help=True)


@export_app.command("bundle")
def bundle_command(
    run_dir: Path = typer.Argument(..., help="Run folder from 'sarcomakit train' (segmentation or multi-task)."),
    out_dir: Path = typer.Argument(..., help="Bundle folder to create (configs/, models/, docs/)."),
    folds: str = typer.Option("all", "--fold", "--folds",
                              help="'all' (the folds' average, as 'sarcomakit predict') or one fold number "
                                   "(the single-network layout MONAI Label and MONAI Deploy load), or a comma list."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    largest_component: bool = typer.Option(False, "--largest-component",
                                           help="Keep only the largest connected component of each class, as "
                                                "'sarcomakit predict --largest-component'."),
    authors: str = typer.Option("unknown", "--authors", help="Authors recorded in metadata.json."),
    copyright_: str = typer.Option("", "--copyright", help="Copyright recorded in metadata.json."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing bundle in OUT."),
) -> None:
    """Export a run as a MONAI bundle whose pipeline runs with MONAI alone."""
    from sarcomakit.export.bundle import export_bundle

    chosen = folds_and_checkpoint(folds, checkpoint)
    console = Console(stderr=True)
    bundle = export_bundle(run_dir, out_dir, folds=chosen, checkpoint=checkpoint, largest_component=largest_component,
                           overwrite=overwrite, authors=authors, copyright=copyright_)
    for notice in bundle.notices:
        console.print(f"note: {notice}", highlight=False)
    folds_text = ", ".join(map(str, bundle.folds))
    what = f"folds {folds_text} (averaged)" if len(bundle.folds) > 1 else f"fold {folds_text}"
    console.print(f"wrote {bundle.path} ({what}, network as {bundle.network_form}); run it with: cd {bundle.path} && "
                  "python -m monai.bundle run --config_file configs/inference.json --dataset_dir IN --output_dir OUT",
                  highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``export`` command group."""
    app.add_typer(export_app, name="export")
