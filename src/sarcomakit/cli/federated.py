"""``sarcomakit federated simulate``: federated training of a manifest's sites, simulated in this process."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

federated_app = typer.Typer(help="Federated training across sites: in-process simulation, or the Flower app for a "
                                 "deployment across hospitals.", no_args_is_help=True)


@federated_app.command("simulate")
def simulate_command(
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json) with a site column."),
    plan: Path = typer.Option(..., "--plan", help="Plan JSON from 'sarcomakit plan' (shared by every site)."),
    run_dir: Path = typer.Option(Path("runs/federated"), "--out", "-o", help="Global run folder."),
    site_column: str = typer.Option("site", "--site-column", help="Manifest column naming each case's site."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Federated rounds."),
    strategy: str = typer.Option("fedavg", "--strategy",
                                 help="fedavg, fedprox, fedadam, fedyogi or fedmedian."),
    local_steps: int = typer.Option(10, "--local-steps", min=1, help="Optimisation steps per site and round."),
    mu: float = typer.Option(0.0, "--mu", min=0, help="FedProx's proximal coefficient (mu/2)||w - w_global||^2."),
    server_lr: float = typer.Option(None, "--server-lr", help="FedAdam/FedYogi server learning rate (default 0.01)."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of each site's cases kept for validation."),
    dp_epsilon: float = typer.Option(None, "--dp-epsilon", help="Patient-level DP-SGD in every site with this "
                                                                 "target epsilon over the whole run."),
    dp_delta: float = typer.Option(None, "--dp-delta", help="DP delta (default and maximum 1/(10 N) per site)."),
    dp_max_grad_norm: float = typer.Option(1.0, "--dp-max-grad-norm", help="Per-patient clipping norm."),
    central_dp_noise: float = typer.Option(None, "--central-dp-noise",
                                           help="Client-level DP: noise multiplier on the sites' uniform mean."),
    central_dp_clip: float = typer.Option(1.0, "--central-dp-clip",
                                          help="Client-level DP: L2 clipping norm of each site's update."),
    central_dp_delta: float = typer.Option(1e-3, "--central-dp-delta", help="Client-level DP: the delta reported."),
    task: str = typer.Option(None, "--task", help="What to train (default segmentation)."),
    network: str = typer.Option(None, "--network", help="Network name (resunet, dynunet, segresnet)."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON; options given here override it."),
    learning_rate: float = typer.Option(None, "--lr", help="Local learning rate."),
    batch_size: int = typer.Option(None, "--batch-size", help="Batch size (under DP: expected patients per step)."),
    seed: int = typer.Option(None, "--seed", help="Random seed."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda[:N]."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last completed round."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Clear an earlier run in --out first."),
) -> None:
    """Train every site of MANIFEST in turn, aggregate each round, keep a global checkpoint per round."""
    from pydantic import ValidationError

    from sarcomakit.core.errors import UserInputError
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.federated.simulation import FederatedSettings, simulate
    from sarcomakit.planning.plan import Plan
    from sarcomakit.runs.config import TrainConfig

    base = TrainConfig.load(config_file) if config_file else TrainConfig()
    config = base.updated(task=task, network=network, learning_rate=learning_rate, batch_size=batch_size, seed=seed,
                          device=device)
    try:
        settings = FederatedSettings(strategy=strategy, rounds=rounds, local_steps=local_steps, mu=mu,
                                     site_column=site_column, val_fraction=val_fraction, server_lr=server_lr,
                                     dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_max_grad_norm=dp_max_grad_norm,
                                     central_dp_noise=central_dp_noise, central_dp_clip=central_dp_clip,
                                     central_dp_delta=central_dp_delta)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise UserInputError(f"invalid federated option: {error['loc'][0]} {error['msg']}.",
                             fix="see 'sarcomakit federated simulate --help'.") from None
    console = Console(stderr=True)
    result = simulate(Manifest.load(manifest), Plan.load(plan), run_dir, settings=settings, config=config,
                      resume=resume, overwrite=overwrite, console=console)
    for name, summary in result.privacy.items():
        console.print(f"site {name}: epsilon {summary['epsilon']:.2f} at delta {summary['delta']:.2g} "
                      f"(unit: patient)", highlight=False)
    if settings.central_dp_noise is not None:
        console.print(f"client-level DP: see {result.run_dir / 'privacy.json'} (unit: a site)", highlight=False)
    console.print(f"{result.rounds_run} round(s); global checkpoints in {result.run_dir / 'fold_0'}", highlight=False)


@federated_app.command("flower-project")
def flower_project_command(
    app_dir: Path = typer.Argument(..., help="Folder to write the Flower app's pyproject.toml into."),
    plan: Path = typer.Option(..., "--plan", help="Plan JSON shared by every site (a path on the server)."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON shared by every site."),
    run_dir: Path = typer.Option(Path("runs/flower"), "--out", "-o", help="Global run folder (on the server)."),
    strategy: str = typer.Option("fedavg", "--strategy", help="fedavg, fedprox, fedadam, fedyogi or fedmedian."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Federated rounds."),
    local_steps: int = typer.Option(10, "--local-steps", min=1, help="Optimisation steps per site and round."),
    min_nodes: int = typer.Option(2, "--min-nodes", min=1, help="SuperNodes a round needs."),
    mu: float = typer.Option(0.0, "--mu", min=0, help="FedProx's proximal coefficient."),
    secure_aggregation: bool = typer.Option(False, "--secure-aggregation",
                                            help="SecAgg+ (FedAvg only): the server sees only the sum."),
    central_dp_noise: float = typer.Option(0.0, "--central-dp-noise", min=0,
                                           help="Client-level DP: noise multiplier on the sites' mean (0: off)."),
    central_dp_clip: float = typer.Option(1.0, "--central-dp-clip", min=0,
                                          help="Client-level DP: L2 clipping norm of each site's update."),
    central_dp_delta: float = typer.Option(1e-3, "--central-dp-delta", min=0,
                                           help="Client-level DP: the delta epsilon is reported at."),
) -> None:
    """Write the Flower app project (pyproject.toml) that `flwr run APP_DIR SUPERLINK` submits to a SuperLink."""
    from sarcomakit.core.errors import UserInputError
    from sarcomakit.federated.flower_project import write_flower_project

    if central_dp_noise > 0 and (secure_aggregation or strategy not in ("fedavg", "fedprox") or central_dp_clip <= 0):
        raise UserInputError("client-level DP needs --strategy fedavg or fedprox, a positive --central-dp-clip, and "
                             "no --secure-aggregation.", fix="change those options, or leave --central-dp-noise at 0.")
    path = write_flower_project(app_dir, {
        "plan": str(plan.resolve()), "config": str(config_file.resolve()) if config_file else "",
        "out": str(run_dir.resolve()), "strategy": strategy, "num-server-rounds": rounds, "local-steps": local_steps,
        "min-nodes": min_nodes, "proximal-mu": mu, "secure-aggregation": secure_aggregation,
        "central-dp-noise": central_dp_noise, "central-dp-clip": central_dp_clip, "central-dp-delta": central_dp_delta})
    Console(stderr=True).print(f"written: {path} (submit it with: flwr run {app_dir} SUPERLINK, a connection "
                               "named in $FLWR_HOME/config.toml)", highlight=False)


def federated_experiment_command(
    manifest: Path = typer.Argument(..., help="Multi-site cohort manifest with labels and a site column."),
    out_dir: Path = typer.Option(Path("experiments/federated"), "--out", "-o", help="Experiment folder (resumable)."),
    plan: Path = typer.Option(None, "--plan", help="Plan JSON (default: planned on the training cases)."),
    site_column: str = typer.Option("site", "--site-column", help="Manifest column naming each case's site."),
    methods: str = typer.Option("centralised,centralised_compute,local,fedavg,fedprox,cdp_fedavg,dp_fedavg",
                                "--methods",
                                help="Comma list among centralised, centralised_compute (pooled, sites x local "
                                     "steps per round: the federation's compute), local, fedavg, fedprox, "
                                     "cdp_fedavg (client-level DP), dp_fedavg (patient-level DP-SGD)."),
    rounds: int = typer.Option(5, "--rounds", min=1, help="Rounds every method trains for."),
    local_steps: int = typer.Option(10, "--local-steps", min=1, help="Optimisation steps per round."),
    mu: float = typer.Option(0.01, "--mu", min=0, help="FedProx's proximal coefficient."),
    dp_epsilon: str = typer.Option("8", "--dp-epsilon", help="DP-FedAvg's target epsilon per site (unit: patient); "
                                                          "a comma list (1,4,8) gives one DP-FedAvg run each."),
    central_dp_noise: float = typer.Option(1.0, "--central-dp-noise", help="cdp_fedavg: noise multiplier."),
    central_dp_clip: float = typer.Option(1.0, "--central-dp-clip", help="cdp_fedavg: clipping norm of each site's "
                                                                         "update."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="Share of each site's cases held out."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples for intervals."),
    seed: int = typer.Option(None, "--seed", help="Seed of the split, training and bootstrap."),
    device: str = typer.Option(None, "--device", help="auto, cpu or cuda[:N]."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON shared by every method."),
) -> None:
    """Centralised vs each site alone vs FedAvg vs FedProx vs DP-FedAvg on held-out test cases of every site."""
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.experiments.federated_comparison import comparison_markdown, run_federated_experiment
    from sarcomakit.planning.plan import Plan
    from sarcomakit.runs.config import TrainConfig

    base = TrainConfig.load(config_file) if config_file else TrainConfig()
    config = base.updated(seed=seed, device=device)
    console = Console(stderr=True)
    table = run_federated_experiment(Manifest.load(manifest), out_dir, plan=Plan.load(plan) if plan else None,
                                     config=config, site_column=site_column, rounds=rounds, local_steps=local_steps,
                                     mu=mu, dp_epsilon=_epsilons(dp_epsilon), central_dp_noise=central_dp_noise,
                                     central_dp_clip=central_dp_clip, test_fraction=test_fraction,
                                     methods=[m.strip() for m in methods.split(",")], n_bootstrap=bootstrap,
                                     console=console)
    Console().print(comparison_markdown(table), highlight=False)
    console.print(f"written: {out_dir / 'comparison.md'}, {out_dir / 'cost.csv'}, "
                  f"{out_dir / 'federated_comparison.png'}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add the ``federated`` command group."""
    app.add_typer(federated_app, name="federated")


def _epsilons(text: str) -> list[float]:
    """``--dp-epsilon 8`` or ``1,4,8`` as numbers (a one-line error otherwise)."""
    from sarcomakit.core.errors import UserInputError

    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError as exc:
        raise UserInputError(f"--dp-epsilon {text!r} is not a number or a comma list of numbers.",
                             fix="e.g. --dp-epsilon 8, or --dp-epsilon 1,4,8.") from exc
