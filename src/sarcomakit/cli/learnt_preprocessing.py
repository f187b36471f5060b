"""``sarcomakit experiment preprocessing``: fixed nnU-Net-style preprocessing vs learnable preprocessing layers."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

# kept in step with sarcomakit.experiments.preprocessing_comparison.ARMS (imported lazily: torch is slow to load)
ARMS = ("fixed", "minimal", "percentile", "window", "monotone", "normaliser", "resizer", "zoom", "roi", "roi_box",
        "all", "obelisk")


def preprocessing_experiment_command(
    manifest: Path = typer.Argument(..., help="Labelled cohort manifest (with sites for leave-one-site-out)."),
    out_dir: Path = typer.Option(Path("experiments/preprocessing"), "--out", "-o",
                                 help="Experiment folder (resumable)."),
    plan: Path = typer.Option(None, "--plan", help="One plan for every fold (default: each fold planned on its "
                                                   "own training cases, so no validation case reaches it)."),
    folds: int = typer.Option(5, "--folds", help="In-domain cross-validation folds."),
    arms: str = typer.Option(",".join(ARMS), "--arms", help="Comma list of arms (fixed is always run)."),
    settings: str = typer.Option("in_domain,loso,spacing_shift", "--settings",
                                 help="Any of in_domain, loso (leave one site out) and spacing_shift (thin vs "
                                      "3x thicker slices)."),
    network: str = typer.Option(None, "--network", help="Backbone of every arm (default resunet)."),
    task: str = typer.Option("segmentation", "--task",
                             help="segmentation, or multitask (grade and survival compared too)."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs per fold (default 100)."),
    iterations: int = typer.Option(None, "--iterations", help="Iterations per epoch (default 50)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the plan's batch size."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for intervals."),
    thick_factor: float = typer.Option(3.0, "--thick-factor",
                                       help="spacing_shift: slice thickness of the thick copies, x the original."),
    seed: int = typer.Option(0, "--seed", help="Seed of folds, training and bootstrap."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON shared by every arm."),
) -> None:
    """Train every arm on the same folds, seeds and budget; write comparison.md with CIs and paired differences."""
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.experiments.preprocessing_comparison import run_preprocessing_experiment
    from sarcomakit.planning.plan import Plan
    from sarcomakit.runs.config import TrainConfig

    base = TrainConfig.load(config_file) if config_file else TrainConfig()
    config = base.updated(network=network, epochs=epochs, iterations_per_epoch=iterations, batch_size=batch_size,
                          seed=seed, device=device)
    console = Console(stderr=True)
    results = run_preprocessing_experiment(
        Manifest.load(manifest), out_dir, plan=Plan.load(plan) if plan else None, n_folds=folds, config=config,
        arms=[a.strip() for a in arms.split(",") if a.strip()],
        settings=[s.strip() for s in settings.split(",") if s.strip()], n_bootstrap=bootstrap,
        thick_factor=thick_factor, task=task, console=console)
    for setting, result in results.items():
        dice = result.table.loc["dice_mean", result.methods] if "dice_mean" in result.table.index else None
        if dice is not None:
            console.print(f"{setting}: " + "; ".join(f"{m} {dice[m]}" for m in result.methods))
    console.print(f"written: {out_dir / 'comparison.md'}")
