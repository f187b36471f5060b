"""``sarcomakit demo``: the main job on the embedded synthetic cohort."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def demo_command(
    out_dir: Path = typer.Option(Path("sarcomakit-demo"), "--out", "-o", help="Output folder (resumable)."),
    cases: int = typer.Option(24, "--cases", help="Synthetic cases (a quarter is held out)."),
    epochs: int = typer.Option(None, "--epochs", help="Training epochs (default: 24 on CPU, 100 on GPU)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the cohort and the training."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
) -> None:
    """Synthesise a cohort, plan, train, predict held-out cases, evaluate, and write report.html."""
    from sarcomakit.demo import run_demo

    console = Console()
    result = run_demo(out_dir, cases=cases, epochs=epochs, seed=seed, device=device, console=console)
    d = result.held_out_dice
    console.print(f"[bold]Held-out mean Dice: {d['mean']:.3f}[/bold] (95% CI {d['ci_low']:.3f}-{d['ci_high']:.3f}, "
                  f"n={d['n']}); report: {result.report}; {result.seconds / 60:.1f} min")


def register(app: typer.Typer) -> None:
    """Add ``demo``."""
    app.command("demo")(demo_command)
