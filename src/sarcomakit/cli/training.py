"""``sarcomakit train``: train folds of a segmentation run from a manifest and a plan."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def _folds(value: str, n_folds: int) -> list[int]:
    if value == "all":
        return list(range(n_folds))
    try:
        return [int(v) for v in value.split(",")]
    except ValueError as exc:
        raise typer.BadParameter("use a fold number, a comma list (0,2) or 'all'.") from exc


def train_command(
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json)."),
    plan: Path = typer.Option(..., "--plan", help="Plan JSON from 'sarcomakit plan'."),
    run_dir: Path = typer.Option(Path("runs/segmentation"), "--out", "-o", help="Run folder."),
    fold: str = typer.Option("0", "--fold", help="Fold number, comma list, or 'all'."),
    folds: int = typer.Option(5, "--folds", help="Number of cross-validation folds."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default 100)."),
    iterations: int = typer.Option(None, "--iterations", help="Iterations per epoch (default 50)."),
    task: str = typer.Option(None, "--task", help="segmentation (default) or multitask (segmentation, grade, "
                                                  "survival)."),
    tasks: str = typer.Option(None, "--tasks", help="Multi-task: comma list of segmentation,grade,survival."),
    weighting: str = typer.Option(None, "--weighting", help="Multi-task loss weighting: fixed or uncertainty."),
    ordinal: bool = typer.Option(False, "--ordinal", help="Multi-task: ordinal grade head (low < int. < high)."),
    network: str = typer.Option(None, "--network", help="Network name (resunet, dynunet, segresnet)."),
    optimizer: str = typer.Option(None, "--optimizer", help="sgd or adamw."),
    learning_rate: float = typer.Option(None, "--lr", help="Initial learning rate."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the plan's batch size."),
    augmentation: str = typer.Option(None, "--augmentation", help="default, light or none."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    workers: int = typer.Option(None, "--workers", help="Data-loading processes (default: cores - 1, max 4)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from each fold's last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove an earlier run in --out (folds, splits, "
                                                              "cache) and start fresh."),
    preprocessed: Path = typer.Option(None, "--preprocessed", help="Cache folder of preprocessed cases."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON; options given here override it."),
) -> None:
    """Train a 3D segmentation network (residual U-Net by default) on one or more folds."""
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.planning.plan import Plan
    from sarcomakit.training.api import train
    from sarcomakit.training.config import TrainConfig

    base = TrainConfig.load(config_file) if config_file else TrainConfig()
    task_options = dict(base.task_options)
    if tasks:
        task_options["tasks"] = [t.strip() for t in tasks.split(",")]
    if weighting:
        task_options["weighting"] = weighting
    if ordinal:
        task_options["ordinal"] = True
    config = base.updated(task=task, task_options=task_options or None, epochs=epochs,
                          iterations_per_epoch=iterations, network=network, optimizer=optimizer,
                          learning_rate=learning_rate, batch_size=batch_size, augmentation=augmentation,
                          seed=seed, device=device, num_workers=workers, n_folds=folds)
    console = Console(stderr=True)
    results = train(Manifest.load(manifest), Plan.load(plan), run_dir, folds=_folds(fold, config.n_folds),
                    config=config, resume=resume, preprocessed_dir=preprocessed, console=console,
                    overwrite=overwrite)
    for k, result in results.items():
        console.print(f"fold {k}: best {result.score_name} {result.best_score:.3f} at epoch {result.best_epoch}; "
                      f"checkpoints in {result.fold_dir}")


def register(app: typer.Typer) -> None:
    """Add ``train``."""
    app.command("train")(train_command)
