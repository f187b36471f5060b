"""``sarcomakit train`` (train the folds of a run) and ``sarcomakit tasks`` (what can be trained, with its options)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console


def _folds(value: str, n_folds: int) -> list[int]:
    if value == "all":
        return list(range(n_folds))
    try:
        return [int(v) for v in value.split(",")]
    except ValueError as exc:
        raise typer.BadParameter("use a fold number, a comma list (0,2) or 'all'.") from exc


def parse_task_options(pairs: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs: a value is read as JSON when it parses (numbers, true/false, lists), as a comma list
    when it has commas, else as a string."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"'{pair}' is not key=value (e.g. --task-option weighting=uncertainty).",
                                     param_hint="--task-option")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = [v.strip() for v in value.split(",")] if "," in value else value
    return options


def _launch_distributed(nproc: int) -> None:
    """Re-run this very command under torchrun with ``nproc`` processes on this machine, and exit with its status."""
    if shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists():
        raise typer.BadParameter("torchrun is not installed with this Python.", param_hint="--nproc")
    argv = sys.argv[1:]
    cleaned: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        cleaned.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "sarcomakit", *cleaned]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1)
                                                                                           // nproc)))}
    raise typer.Exit(subprocess.call(command, env=env))


def train_command(
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json)."),
    plan: Path = typer.Option(..., "--plan", help="Plan JSON from 'sarcomakit plan'."),
    run_dir: Path = typer.Option(Path("runs/segmentation"), "--out", "-o", help="Run folder."),
    fold: str = typer.Option("0", "--fold", help="Fold number, comma list, or 'all'."),
    folds: int = typer.Option(5, "--folds", help="Number of cross-validation folds."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default 100)."),
    iterations: int = typer.Option(None, "--iterations", help="Iterations per epoch (default 50)."),
    task: str = typer.Option(None, "--task", help="What to train (default segmentation); 'sarcomakit tasks' lists "
                                                  "the tasks and their options."),
    task_option: list[str] = typer.Option(None, "--task-option", help="A task option as key=value (repeatable), "
                                                                      "e.g. --task-option weighting=uncertainty."),
    network: str = typer.Option(None, "--network", help="Network name (resunet, dynunet, segresnet)."),
    optimizer: str = typer.Option(None, "--optimizer", help="sgd or adamw."),
    learning_rate: float = typer.Option(None, "--lr", help="Initial learning rate."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the plan's batch size (per process)."),
    augmentation: str = typer.Option(None, "--augmentation", help="default, light or none."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    workers: int = typer.Option(None, "--workers", help="Data-loading processes (default: cores - 1, max 4)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from each fold's last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Remove an earlier run in --out (folds, splits, "
                                                              "cache) and start fresh."),
    preprocessed: Path = typer.Option(None, "--preprocessed", help="Cache folder of preprocessed cases."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON; options given here override it."),
    time_limit: float = typer.Option(None, "--time-limit", help="Stop after the epoch in which this many minutes "
                                                                "have passed (resumable)."),
    early_stopping: int = typer.Option(None, "--early-stopping", help="Stop after this many validations without "
                                                                      "improvement."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Processes on this machine (DistributedDataParallel, "
                                                        "launched with torchrun; one per GPU)."),
    init: str = typer.Option(None, "--init", help="Start from pretrained weights: a 'sarcomakit pretrain' run "
                                                  "folder or checkpoint, or MONAI's model_swinvit.pt, "
                                                  "ssl_pretrained_weights.pth or a ViTAutoEnc state dict."),
    init_parts: str = typer.Option(None, "--init-parts", help="encoder (default) or encoder+decoder."),
    freeze_epochs: int = typer.Option(None, "--freeze-epochs", help="Epochs with the loaded parts frozen."),
    warmup_epochs: int = typer.Option(None, "--warmup-epochs", help="Epochs of linear learning-rate warm-up "
                                                                    "(default with --init: a tenth of the epochs)."),
) -> None:
    """Train a 3D network for a task (segmentation by default) on one or more folds."""
    if nproc > 1 and "RANK" not in os.environ:
        _launch_distributed(nproc)
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.planning.plan import Plan
    from sarcomakit.runs.config import TrainConfig
    from sarcomakit.training.api import train

    base = TrainConfig.load(config_file) if config_file else TrainConfig()
    options = {**base.task_options, **parse_task_options(task_option)} if task is None or task == base.task \
        else parse_task_options(task_option)
    config = base.updated(task=task, task_options=options or None, epochs=epochs,
                          iterations_per_epoch=iterations, network=network, optimizer=optimizer,
                          learning_rate=learning_rate, batch_size=batch_size, augmentation=augmentation,
                          seed=seed, device=device, num_workers=workers, n_folds=folds,
                          init_checkpoint=str(Path(init).resolve()) if init else None, init_parts=init_parts,
                          freeze_epochs=freeze_epochs, warmup_epochs=warmup_epochs)
    console = Console(stderr=True)
    result = train(Manifest.load(manifest), Plan.load(plan), run_dir, folds=_folds(fold, config.n_folds),
                   config=config, resume=resume, preprocessed_dir=preprocessed,
                   time_limit_s=time_limit * 60 if time_limit is not None else None, early_stopping=early_stopping,
                   overwrite=overwrite, console=console)
    from sarcomakit.core import distributed

    if distributed.is_main():
        for k, fold_result in result.folds.items():
            console.print(f"fold {k}: best {fold_result.score_name} {fold_result.best_score:.3f} at epoch "
                          f"{fold_result.best_epoch}; checkpoints in {fold_result.fold_dir}")
    distributed.shutdown()
    if result.exit_code:
        raise typer.Exit(result.exit_code)


def tasks_command() -> None:
    """List the tasks 'sarcomakit train --task' accepts, what each needs, and its --task-option keys."""
    from sarcomakit.tasks import TASKS, task_class, task_options

    console = Console()
    for name in TASKS.names():
        cls = task_class(name)
        needs = cls.requirements
        summary = (cls.__doc__ or "").strip().splitlines()[0]
        console.print(f"[bold]{name}[/bold]: {summary}", highlight=False)
        console.print(f"  needs labels: {'yes' if needs.needs_labels else 'no'}; missing channels: "
                      f"{'zero-filled and flagged' if needs.allow_missing_channels else 'refused'}; folds "
                      f"stratified by grade and event: {'yes' if needs.stratify_clinical else 'no'}; "
                      f"validation score: {cls.score_name}", highlight=False)
        for option, (default, text) in task_options(name).items():
            console.print(f"  --task-option {option}=...  {text} (default {default!r})", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``train`` and ``tasks``."""
    app.command("train")(train_command)
    app.command("tasks")(tasks_command)
