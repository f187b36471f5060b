"""``sarcomakit predict`` and ``predict-io``: masks for new cases with a trained run, on each input's own grid."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from sarcomakit.cli.options import folds_and_checkpoint
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
    from sarcomakit.core import distributed
    from sarcomakit.inference.predictor import predict

    chosen = folds_and_checkpoint(folds, checkpoint)
    console = Console(stderr=True)
    result = predict(run_dir, source, out_dir, folds=chosen, checkpoint=checkpoint, mirror=mirror,
                     save_probabilities=probabilities, largest_component=largest_component, overwrite=overwrite,
                     device=device, console=console)
    distributed.shutdown()
    result.print_summary(console)
    raise typer.Exit(result.exit_code)


def predict_io_command(
    input_dir: Path = typer.Argument(..., metavar="INPUT", help="Folder of images (read only): NIfTI, NRRD, MHA/MHD, "
                                                                "DICOM series; e.g. /input."),
    output_dir: Path = typer.Argument(..., metavar="OUTPUT", help="Output folder, e.g. /output."),
    model: Path = typer.Option(..., "--model", envvar="SARCOMAKIT_MODEL",
                               help="Run folder from 'sarcomakit train' (or the SARCOMAKIT_MODEL variable)."),
    folds: str = typer.Option("all", "--folds", "--fold", help="Folds to ensemble: 'all' or a comma list."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    mirror: bool = typer.Option(False, "--tta/--no-tta", help="Mirroring test-time augmentation (8x slower)."),
    largest_component: bool = typer.Option(False, "--largest-component",
                                           help="Keep only the largest connected component of each class."),
    mask_slug: str = typer.Option("tumour-segmentation", "--mask-slug",
                                  help="Masks go to OUTPUT/images/<slug>/ (a Grand Challenge output interface)."),
    channel_folder: list[str] = typer.Option([], "--channel-folder",
                                             help="CHANNEL=folder: the input folder holding a channel when it is not "
                                                  "named after it, e.g. T1=t1-weighted-mri (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
) -> None:
    """Predict every image under INPUT into OUTPUT, laid out for pipelines (Grand Challenge style).

    Masks: OUTPUT/images/<slug>/<case>.mha. DICOM series: also OUTPUT/dicom-seg/<case>.dcm (DICOM SEG).

    OUTPUT/results.json: inputs, outputs, tumour volume and case-level predictions (docs/pipelines.md).
    """
    from sarcomakit.inference.predict_io import predict_io

    chosen = folds_and_checkpoint(folds, checkpoint)
    mapping = {}
    for item in channel_folder:
        channel, _, folder = item.partition("=")
        if not channel.strip() or not folder.strip():
            raise UserInputError(f"--channel-folder '{item}' is not CHANNEL=folder.",
                                 fix="write e.g. T1=t1-weighted-mri.")
        mapping[channel.strip()] = folder.strip()
    console = Console(stderr=True)
    result = predict_io(input_dir, output_dir, model, folds=chosen, checkpoint=checkpoint, mirror=mirror,
                        largest_component=largest_component, device=device, mask_slug=mask_slug,
                        channel_folders=mapping, console=console)
    result.print_summary(console)
    raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``predict`` and ``predict-io``."""
    app.command("predict")(predict_command)
    app.command("predict-io")(predict_io_command)
