"""The main job end to end on the embedded synthetic cohort: synth -> plan -> train -> predict -> evaluate -> report.

Every step is resumable: rerunning the demo in the same folder skips what is done (cohort files,
plan, preprocessed cases, finished epochs, predicted cases). On a CPU the patch is capped and
training is short so that the whole job fits in a few minutes on two cores; with a GPU the same
call scales up through ``cases`` and ``epochs``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from rich.console import Console

from sarcomakit.baselines.threshold import threshold_baseline
from sarcomakit.data.manifest import Manifest
from sarcomakit.data.synthetic import make_synthetic_cohort
from sarcomakit.evaluation.bootstrap import summarise
from sarcomakit.evaluation.metrics import dice
from sarcomakit.evaluation.segmentation import evaluate_predictions
from sarcomakit.inference.predictor import predict
from sarcomakit.io.atomic import write_json
from sarcomakit.io.image import read_image
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.reporting.figures import overlay_figure
from sarcomakit.reporting.html import ReportSection, write_html_report
from sarcomakit.training.api import train
from sarcomakit.training.config import TrainConfig
from sarcomakit.training.engine import select_device

# Small enough for two CPU cores, large enough to hold most of a tumour at the demo's spacing.
CPU_PATCH_CAP = (32, 80, 80)


@dataclass
class DemoResult:
    out_dir: Path
    held_out_dice: dict[str, float]
    threshold_dice: float
    report: Path
    seconds: float


def split_held_out(manifest: Manifest, test_fraction: float) -> tuple[Manifest, Manifest]:
    """The last ``test_fraction`` of cases are held out (cases are i.i.d. by index in the synthetic cohort)."""
    n_test = max(1, round(len(manifest) * test_fraction))
    ids = manifest.case_ids
    return manifest.subset(ids[:-n_test]), manifest.subset(ids[-n_test:])


def demo_config(plan: Plan, device: str, epochs: int | None, seed: int) -> TrainConfig:
    on_gpu = select_device(device).type == "cuda"
    patch = plan.patch_size if on_gpu else [min(p, c) for p, c in zip(plan.patch_size, CPU_PATCH_CAP, strict=True)]
    return TrainConfig(epochs=epochs or (100 if on_gpu else 24), iterations_per_epoch=50 if on_gpu else 25,
                       patch_size=patch, batch_size=None if on_gpu else 2, optimizer="adamw",
                       learning_rate=3e-3, weight_decay=1e-4, augmentation="default" if on_gpu else "light",
                       seed=seed, device=device, n_folds=5)


def _threshold_dice(manifest: Manifest) -> pd.Series:
    scores = {}
    for case in manifest:
        images = {ch: sitk.GetArrayFromImage(read_image(p)) for ch, p in case.images.items()}
        reference = sitk.GetArrayFromImage(read_image(case.label)) > 0
        scores[case.case_id] = dice(threshold_baseline(images) > 0, reference)
    return pd.Series(scores, name="threshold_dice")


def _overlays(manifest: Manifest, pred_dir: Path, out_dir: Path, channel: str, limit: int = 4) -> list[Path]:
    figures = []
    for case in manifest.cases[:limit]:
        pred_path = pred_dir / f"{case.case_id}.nii.gz"
        if not pred_path.exists():
            continue
        image = read_image(case.images[channel])
        figures.append(overlay_figure(
            sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(read_image(case.label)) > 0,
            sitk.GetArrayFromImage(read_image(pred_path)) > 0, out_dir / f"overlay_{case.case_id}.png",
            title=f"{case.case_id} ({channel}): reference green, prediction red",
            spacing=tuple(reversed(image.GetSpacing()))))
    return figures


def run_demo(out_dir: str | Path = "sarcomakit-demo", *, cases: int = 24, epochs: int | None = None, seed: int = 0,
             test_fraction: float = 0.25, device: str = "auto", console: Console | None = None) -> DemoResult:
    """Run the whole segmentation job on a synthetic cohort and write ``out_dir/report.html``."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    out = Path(out_dir)

    console.rule("1/6 synthetic cohort")
    cohort = make_synthetic_cohort(out / "cohort", n_cases=cases, seed=seed)
    train_set, test_set = split_held_out(cohort, test_fraction)
    train_set.save(out / "train_manifest.csv")
    test_set.save(out / "test_manifest.csv")
    console.print(f"{len(train_set)} training cases, {len(test_set)} held out")

    console.rule("2/6 plan")
    plan_path = out / "plan.json"
    plan = Plan.load(plan_path) if plan_path.exists() else plan_cohort(train_set, plan_path)
    console.print(f"target spacing {plan.target_spacing} mm (z,y,x), patch {plan.patch_size}")

    console.rule("3/6 train")
    config = demo_config(plan, device, epochs, seed)
    run_dir = out / "run"
    resume = (run_dir / "fold_0" / "checkpoint_last.pt").exists()
    train(train_set, plan, run_dir, folds=(0,), config=config, resume=resume, console=console)

    console.rule("4/6 predict held-out cases")
    pred_dir = out / "predictions"
    outcome = predict(run_dir, out / "test_manifest.csv", pred_dir, device=device, console=console)
    outcome.print_summary(console)

    console.rule("5/6 evaluate")
    evaluation = evaluate_predictions(pred_dir, test_set, out / "evaluation")
    evaluation.print(console)
    thresholds = _threshold_dice(test_set)
    per_case = evaluation.per_case.set_index("case_id").join(thresholds, how="left").reset_index()

    console.rule("6/6 report")
    dice_summary = evaluation.summary["dice"]
    threshold_summary = summarise(thresholds.to_numpy())
    figures = _overlays(test_set, pred_dir, out / "figures", "T2FS" if "T2FS" in plan.channels else plan.channels[0])
    summary_table = pd.DataFrame([
        {"method": "3D residual U-Net (sarcomakit)", **{k: dice_summary[k] for k in ("mean", "sd", "median",
                                                                                     "ci_low", "ci_high")}},
        {"method": "T2FS threshold baseline", **{k: threshold_summary[k] for k in ("mean", "sd", "median",
                                                                                  "ci_low", "ci_high")}},
    ])
    history = pd.read_csv(run_dir / "fold_0" / "history.csv")
    report = write_html_report(out / "report.html", "sarcomakit demo: tumour segmentation on a synthetic cohort", [
        ReportSection("Held-out Dice", text=f"{len(test_set)} held-out cases, never seen in training or "
                      "validation. 95% intervals by bootstrap over cases.", table=summary_table.round(3)),
        ReportSection("Per-case metrics", table=per_case.round(3)),
        ReportSection("Evaluation figure", figures=[out / "evaluation" / "metrics.png"]),
        ReportSection("Held-out overlays", figures=figures),
        ReportSection("Training", text=f"network {config.network}, patch {config.patch_size}, "
                      f"{len(history)} epochs x {config.iterations_per_epoch} iterations",
                      table=history.round(4)),
    ], metadata={"cases": cases, "seed": seed, "device": str(select_device(device)),
                 "minutes": round((time.perf_counter() - started) / 60, 1)})
    seconds = time.perf_counter() - started
    write_json(out / "demo_summary.json", {"held_out_dice": dice_summary, "threshold_dice": threshold_summary,
                                           "seconds": seconds, "n_test": len(test_set)})
    console.print(f"held-out mean Dice {dice_summary['mean']:.3f} (95% CI {dice_summary['ci_low']:.3f}-"
                  f"{dice_summary['ci_high']:.3f}); threshold baseline {np.nanmean(thresholds):.3f}")
    return DemoResult(out_dir=out, held_out_dice=dice_summary, threshold_dice=float(np.nanmean(thresholds)),
                      report=report, seconds=seconds)
