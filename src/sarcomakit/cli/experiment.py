"""``sarcomakit experiment``: multi-task vs single-task models vs radiomics, on the same folds."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

if TYPE_CHECKING:
    # typer ships its own copy of click; its groups take that Context
    from typer._click import Context

# kept in step with sarcomakit.experiments.multitask_comparison.ALL_METHODS (imported lazily: torch is slow to load)
METHODS = ("multitask", "segmentation_only", "grade_only", "survival_only", "radiomics")


def experiment_command(
    manifest: Path = typer.Argument(..., help="Cohort manifest with labels, grade and survival."),
    out_dir: Path = typer.Option(Path("experiments/multitask"), "--out", "-o", help="Experiment folder (resumable)."),
    plan: Path = typer.Option(None, "--plan", help="Plan JSON (default: planned on the cohort)."),
    folds: int = typer.Option(5, "--folds", help="Cross-validation folds (stratified by grade and event)."),
    methods: str = typer.Option(",".join(METHODS), "--methods", help="Comma list of methods to run."),
    reference: str = typer.Option("multitask", "--reference", help="Method the others are compared with."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs per fold (default 100)."),
    iterations: int = typer.Option(None, "--iterations", help="Iterations per epoch (default 50)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the plan's batch size."),
    weighting: str = typer.Option("fixed", "--weighting", help="Multi-task loss weighting: fixed or uncertainty."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of folds, training and bootstrap."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON shared by the deep models."),
) -> None:
    """Train every method on the same folds and write comparison.csv/.md with CIs and paired differences."""
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.experiments.multitask_comparison import run_experiment
    from sarcomakit.planning.plan import Plan
    from sarcomakit.runs.config import TrainConfig

    base = TrainConfig.load(config_file) if config_file else TrainConfig()
    config = base.updated(epochs=epochs, iterations_per_epoch=iterations, batch_size=batch_size, seed=seed,
                          device=device, task_options={**base.task_options, "weighting": weighting})
    console = Console(stderr=True)
    result = run_experiment(Manifest.load(manifest), out_dir, plan=Plan.load(plan) if plan else None, n_folds=folds,
                            config=config, methods=[m.strip() for m in methods.split(",")], reference=reference,
                            n_bootstrap=bootstrap, console=console)
    table = Table(title=f"out-of-fold comparison ({folds} folds; 95% bootstrap CI)")
    table.add_column("metric")
    for method in result.methods:
        table.add_column(method)
    for _, row in result.table.iterrows():
        table.add_row(str(row["metric"]), *[str(row[m]) for m in result.methods])
    Console().print(table)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"written: {out_dir / 'comparison.md'}, {out_dir / 'differences.csv'}")


class _MultitaskByDefault(TyperGroup):
    """``sarcomakit experiment MANIFEST ...`` runs the multi-task comparison as before; ``sarcomakit experiment ssl
    MANIFEST ...`` runs the pretraining comparison."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["multitask", *args]
        return super().parse_args(ctx, args)


def register(app: typer.Typer) -> None:
    """Add ``experiment`` (``multitask``, the default, ``ssl``, ``preprocessing`` and ``federated``)."""
    from sarcomakit.cli.federated import federated_experiment_command
    from sarcomakit.cli.learnt_preprocessing import preprocessing_experiment_command
    from sarcomakit.cli.pretrain import ssl_experiment_command

    group = typer.Typer(cls=_MultitaskByDefault, no_args_is_help=True,
                        help="Compare methods on the same folds: multi-task (default), self-supervised pretraining, "
                             "fixed vs learnt preprocessing, or federated vs centralised vs local training.")
    group.command("multitask")(experiment_command)
    group.command("ssl")(ssl_experiment_command)
    group.command("preprocessing")(preprocessing_experiment_command)
    group.command("federated")(federated_experiment_command)
    app.add_typer(group, name="experiment")
