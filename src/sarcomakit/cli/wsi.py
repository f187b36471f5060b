"""``sarcomakit wsi``: whole-slide pipeline commands (tile, embed, pretrain, train, predict, heatmap, cluster, demo).

Every command takes a slide manifest CSV (slide_id, path, label, patient_id[, fold]), a folder of slides or
a single slide file, and a work folder (``--out``) that the steps share. Slides already done are skipped
unless ``--overwrite``; failures are listed at the end. Exit status, as for every cohort command: 0 when
every slide succeeded or was already done, 1 when any slide failed (the others are finished first), 2 for
invalid input found before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

wsi_app = typer.Typer(help="Whole-slide histopathology: tiling, patch embeddings, MIL, heatmaps, clusters.",
                      no_args_is_help=True)

SLIDES_HELP = "Slide manifest CSV (slide_id,path,label,patient_id[,fold]), a folder of slides or one slide file."
OUT_HELP = "Work folder shared by the wsi steps (coords/, features/, mil/, heatmaps/, clusters/)."


def _console() -> Console:
    return Console(stderr=True)


def _finish(outcome: Any, what: str) -> None:
    """Print the failure summary; exit 1 when any slide failed."""
    outcome.print_summary(_console(), what=what)
    raise typer.Exit(outcome.exit_code)


def _finish_pooled(manifest: Any, out: Path, kind: str) -> None:
    """A pooled step (pretrain, cluster) uses the slides that have its input (``kind``: coords or features);
    the others count as failed, as in the per-slide steps: listed one per line, exit status 1."""
    from sarcomakit.pathology.pipeline import slides_with

    _, missing = slides_with(manifest, out, kind)
    console = _console()
    for slide_id, message in missing.items():
        console.print(f"  [red]failed[/red] {escape(slide_id)}: {escape(message)}", highlight=False, soft_wrap=True)
    if missing:
        raise typer.Exit(1)


def _load(slides: Path, require_labels: bool = False, classes: str | None = None) -> Any:
    from sarcomakit.pathology.wsi.slide_manifest import load_slides

    class_list = [c.strip() for c in classes.split(",")] if classes else None
    return load_slides(slides, classes=class_list, require_labels=require_labels)


def _encoder_options(input_size: int | None, architecture: str | None, mean: str | None,
                     std: str | None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if input_size is not None:
        options["input_size"] = input_size
    if architecture is not None:
        options["architecture"] = architecture
    for key, value in (("mean", mean), ("std", std)):
        if value is not None:
            options[key] = tuple(float(v) for v in value.split(","))
    return options


@wsi_app.command("tile")
def tile_command(
    slides: Path = typer.Argument(..., help=SLIDES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    target_mpp: float = typer.Option(0.5, "--target-mpp", help="Microns per pixel of the tiles."),
    tile_size: int = typer.Option(224, "--tile-size", help="Tile side in pixels at --target-mpp."),
    overlap: float = typer.Option(0.0, "--overlap", help="Fraction of a tile shared with its neighbour."),
    min_tissue: float = typer.Option(0.5, "--min-tissue", help="Minimum tissue fraction of a kept tile."),
    mpp: float = typer.Option(None, "--mpp", help="Level-0 microns per pixel for slides without metadata."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo slides already tiled."),
) -> None:
    """Detect tissue and tile each slide at a physical resolution (coords HDF5 + grid thumbnail)."""
    from sarcomakit.pathology.pipeline import TilingOptions, tile_cohort

    outcome = tile_cohort(_load(slides), out, TilingOptions(target_mpp, tile_size, overlap, min_tissue, mpp),
                          overwrite)
    _finish(outcome, "slide")


@wsi_app.command("embed")
def embed_command(
    slides: Path = typer.Argument(..., help=SLIDES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    encoder: str = typer.Option("resnet18", "--encoder", help="Encoder name (see --list-encoders)."),
    weights: Path = typer.Option(None, "--weights", help="Local checkpoint (required for 'foundation')."),
    architecture: str = typer.Option(None, "--architecture", help="Architecture of a foundation checkpoint."),
    input_size: int = typer.Option(None, "--input-size", help="Encoder input size in pixels."),
    mean: str = typer.Option(None, "--mean", help="Normalisation mean, e.g. 0.485,0.456,0.406."),
    std: str = typer.Option(None, "--std", help="Normalisation std, e.g. 0.229,0.224,0.225."),
    batch_size: int = typer.Option(64, "--batch-size", help="Tiles per forward pass."),
    workers: int = typer.Option(2, "--workers", help="Tile-reading processes."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    mpp: float = typer.Option(None, "--mpp", help="Level-0 microns per pixel for slides without metadata."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo slides already embedded."),
) -> None:
    """Embed the tiles of each tiled slide with a patch encoder (features HDF5 per slide)."""
    from sarcomakit.pathology.pipeline import embed_step

    outcome = embed_step(_load(slides), out, encoder, weights, _encoder_options(input_size, architecture, mean, std),
                         batch_size, workers, device, mpp, overwrite)
    _finish(outcome, "slide")


@wsi_app.command("pretrain")
def pretrain_command(
    slides: Path = typer.Argument(..., help=SLIDES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    encoder: str = typer.Option("small_cnn", "--encoder", help="Encoder architecture to pretrain."),
    input_size: int = typer.Option(None, "--input-size", help="Encoder input size in pixels."),
    epochs: int = typer.Option(10, "--epochs", help="Passes over the sampled tiles."),
    per_slide: int = typer.Option(64, "--tiles-per-slide", help="Tiles sampled per slide."),
    batch_size: int = typer.Option(64, "--batch-size", help="Tiles per step."),
    lr: float = typer.Option(1e-3, "--lr", help="Learning rate."),
    stain: bool = typer.Option(True, "--stain/--no-stain", help="H&E stain augmentation."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    mpp: float = typer.Option(None, "--mpp", help="Level-0 microns per pixel for slides without metadata."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Pretrain again if encoder.pt exists."),
) -> None:
    """Self-supervised (SimCLR) pretraining of a patch encoder on tiles of the tiled slides."""
    from sarcomakit.pathology.pipeline import COORDS, SSL, pretrain_step

    manifest = _load(slides)
    already_done = (out / SSL / "encoder.pt").is_file() and not overwrite
    options = _encoder_options(input_size, None, None, None)
    path = pretrain_step(manifest, out, encoder, options, epochs, per_slide, batch_size, lr, stain, seed,
                         device, mpp, overwrite)
    _console().print(f"encoder checkpoint: {path} (use: wsi embed --encoder {encoder} --weights {path})")
    if not already_done:
        _finish_pooled(manifest, out, COORDS)


@wsi_app.command("train")
def train_command(
    slides: Path = typer.Argument(..., help="Slide manifest CSV with labels and patient ids."),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    model: str = typer.Option("abmil", "--model", help="abmil, clam_sb or transmil."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds grouped by patient."),
    classes: str = typer.Option(None, "--classes", help="Comma-separated class list (default: labels found)."),
    epochs: int = typer.Option(40, "--epochs", help="Maximum epochs."),
    lr: float = typer.Option(2e-4, "--lr", help="Adam learning rate."),
    patience: int = typer.Option(8, "--patience", help="Early-stopping patience (epochs)."),
    balance: str = typer.Option("sampler", "--balance", help="sampler, loss or none."),
    val_fraction: float = typer.Option(0.2, "--val-fraction",
                                       help="Share of training patients for early stopping (0: fixed epochs)."),
    n_boot: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for the intervals."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Retrain folds that have a checkpoint."),
) -> None:
    """Cross-validate a slide-level MIL model on the feature bags (folds grouped by patient)."""
    from sarcomakit.pathology.analysis.report import format_metrics
    from sarcomakit.pathology.mil.training import MILTrainConfig, cross_validate
    from sarcomakit.pathology.pipeline import FEATURES, MIL

    manifest = _load(slides, require_labels=True, classes=classes)
    config = MILTrainConfig(model=model, epochs=epochs, lr=lr, patience=patience, balance=balance,
                            val_fraction=val_fraction, seed=seed, device=device)
    result = cross_validate(manifest, out / FEATURES, out / MIL / model, config, folds, n_boot, overwrite)
    console = _console()
    console.print(format_metrics(result.metrics, title=f"{model}, {folds}-fold CV (patient-grouped)"))
    console.print(f"out-of-fold predictions: {result.out_dir / 'oof_predictions.csv'}")
    for slide_id, message in result.failures.items():
        console.print(f"  [red]failed[/red] {escape(slide_id)}: {escape(message)}", highlight=False, soft_wrap=True)
    if result.failures:
        raise typer.Exit(1)


@wsi_app.command("predict")
def predict_command(
    slides: Path = typer.Argument(..., help=SLIDES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    model_dir: Path = typer.Option(..., "--model", help="A training run folder (fold models) or a model.pt."),
    output: Path = typer.Option(None, "--output", help="Predictions CSV (default: OUT/predictions.csv)."),
) -> None:
    """Predict slide labels of embedded slides with a trained model (mean over the fold models)."""
    from sarcomakit.pathology.mil.training import find_checkpoints, predict_slides
    from sarcomakit.pathology.pipeline import FEATURES

    target = output or out / "predictions.csv"
    table, outcome = predict_slides(find_checkpoints(model_dir), _load(slides), out / FEATURES, target)
    if len(table):
        _console().print(table.drop(columns=["label"]).to_string(index=False))
        _console().print(f"predictions: {target}")
    _finish(outcome, "slide")


@wsi_app.command("heatmap")
def heatmap_command(
    slides: Path = typer.Argument(..., help=SLIDES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    model_dir: Path = typer.Option(..., "--model", help="A training run folder (fold models) or a model.pt."),
    top_k: int = typer.Option(8, "--top-k", help="Most attended tiles shown per slide."),
    mpp: float = typer.Option(None, "--mpp", help="Level-0 microns per pixel for slides without metadata."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo slides that have a heatmap."),
) -> None:
    """Attention heatmaps: tile CSV, overlay on the thumbnail, grid of the top tiles (per slide)."""
    from sarcomakit.pathology.pipeline import heatmap_cohort

    outcome = heatmap_cohort(_load(slides), out, model_dir, top_k, mpp, overwrite)
    _finish(outcome, "slide")


@wsi_app.command("cluster")
def cluster_command(
    slides: Path = typer.Argument(..., help=SLIDES_HELP),
    out: Path = typer.Option(..., "--out", "-o", help=OUT_HELP),
    method: str = typer.Option("kmeans", "--method", help="kmeans or hdbscan (density)."),
    n_clusters: int = typer.Option(8, "--clusters", help="Number of k-means clusters."),
    per_slide: int = typer.Option(200, "--tiles-per-slide", help="Tiles sampled per slide for fitting."),
    map_method: str = typer.Option("pca", "--map", help="2D map: pca or tsne."),
    min_cluster_size: int = typer.Option(20, "--min-cluster-size", help="HDBSCAN's smallest cluster."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    mpp: float = typer.Option(None, "--mpp", help="Level-0 microns per pixel for slides without metadata."),
) -> None:
    """Phenotype clusters of patch embeddings: composition table, 2D map, example tiles."""
    from sarcomakit.pathology.pipeline import FEATURES, cluster_step

    manifest = _load(slides)
    result = cluster_step(manifest, out, method, n_clusters, per_slide, map_method, min_cluster_size, seed, mpp)
    _console().print(f"{result.n_clusters} clusters; composition: {result.composition_csv}; "
                     f"map: {result.map_png}; examples: {result.examples_png}")
    _finish_pooled(manifest, out, FEATURES)


@wsi_app.command("demo")
def demo_command(
    out: Path = typer.Option(Path("wsi_demo"), "--out", "-o", help="Output folder."),
    n_slides: int = typer.Option(18, "--slides", help="Synthetic slides (at least 6)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    models: str = typer.Option("abmil,clam_sb", "--models", help="Comma-separated MIL models to compare."),
    ssl_epochs: int = typer.Option(0, "--ssl-epochs", help="SimCLR-pretrain the encoder first (0: random init)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo steps whose outputs exist."),
) -> None:
    """Synthetic cohort -> tile -> embed -> MIL cross-validation -> heatmaps -> clusters -> HTML report."""
    from sarcomakit.pathology.pipeline import DemoOptions, run_demo

    options = DemoOptions(n_slides=n_slides, seed=seed, ssl_epochs=ssl_epochs,
                          models=tuple(m.strip() for m in models.split(",")))
    summary = run_demo(out, options, overwrite=overwrite)
    console = Console()
    for line in summary.lines:
        console.print(line, highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``wsi`` command group."""
    app.add_typer(wsi_app, name="wsi")
