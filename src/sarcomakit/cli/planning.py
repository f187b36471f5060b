"""``sarcomakit plan`` and ``sarcomakit preprocess``: the conventional nnU-Net-style planning pipeline."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import Manifest
from sarcomakit.planning.plan import DEFAULT_MEMORY_BUDGET_MB, Plan, plan_cohort
from sarcomakit.planning.preprocess import preprocess_cohort

AXES = "z, y, x"


def _numbers(value: str | None, option: str, kind: type = float) -> list | None:
    if value is None:
        return None
    try:
        numbers = [kind(v) for v in value.split(",")]
    except ValueError as exc:
        raise UserInputError(f"{option} {value!r} is not a comma list of three numbers.",
                             fix=f"write e.g. {option} 3,0.8,0.8 ({AXES}).") from exc
    if len(numbers) != 3:
        raise UserInputError(f"{option} needs three values ({AXES}), got {len(numbers)}.",
                             fix=f"write e.g. {option} 3,0.8,0.8.")
    return numbers


def _channel_kinds(values: list[str] | None) -> dict[str, str] | None:
    if not values:
        return None
    kinds = {}
    for item in values:
        name, sep, kind = item.partition("=")
        if not sep or not name or not kind:
            raise UserInputError(f"--channel-kind {item!r} is not CHANNEL=KIND.",
                                 fix="write e.g. --channel-kind CT=ct.")
        kinds[name.strip()] = kind.strip()
    return kinds


def plan_summary(plan: Plan) -> Table:
    """A table of the plan's main choices."""

    def fmt(values: list) -> str:
        return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)

    table = Table(title="plan", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("orientation", plan.orientation)
    table.add_row(f"target spacing ({AXES}) mm", fmt([round(s, 4) for s in plan.target_spacing]))
    table.add_row("anisotropic", f"yes, low-resolution axis {'zyx'[plan.low_res_axis]}"
                  if plan.anisotropic and plan.low_res_axis is not None else "no")
    for spec in plan.normalization:
        if spec.scheme == "ct":
            text = f"ct: clip [{spec.clip_low:g}, {spec.clip_high:g}], mean {spec.mean:.4g}, std {spec.std:.4g}"
        else:
            text = spec.scheme + (" within the nonzero mask" if spec.use_nonzero_mask else "")
        table.add_row(f"normalisation {spec.channel}", text)
    table.add_row(f"median shape ({AXES})", fmt(plan.median_shape))
    table.add_row(f"patch size ({AXES})", fmt(plan.patch_size))
    table.add_row("batch size", str(plan.batch_size))
    table.add_row("memory budget", f"{plan.memory_budget_mb:g} MiB")
    if plan.learnt_steps or not plan.resample:
        table.add_row("learnt by the network", ", ".join(plan.learnt_steps) or "–")
        table.add_row("resampling", "to the target spacing" if plan.resample else "none (native grid)")
    return table


def plan_command(
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json)."),
    out: Path = typer.Option(None, "--out", "-o", help="Plan JSON to write (default: plan.json beside the manifest)."),
    memory_mb: float = typer.Option(DEFAULT_MEMORY_BUDGET_MB, "--memory-mb",
                                    help="Memory budget of one training step, MiB (sets patch and batch size)."),
    target_spacing: str = typer.Option(None, "--target-spacing", help=f"Override the target spacing: {AXES} in mm."),
    patch_size: str = typer.Option(None, "--patch-size", help=f"Override the patch size: {AXES} in voxels."),
    channel_kind: list[str] = typer.Option(None, "--channel-kind",
                                           help="Normalisation of a channel, CHANNEL=ct|zscore|percentile|none "
                                                "(repeatable)."),
    pipeline: str = typer.Option("fixed", "--pipeline",
                                 help="fixed (nnU-Net's rules) or minimal (reorient, float, crop only: intensity "
                                      "and spacing are left to learnable input layers)."),
) -> None:
    """Fingerprint a cohort and write its plan (target spacing, normalisation, patch and batch size)."""
    cohort = Manifest.load(manifest)
    out_path = out or manifest.parent / "plan.json"
    plan = plan_cohort(cohort, out_path, memory_budget_mb=memory_mb,
                       target_spacing=_numbers(target_spacing, "--target-spacing"),
                       patch_size=_numbers(patch_size, "--patch-size", int),
                       channel_kinds=_channel_kinds(channel_kind), pipeline=pipeline)
    console = Console()
    console.print(plan_summary(plan))
    console.print(f"plan written to {out_path} (fingerprint: {out_path.with_name('fingerprint.json')})")


def preprocess_command(
    manifest: Path = typer.Argument(..., help="Cohort manifest (.csv or .json)."),
    plan: Path = typer.Option(..., "--plan", help="Plan JSON from 'sarcomakit plan'."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder for the preprocessed cases."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo cases already preprocessed."),
) -> None:
    """Preprocess a cohort with a plan (reorient, crop, normalise, resample); resumable."""
    outcome = preprocess_cohort(Manifest.load(manifest), Plan.load(plan), out, overwrite=overwrite)
    outcome.print_summary()
    raise typer.Exit(outcome.exit_code)


def register(app: typer.Typer) -> None:
    """Add ``plan`` and ``preprocess``."""
    app.command("plan")(plan_command)
    app.command("preprocess")(preprocess_command)
