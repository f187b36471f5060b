"""``sarcomakit demo``: the main job on the embedded synthetic cohort."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console


def demo_command(
    out_dir: Path = typer.Option(Path("sarcomakit-demo"), "--out", "-o", help="Output folder (resumable)."),
    cases: int = typer.Option(50, "--cases", help="Synthetic cases (40% are held out for evaluation)."),
    epochs: int = typer.Option(None, "--epochs", help="Training epochs (default: 20 on CPU, 100 on GPU)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the cohort and the training."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start afresh in --out; without it, a folder "
                                                              "holding a demo of other --cases or --seed is "
                                                              "refused."),
) -> None:
    """Synthesise a cohort, train the multi-task model, predict and evaluate held-out cases, write report.html."""
    from sarcomakit.demo import run_demo

    console = Console()
    result = run_demo(out_dir, cases=cases, epochs=epochs, seed=seed, device=device, overwrite=overwrite,
                      console=console)
    parts = [f"{name} {v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for name, v in result.headline.items()]
    console.print(f"[bold]Held-out: {'; '.join(parts)}[/bold]")
    console.print(f"report: {result.report} ({result.seconds / 60:.1f} min)")


def register(app: typer.Typer) -> None:
    """Add ``demo``."""
    app.command("demo")(demo_command)
