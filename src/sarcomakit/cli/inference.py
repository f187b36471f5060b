"""``sarcomakit predict``: masks for new cases with a trained run, on each input's own grid."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from sarcomakit.core.errors import UserInputError


def predict_command(
    run_dir: Path = typer.Argument(..., help="Run folder from 'sarcomakit train'."),
    source: str = typer.Argument(..., help="Manifest, folder of {case}_{XXXX}.nii.gz images, an image, "
                                           "or CH=path,CH=path."),
    out_dir: Path = typer.Argument(..., help="Output folder for {case_id}.nii.gz masks."),
    folds: str = typer.Option("all", "--folds", help="Folds to ensemble: 'all' or a comma list."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    mirror: bool = typer.Option(False, "--tta/--no-tta", help="Mirroring test-time augmentation (8x slower)."),
    probabilities: bool = typer.Option(False, "--probabilities", help="Also write class probability maps."),
    largest_component: bool = typer.Option(False, "--largest-component",
                                           help="Keep only the largest connected component of each class."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Predict cases whose mask already exists."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
) -> None:
    """Predict tumour masks (Gaussian sliding window, fold ensemble, optional mirroring)."""
    from sarcomakit.inference.predictor import predict

    if checkpoint not in ("best", "last"):
        raise UserInputError(f"unknown checkpoint '{checkpoint}'.", fix="use --checkpoint best or last.")
    chosen = None if folds == "all" else [int(f) for f in folds.split(",")]
    console = Console(stderr=True)
    result = predict(run_dir, source, out_dir, folds=chosen, checkpoint=checkpoint, mirror=mirror,
                     save_probabilities=probabilities, largest_component=largest_component, overwrite=overwrite,
                     device=device, console=console)
    result.print_summary(console)
    raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``predict``."""
    app.command("predict")(predict_command)
