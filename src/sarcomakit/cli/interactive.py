"""``sarcomakit interactive``: train the interactive network and evaluate interactive models under the robot user.

- ``train``: ``sarcomakit train`` with the ``interactive`` task (:mod:`sarcomakit.tasks.interactive`);
- ``campaign MODEL MANIFEST``: a simulated annotation campaign (active learning): held-out Dice
  against annotation effort for random, MC-dropout entropy and variance, and core-set selection;
- ``export RUN OUT``: the run's network weights, plan and config as a small folder to ship or share;
- ``evaluate MODEL MANIFEST``: plays the simulated annotator on every labelled case with each model
  (a run folder, ``default``, ``random_walker`` or ``geodesic``; several separated by commas) and writes
  the per-round and per-case tables, the summary (NoC@85/90, AUC, latency) and a Dice-vs-rounds plot.

Exit status, as for every cohort command: 0 when every case was evaluated, 1 when any case failed (the
others are evaluated first and the failures listed), 2 for invalid input found before any work.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from sarcomakit.data.manifest import Case

interactive_app = typer.Typer(help="Interactive segmentation: train the prompt-conditioned network, evaluate "
                                   "models under a simulated annotator.", no_args_is_help=True)


@interactive_app.command("train")
def train_command(
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json) with labels."),
    plan: Path = typer.Option(..., "--plan", help="Plan JSON from 'sarcomakit plan'."),
    run_dir: Path = typer.Option(Path("runs/interactive"), "--out", "-o", help="Run folder."),
    fold: str = typer.Option("0", "--fold", help="Fold number, comma list, or 'all'."),
    folds: int = typer.Option(5, "--folds", help="Number of cross-validation folds."),
    epochs: int = typer.Option(None, "--epochs", help="Epochs (default 100)."),
    iterations: int = typer.Option(None, "--iterations", help="Iterations per epoch (default 50)."),
    task_option: list[str] = typer.Option(None, "--task-option",
                                          help="An interactive task option as key=value (repeatable), e.g. "
                                               "--task-option single_channel=true; 'sarcomakit tasks' lists them."),
    network: str = typer.Option(None, "--network", help="Network name (resunet, dynunet, segresnet)."),
    network_option: list[str] = typer.Option(None, "--network-option",
                                             help="A network option as key=value (repeatable), e.g. "
                                                  "--network-option channels=[8,16,32,64]."),
    patch_size: str = typer.Option(None, "--patch-size", help="Training patch z,y,x (default: the plan's)."),
    batch_size: int = typer.Option(None, "--batch-size", help="Override the plan's batch size."),
    optimizer: str = typer.Option(None, "--optimizer", help="sgd or adamw."),
    learning_rate: float = typer.Option(None, "--lr", help="Initial learning rate."),
    augmentation: str = typer.Option(None, "--augmentation", help="Spatial augmentation: default, light or none."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    workers: int = typer.Option(None, "--workers", help="Data-loading processes (default: cores - 1, max 4)."),
    config_file: Path = typer.Option(None, "--config", help="TrainConfig JSON; options given here override it."),
    validate_every: int = typer.Option(None, "--validate-every", min=1, help="Validate every this many epochs "
                                                                            "(and after the last)."),
    checkpoint: str = typer.Option(None, "--checkpoint", help="Which epoch checkpoint_best.pt keeps: validation "
                                                              "(best score) or last."),
    resume: bool = typer.Option(False, "--resume", help="Continue from each fold's last checkpoint."),
    time_limit: float = typer.Option(None, "--time-limit", help="Stop after the epoch in which this many minutes "
                                                                "have passed (resumable)."),
) -> None:
    """Train the prompt-conditioned interactive network (image + previous mask + prompts -> mask)."""
    from sarcomakit.cli.training import _folds, parse_task_options
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.planning.plan import Plan
    from sarcomakit.runs.config import TrainConfig
    from sarcomakit.training.api import train

    base = TrainConfig.load(config_file) if config_file else TrainConfig(task="interactive")
    if base.task != "interactive":
        raise typer.BadParameter(f"the config trains task '{base.task}', not 'interactive'.", param_hint="--config")
    patch = None
    if patch_size:
        try:
            patch = [int(v) for v in patch_size.split(",")]
        except ValueError:
            raise typer.BadParameter("give three integers z,y,x, e.g. 24,64,64.", param_hint="--patch-size") from None
    config = base.updated(task_options={**base.task_options, **parse_task_options(task_option)} or None,
                          network_options={**base.network_options, **parse_task_options(network_option)} or None,
                          epochs=epochs, iterations_per_epoch=iterations, network=network, optimizer=optimizer,
                          learning_rate=learning_rate, batch_size=batch_size, augmentation=augmentation,
                          patch_size=patch, seed=seed, device=device, num_workers=workers, n_folds=folds,
                          validate_every=validate_every, checkpoint_selection=checkpoint)
    console = Console(stderr=True)
    result = train(Manifest.load(manifest), Plan.load(plan), run_dir, folds=_folds(fold, config.n_folds),
                   config=config, resume=resume, time_limit_s=time_limit * 60 if time_limit is not None else None,
                   console=console)
    for k, fold_result in result.folds.items():
        console.print(f"fold {k}: best {fold_result.score_name} {fold_result.best_score:.3f} at epoch "
                      f"{fold_result.best_epoch}; checkpoints in {fold_result.fold_dir}", highlight=False)
    if result.exit_code:
        raise typer.Exit(result.exit_code)


@interactive_app.command("evaluate")
def evaluate_command(
    model: str = typer.Argument(..., help="Run folder, 'default', 'random_walker' or 'geodesic'; several "
                                          "separated by commas are compared on the same cases."),
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json) with labels."),
    out: Path = typer.Option(Path("interactive-evaluation"), "--out", "-o", help="Output folder."),
    rounds: int = typer.Option(10, "--rounds", min=1, help="Interaction rounds per case (the first prompts are "
                                                           "round 1)."),
    protocol: str = typer.Option("scribble", "--protocol",
                                 help="First-round prompts: scribble, clicks or extreme_points (InteractiveNet)."),
    corrective: str = typer.Option("scribble", "--corrective", help="Corrections: scribble or click."),
    plane: str = typer.Option("random", "--plane", help="Scribble plane: axial, coronal, sagittal or random."),
    channel: str = typer.Option(None, "--channel", help="For a one-channel network: the manifest channel to give "
                                                        "it (default the first); it also picks the normalisation."),
    cases: str = typer.Option(None, "--cases", help="Comma-separated case ids (default: every labelled case)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the simulated annotator (case i uses seed + i)."),
    device: str = typer.Option("cpu", "--device", help="Where networks run: cpu, cuda or auto."),
) -> None:
    """Play the simulated annotator on every labelled case: Dice per round, NoC@85/90, AUC, latency, plot.

    Writes rounds.csv, cases.csv, curve.csv, summary.csv, summary.json and dice_vs_rounds.png into --out.
    """
    from sarcomakit.core.cohort_runner import run_per_case
    from sarcomakit.core.errors import UserInputError
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.interactive.cases import interactive_case, labelled_cases, model_channels
    from sarcomakit.interactive.evaluate import InteractiveEvaluation, evaluate_interactive
    from sarcomakit.interactive.models import load_interactive_model
    from sarcomakit.interactive.robot import RobotConfig

    robot = RobotConfig(initial=protocol, corrective=corrective, plane=plane)  # type: ignore[arg-type]
    cohort = Manifest.load(manifest)
    specs = [s.strip() for s in model.split(",") if s.strip()]
    if not specs:
        raise UserInputError("no model given.", fix="e.g. random_walker, default or a run folder.")
    if channel is not None and channel not in cohort.channels:
        raise UserInputError(f"the manifest has no channel {channel} (it has {', '.join(cohort.channels)}).",
                             path=manifest)
    models = {_method_name(spec): load_interactive_model(spec, device=device, channel=channel) for spec in specs}
    channels = model_channels(list(models.values()), cohort.channels, channel)
    chosen = labelled_cases(cohort)
    if cases:
        wanted = [c.strip() for c in cases.split(",") if c.strip()]
        unknown = sorted(set(wanted) - {c.case_id for c in chosen})
        if unknown:
            raise UserInputError(f"no labelled case {', '.join(unknown)} in the manifest.", path=manifest)
        chosen = [c for c in chosen if c.case_id in wanted]
    index = {case.case_id: i for i, case in enumerate(chosen)}
    console = Console(stderr=True)

    def play(case: Case) -> Any:
        return evaluate_interactive(models, [interactive_case(case, channels)], n_rounds=rounds, robot=robot,
                                    seed=seed + index[case.case_id]).records

    outcome = run_per_case(chosen, play, name=lambda c: c.case_id, description="interactive evaluation",
                           console=console)
    records = [record for case in chosen if case.case_id in outcome.results for record in outcome.results[case.case_id]]
    if records:
        evaluation = InteractiveEvaluation(records=records)
        paths = evaluation.save(out, title=f"{cohort.source.name if cohort.source else 'cohort'}: {protocol} "
                                           f"protocol, {len(outcome.results)} cases",
                                metadata={"manifest": str(manifest), "models": specs, "channels": channels,
                                          "rounds": rounds, "robot": robot.__dict__, "seed": seed})
        _print_summary(evaluation, Console())
        console.print(f"wrote {', '.join(p.name for p in paths.values())} in {out}", highlight=False, soft_wrap=True)
    outcome.print_summary(console)
    raise typer.Exit(outcome.exit_code)


@interactive_app.command("campaign")
def campaign_command(
    model: str = typer.Argument(..., help="The interactive network to start from: 'default' or a run folder."),
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json) with labels."),
    out: Path = typer.Option(Path("interactive-campaign"), "--out", "-o", help="Output folder."),
    strategies: str = typer.Option("random,entropy,variance,coreset", "--strategies",
                                   help="Comma list among random, entropy, variance (MC dropout) and coreset."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma list of seeds (held-out split, first cases, robot)."),
    initial: int = typer.Option(2, "--initial", min=1, help="Cases annotated before the first choice."),
    per_round: int = typer.Option(2, "--per-round", min=1, help="Cases the strategy picks per round."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Campaign rounds."),
    steps: int = typer.Option(20, "--steps", min=0, help="Fine-tuning steps after each round."),
    lr: float = typer.Option(5e-4, "--lr", help="Fine-tuning learning rate."),
    target_dice: float = typer.Option(0.90, "--target-dice", help="Dice at which the robot stops annotating a case."),
    max_interactions: int = typer.Option(10, "--max-interactions", min=1, help="Most interactions per case."),
    eval_rounds: int = typer.Option(1, "--eval-rounds", min=1, help="Robot rounds before the held-out Dice is read."),
    test_fraction: float = typer.Option(0.3, "--test-fraction", help="Fraction of the cases held out."),
    mc_samples: int = typer.Option(8, "--mc-samples", min=1, help="MC dropout samples per case."),
    channel: str = typer.Option(None, "--channel", help="For a one-channel network: the manifest channel to use."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
) -> None:
    """Simulate an annotation campaign: held-out Dice against annotation effort for each selection strategy.

    Writes campaign.csv (per strategy, seed and round), campaign_summary.csv and campaign.png into --out.
    """
    import dataclasses

    from sarcomakit.core.errors import UserInputError
    from sarcomakit.core.io.atomic import write_json, write_text
    from sarcomakit.data.manifest import Manifest
    from sarcomakit.interactive.campaign import (
        CampaignConfig,
        campaign_cases,
        campaign_summary,
        run_campaign,
        task_fine_tuner,
    )
    from sarcomakit.interactive.cases import model_channels
    from sarcomakit.interactive.models import load_interactive_model
    from sarcomakit.interactive.network_model import NetworkInteractiveModel
    from sarcomakit.reporting.interactive import campaign_figure
    from sarcomakit.tasks import build_task

    try:
        seed_list = tuple(int(v) for v in seeds.split(",") if v.strip())
    except ValueError:
        raise typer.BadParameter("give integers, e.g. 0,1,2.", param_hint="--seeds") from None
    config = CampaignConfig(strategies=tuple(v.strip() for v in strategies.split(",") if v.strip()),
                            initial_cases=initial, per_round=per_round, rounds=rounds, seeds=seed_list,
                            test_fraction=test_fraction, target_dice=target_dice, max_interactions=max_interactions,
                            eval_rounds=eval_rounds, fine_tune_steps=steps, learning_rate=lr, mc_samples=mc_samples)
    network = load_interactive_model(model, device=device, channel=channel)
    if not isinstance(network, NetworkInteractiveModel) or network.config is None:
        raise UserInputError(f"'{model}' is not a trained network; a campaign fine-tunes one.",
                             fix="give 'default' or a run folder of 'sarcomakit interactive train'.")
    cohort = Manifest.load(manifest)
    if channel is not None and channel not in cohort.channels:
        raise UserInputError(f"the manifest has no channel {channel} (it has {', '.join(cohort.channels)}).",
                             path=manifest)
    channels = model_channels([network], cohort.channels, channel)
    cases = campaign_cases(cohort, network.input_plan, channels)
    train_config = network.config.model_copy(update={"task_options": {
        k: v for k, v in network.config.task_options.items() if k != "initial_weights"}})
    fine_tune = task_fine_tuner(build_task(train_config), network.input_plan, train_config,
                                network.grid_model.device, learning_rate=lr, batch_size=config.batch_size)
    console = Console(stderr=True)
    frame = run_campaign(network.grid_model, cases, fine_tune, config,
                         progress=lambda line: console.print(line, highlight=False, soft_wrap=True))
    summary = campaign_summary(frame)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "campaign.csv", frame.to_csv(index=False))
    write_text(out / "campaign_summary.csv", summary.to_csv(index=False))
    settings = {k: v for k, v in dataclasses.asdict(config).items() if k != "robot"}
    write_json(out / "campaign.json", {"model": model, "manifest": str(manifest), "channels": channels, **settings})
    campaign_figure(summary, out / "campaign.png", title=f"{len(cases)} cases, {len(seed_list)} seed(s)")
    last = summary.sort_values("round").groupby("strategy", sort=False).tail(1)
    for row in last.itertuples():
        Console().print(f"{row.strategy}: held-out Dice {row.heldout_dice:.3f} (range {row.dice_min:.3f}-"
                        f"{row.dice_max:.3f}) after {row.cumulative_interactions:.1f} interactions on "
                        f"{row.n_labelled:.0f} cases", highlight=False, soft_wrap=True)


@interactive_app.command("export")
def export_command(
    run_dir: Path = typer.Argument(..., help="Interactive run folder."),
    out: Path = typer.Argument(..., help="Folder to write (plan.json, config.json, fold_0/checkpoint_best.pt)."),
    fold: int = typer.Option(None, "--fold", help="Fold whose network to export (default: the first trained)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    notes: Path = typer.Option(None, "--notes", help="A Markdown file copied beside it as RECIPE.md."),
) -> None:
    """Write a trained interactive run as a small folder to ship or share (weights only, no optimizer state).

    The folder is a run folder: give it to 'interactive evaluate', a session (NetworkInteractiveModel.from_run),
    or to training as --task-option initial_weights=FOLDER to fine-tune it.
    """
    from sarcomakit.core.errors import UserInputError
    from sarcomakit.interactive.models import export_interactive_model

    if notes is not None and not notes.is_file():
        raise UserInputError("notes file not found.", path=notes)
    written = export_interactive_model(run_dir, out, fold=fold, checkpoint=checkpoint,
                                       notes=notes.read_text(encoding="utf-8") if notes else None)
    size = sum(p.stat().st_size for p in written.rglob("*") if p.is_file()) / 2**20
    Console().print(f"wrote {written} ({size:.1f} MiB)", highlight=False, soft_wrap=True)


def _method_name(spec: str) -> str:
    """A model's label in tables: the baseline's name, or the run folder's name."""
    path = Path(spec)
    return path.name if path.is_dir() and spec not in ("default",) else spec


def _print_summary(evaluation: object, console: Console) -> None:
    summary = evaluation.summary()  # type: ignore[attr-defined]
    for row in summary.itertuples():
        console.print(f"{row.method}: final Dice {row.mean_final_dice:.3f}, AUC {row.mean_dice_auc:.3f}, "
                      f"NoC@85 {row.noc85:.1f} ({row.noc85_failed} failed), NoC@90 {row.noc90:.1f} "
                      f"({row.noc90_failed} failed), latency median {row.latency_median_s:.2f} s / p95 "
                      f"{row.latency_p95_s:.2f} s over {row.n_cases} cases", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``interactive`` command group."""
    app.add_typer(interactive_app, name="interactive")
