"""``sarcomakit pretrain``: self-supervised pretraining of a 3D network on unlabelled cases (thin, over train)."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console

METHODS = ("mae", "crmae", "vit_mae", "simmim")


def pretrain_command(
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json; labels are not needed), or a folder "
                                              "of images named {case}_{XXXX}.nii.gz (channels in the plan's order)."),
    plan: Path = typer.Option(..., "--plan", help="Plan JSON from 'sarcomakit plan' (works without labels)."),
    method: str = typer.Option("mae", "--method", help="mae (CNN masked autoencoder), crmae (cross-modal "
                                                        "masking), vit_mae (UNETR's vision transformer), or simmim "
                                                        "(with --network unetr or swinunetr: its transformer)."),
    network: str = typer.Option(None, "--network", help="Network to pretrain (resunet, dynunet, segresnet, ...); "
                                                        "fine-tune the same one."),
    run_dir: Path = typer.Option(Path("runs/pretrain"), "--out", "-o", help="Run folder."),
    folds: int = typer.Option(5, "--folds", help="Fold 0 of this many holds out cases to validate reconstruction."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default 100)."),
    iterations: int = typer.Option(None, "--iterations", help="Iterations per epoch (default 50)."),
    task_option: list[str] = typer.Option(None, "--task-option", help="A method option as key=value (repeatable), "
                                                                      "e.g. --task-option mask_ratio=0.6; "
                                                                      "'sarcomakit tasks' lists them."),
    optimizer: str = typer.Option(None, "--optimizer", help="sgd or adamw."),
    learning_rate: float = typer.Option(None, "--lr", help="Initial learning rate."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the plan's batch size (per process)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    workers: int = typer.Option(None, "--workers", help="Data-loading processes (default: cores - 1, max 4)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint."),
    preprocessed: Path = typer.Option(None, "--preprocessed", help="Cache folder of preprocessed cases."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON; options given here override it."),
    time_limit: float = typer.Option(None, "--time-limit", help="Stop after the epoch in which this many minutes "
                                                                "have passed (resumable)."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this machine (DistributedDataParallel, "
                                                        "launched with torchrun; one per GPU)."),
) -> None:
    """Pretrain a network by masked reconstruction; its checkpoint starts 'sarcomakit train --init'."""
    from sarcomakit.cli.training import _launch_distributed, parse_task_options

    if method not in METHODS:
        raise typer.BadParameter(f"choose among {', '.join(METHODS)}.", param_hint="--method")
    if nproc > 1 and "RANK" not in os.environ:
        _launch_distributed(nproc)
    from sarcomakit.core import distributed
    from sarcomakit.inference.inputs import manifest_from_input
    from sarcomakit.planning.plan import Plan
    from sarcomakit.runs.config import TrainConfig
    from sarcomakit.training.api import train

    base = TrainConfig.load(config_file) if config_file else TrainConfig()
    options = {**(base.task_options if base.task == method else {}), **parse_task_options(task_option)}
    config = base.updated(task=method, task_options=options, network=network, epochs=epochs,
                          iterations_per_epoch=iterations, optimizer=optimizer, learning_rate=learning_rate,
                          batch_size=batch_size, seed=seed, device=device, num_workers=workers, n_folds=folds)
    console = Console(stderr=True)
    loaded_plan = Plan.load(plan)
    cohort = manifest_from_input(manifest, list(loaded_plan.channels))
    result = train(cohort, loaded_plan, run_dir, folds=(0,), config=config, resume=resume,
                   preprocessed_dir=preprocessed, time_limit_s=time_limit * 60 if time_limit is not None else None,
                   console=console)
    if distributed.is_main():
        fold = result.folds[0]
        record = fold.history[fold.best_epoch] if 0 <= fold.best_epoch < len(fold.history) else {}
        baselines = ", ".join(f"{key[4:]} {value:.4f}" for key, value in record.items()
                              if key.startswith("val_") and key.endswith("_mse") and key != "val_masked_mse")
        error = next((record[k] for k in ("val_masked_mse", "val_masked_error") if k in record), None)
        if error is not None:
            console.print(f"masked-voxel reconstruction error {error:.4f} at epoch "
                          f"{fold.best_epoch} (baselines on the same voxels: {baselines})", highlight=False)
        console.print(f"pretrained weights: {fold.fold_dir / 'checkpoint_best.pt'}; fine-tune with "
                      f"'sarcomakit train ... --network {config.network} --init {run_dir}'", highlight=False)
    distributed.shutdown()
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``pretrain``."""
    app.command("pretrain")(pretrain_command)


def ssl_experiment_command(
    manifest: Path = typer.Argument(..., help="Labelled cohort manifest (cases without labels only pretrain)."),
    out_dir: Path = typer.Option(Path("experiments/ssl"), "--out", "-o", help="Experiment folder (resumable)."),
    plan: Path = typer.Option(None, "--plan", help="Plan JSON (default: planned on the cohort)."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds."),
    labelled: str = typer.Option("2,4,8,all", "--labelled", help="Numbers of labelled training cases per fold."),
    methods: str = typer.Option("scratch,mae,crmae", "--methods", help="scratch and pretraining methods (mae, "
                                                                       "crmae, vit_mae, simmim)."),
    network: str = typer.Option(None, "--network", help="Network of every run (default: the config's; vit_mae "
                                                        "needs unetr, simmim unetr or swinunetr)."),
    unlabelled: Path = typer.Option(None, "--unlabelled", help="External unlabelled pool (manifest) to pretrain on "
                                                               "instead of each fold's training cases."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs of each segmentation run (default 100)."),
    pretrain_epochs: int = typer.Option(None, "--pretrain-epochs", help="Epochs of pretraining (default --epochs)."),
    iterations: int = typer.Option(None, "--iterations", help="Iterations per epoch (default 50)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the plan's batch size."),
    init_parts: str = typer.Option(None, "--init-parts", help="encoder (default) or encoder+decoder."),
    freeze_epochs: int = typer.Option(None, "--freeze-epochs", help="Epochs with the loaded parts frozen."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of folds, labelled subsets, training and bootstrap."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON shared by every run."),
) -> None:
    """Scratch vs pretrained fine-tuning at several numbers of labelled cases, on the same folds (comparison.md)."""
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.experiments.ssl_comparison import run_ssl_experiment
    from sarcomakit.planning.plan import Plan
    from sarcomakit.runs.config import TrainConfig

    counts: list[int | str] = []
    for item in labelled.split(","):
        item = item.strip()
        if item != "all" and not item.isdigit():
            raise typer.BadParameter(f"'{item}' is neither a number nor 'all'.", param_hint="--labelled")
        counts.append(item if item == "all" else int(item))
    base = TrainConfig.load(config_file) if config_file else TrainConfig()
    config = base.updated(network=network, epochs=epochs, iterations_per_epoch=iterations, batch_size=batch_size,
                          seed=seed, device=device, init_parts=init_parts, freeze_epochs=freeze_epochs)
    console = Console(stderr=True)
    table = run_ssl_experiment(Manifest.load(manifest), out_dir, plan=Plan.load(plan) if plan else None,
                               n_folds=folds, config=config, labelled=counts,
                               methods=[m.strip() for m in methods.split(",")], pretrain_epochs=pretrain_epochs,
                               unlabelled=Manifest.load(unlabelled) if unlabelled else None, n_bootstrap=bootstrap,
                               console=console)
    from sarcomakit.experiments.ssl_comparison import comparison_markdown

    Console().print(comparison_markdown(table), highlight=False)
    console.print(f"written: {out_dir / 'comparison.md'}, {out_dir / 'dice.csv'}, {out_dir / 'dice_vs_labels.png'}")
