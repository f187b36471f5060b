"""The main job end to end on the embedded synthetic cohort.

synth -> plan -> train the multi-task model (segmentation, grade, survival) -> predict the held-out
cases (masks in their original geometry, grade probabilities, log-risk) -> evaluate all three tasks
with bootstrap intervals -> ``report.html``.

Every step is resumable: rerunning the demo in the same folder skips what is done (cohort files,
plan, preprocessed cases, finished epochs, predicted cases). On a CPU the patch is capped and
training is short so that the whole job fits in about ten minutes on two cores; with a GPU the same
call scales up through ``cases`` and ``epochs``.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from rich.console import Console
from rich.table import Table

from sarcomakit.baselines.threshold import threshold_baseline
from sarcomakit.core.device import select_device
from sarcomakit.data.manifest import Manifest
from sarcomakit.data.synthetic import make_synthetic_cohort
from sarcomakit.evaluation.bootstrap import summarise
from sarcomakit.evaluation.comparison import compare_methods
from sarcomakit.evaluation.formatting import format_estimate
from sarcomakit.evaluation.metrics import dice
from sarcomakit.evaluation.oof import OOF_COLUMNS, OOF_FILE, write_oof
from sarcomakit.evaluation.segmentation import evaluate_predictions
from sarcomakit.inference.predictor import predict
from sarcomakit.io.atomic import write_json
from sarcomakit.io.image import read_image
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.reporting.multitask_report import write_multitask_report
from sarcomakit.training.api import train
from sarcomakit.training.config import TrainConfig

# Small enough for two CPU cores, large enough to hold most of a tumour at the demo's spacing.
CPU_PATCH_CAP = (32, 80, 80)
HEADLINE = {"dice_mean": "Dice", "auc_macro_ovr": "grade AUC (macro one-vs-rest)",
            "auc_high_vs_rest": "grade AUC (high vs rest)", "c_index_harrell": "C-index (Harrell)"}


@dataclass
class DemoResult:
    out_dir: Path
    headline: dict[str, dict[str, float]]
    threshold_dice: float
    report: Path
    seconds: float


def split_held_out(manifest: Manifest, test_fraction: float) -> tuple[Manifest, Manifest]:
    """The last ``test_fraction`` of cases are held out (cases are i.i.d. by index in the synthetic cohort)."""
    n_test = max(1, round(len(manifest) * test_fraction))
    ids = manifest.case_ids
    return manifest.subset(ids[:-n_test]), manifest.subset(ids[-n_test:])


def demo_config(plan: Plan, device: str, epochs: int | None, seed: int) -> TrainConfig:
    """Multi-task training options: the plan's patch on a GPU, a capped patch and short schedule on a CPU."""
    on_gpu = select_device(device).type == "cuda"
    patch = plan.patch_size if on_gpu else [min(p, c) for p, c in zip(plan.patch_size, CPU_PATCH_CAP, strict=True)]
    return TrainConfig(task="multitask", task_options={"weighting": "uncertainty", "modality_dropout": 0.15},
                       epochs=epochs or (100 if on_gpu else 20), iterations_per_epoch=50 if on_gpu else 25,
                       patch_size=patch, batch_size=None if on_gpu else 2, optimizer="adamw",
                       learning_rate=3e-3, weight_decay=1e-4, foreground_fraction=0.5,
                       augmentation="default" if on_gpu else "light", validate_every=1 if on_gpu else 5,
                       checkpoint_selection="last",
                       sw_overlap=0.5 if on_gpu else 0.25, seed=seed, device=device, n_folds=5)


def threshold_dice(manifest: Manifest) -> pd.Series:
    """Per-case Dice of the T2FS thresholding baseline, for comparison."""
    scores = {}
    for case in manifest:
        images = {ch: sitk.GetArrayFromImage(read_image(p)) for ch, p in case.images.items()}
        reference = sitk.GetArrayFromImage(read_image(case.label)) > 0
        scores[case.case_id] = dice(threshold_baseline(images) > 0, reference)
    return pd.Series(scores, name="threshold_dice")


def held_out_table(test_set: Manifest, pred_dir: Path, per_case: pd.DataFrame,
                   risk_cutoff: float | None) -> pd.DataFrame:
    """The held-out predictions in the out-of-fold table format (method ``multitask``)."""
    with open(pred_dir / "clinical_predictions.csv", newline="") as handle:
        clinical = {row["case_id"]: row for row in csv.DictReader(handle)}
    metrics = per_case.set_index("case_id")
    rows = []
    for case in test_set:
        row = {"case_id": case.case_id, "method": "multitask", "grade_true": case.grade, "time": case.survival_time,
               "event": case.event, "train_risk_cutoff": risk_cutoff}
        row.update({k: v for k, v in clinical.get(case.case_id, {}).items() if k != "case_id" and v != ""})
        if case.case_id in metrics.index:
            row.update({"dice": metrics.loc[case.case_id, "dice"], "hd95": metrics.loc[case.case_id, "hd95"]})
        rows.append(row)
    return pd.DataFrame(rows, columns=list(OOF_COLUMNS))


def run_demo(out_dir: str | Path = "sarcomakit-demo", *, cases: int = 50, epochs: int | None = None, seed: int = 0,
             test_fraction: float = 0.4, device: str = "auto", console: Console | None = None) -> DemoResult:
    """Run the whole multi-task job on a synthetic cohort and write ``out_dir/report.html``."""
    console = console or Console(stderr=True)
    started = time.perf_counter()
    out = Path(out_dir)

    console.rule("1/6 synthetic cohort")
    cohort = make_synthetic_cohort(out / "cohort", n_cases=cases, seed=seed)
    train_set, test_set = split_held_out(cohort, test_fraction)
    train_set.save(out / "train_manifest.csv")
    heldout = out / "heldout"
    test_set.save(heldout / "manifest.json")
    console.print(f"{len(train_set)} training cases, {len(test_set)} held out")

    console.rule("2/6 plan")
    plan_path = out / "plan.json"
    plan = Plan.load(plan_path) if plan_path.exists() else plan_cohort(train_set, plan_path)
    console.print(f"target spacing {[round(s, 2) for s in plan.target_spacing]} mm (z,y,x), patch {plan.patch_size}")

    console.rule("3/6 train the multi-task model")
    config = demo_config(plan, device, epochs, seed)
    run_dir = out / "run"
    resume = (run_dir / "fold_0" / "checkpoint_last.pt").exists()
    train(train_set, plan, run_dir, folds=(0,), config=config, resume=resume, console=console)

    console.rule("4/6 predict held-out cases")
    pred_dir = heldout / "predictions"
    predict(run_dir, heldout / "manifest.json", pred_dir, largest_component=True, device=device,
            console=console).print_summary(console)

    console.rule("5/6 evaluate")
    evaluation = evaluate_predictions(pred_dir, test_set, heldout / "evaluation", show_progress=False)
    cutoff = json.loads((run_dir / "fold_0" / "task_state.json").read_text()).get("risk_cutoff")
    table = held_out_table(test_set, pred_dir, evaluation.per_case, cutoff)
    write_oof(table, heldout / OOF_FILE)
    comparison = compare_methods(table, reference="multitask", seed=seed)
    thresholds = threshold_dice(test_set)
    metrics = comparison.metrics.set_index("metric")
    headline = {name: metrics.loc[name, ["value", "ci_low", "ci_high"]].astype(float).to_dict()
                for name in HEADLINE if name in metrics.index}

    console.rule("6/6 report")
    report = write_multitask_report(heldout, out / "report.html", comparison=comparison)
    seconds = time.perf_counter() - started
    write_json(out / "demo_summary.json", {"held_out": headline, "n_test": len(test_set), "seconds": seconds,
                                           "threshold_dice": summarise(thresholds.to_numpy())})
    summary = Table(title=f"held-out cases (n={len(test_set)}), 95% bootstrap intervals")
    for column in ("task", "value [95% CI]"):
        summary.add_column(column)
    for name, label in HEADLINE.items():
        if name in headline:
            h = headline[name]
            summary.add_row(label, format_estimate(h["value"], h["ci_low"], h["ci_high"]))
    summary.add_row("Dice of the T2FS threshold baseline", format_estimate(np.nanmean(thresholds), np.nan, np.nan))
    console.print(summary)
    return DemoResult(out_dir=out, headline=headline, threshold_dice=float(np.nanmean(thresholds)), report=report,
                      seconds=seconds)
