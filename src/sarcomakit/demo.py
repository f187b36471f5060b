"""The main job end to end on the embedded synthetic cohort.

synth -> plan -> train the multi-task model (segmentation, grade, survival) -> predict the held-out
cases (masks in their original geometry, grade probabilities, log-risk) -> evaluate all three tasks
with bootstrap intervals -> ``report.html``.

Every step is resumable: rerunning the demo in the same folder skips what is done (cohort files,
plan, preprocessed cases, finished epochs, predicted cases). On a CPU the patch is capped and
training is short so that the whole job fits in about ten minutes on two cores; with a GPU the same
call scales up through ``cases`` and ``epochs``.

Resuming is only sound with the same inputs: with other ``cases``, ``seed`` or ``test_fraction`` the
held-out cases differ, and the old plan and model would have been built from some of them. So the
folder records its inputs in ``provenance.json`` and a rerun with other inputs is refused, naming what
differs; ``overwrite`` starts afresh in the same folder instead (cohort included). Refusing, rather than starting
in a new subfolder, keeps the report where the user looks for it and never grows the folder silently,
and it is the rule ``sarcomakit train`` follows. More ``epochs`` or another ``device`` resume the same
run; held-out predictions are redone whenever the checkpoint they came from changed.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from rich.console import Console
from rich.table import Table

from sarcomakit.baselines.threshold import threshold_baseline
from sarcomakit.core.device import select_device
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.io.image import read_image
from sarcomakit.core.provenance import describe_value_change, examples, file_identity
from sarcomakit.core.step_record import StepRecord
from sarcomakit.data.manifest import Manifest
from sarcomakit.data.synthetic import case_id_of, make_synthetic_cohort
from sarcomakit.evaluation.bootstrap import summarise
from sarcomakit.evaluation.comparison import compare_methods
from sarcomakit.evaluation.formatting import format_estimate
from sarcomakit.evaluation.metrics import dice
from sarcomakit.evaluation.oof import OOF_COLUMNS, OOF_FILE, write_oof
from sarcomakit.evaluation.segmentation import evaluate_predictions
from sarcomakit.inference.prediction_record import STEP as PREDICTIONS_STEP
from sarcomakit.inference.predictor import predict
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.reporting.multitask_report import write_multitask_report
from sarcomakit.runs.config import TrainConfig
from sarcomakit.training.api import train

# Small enough for two CPU cores, large enough to hold most of a tumour at the demo's spacing.
CPU_PATCH_CAP = (32, 80, 80)
HEADLINE = {"dice_mean": "Dice", "auc_macro_ovr": "grade AUC (macro one-vs-rest)",
            "auc_high_vs_rest": "grade AUC (high vs rest)", "c_index_harrell": "C-index (Harrell)"}
PROVENANCE = "provenance.json"
PROVENANCE_FORMAT = "sarcomakit-demo-provenance"
DEMO_CONTENT = ("plan.json", "fingerprint.json", "train_manifest.csv", "run", "heldout", "report.html",
                "demo_summary.json")
"""What the demo builds from its cohort; :func:`claim_demo_folder` removes it with ``overwrite``."""
PREDICTED_WITH = "predicted_with.json"
FIX = "use a new --out folder, or --overwrite to start fresh."


@dataclass
class DemoResult:
    out_dir: Path
    headline: dict[str, dict[str, float]]
    threshold_dice: float
    report: Path
    seconds: float


def held_out_count(n_cases: int, test_fraction: float) -> int:
    """How many of ``n_cases`` are held out: ``test_fraction`` of them, at least one."""
    return max(1, round(n_cases * test_fraction))


def split_held_out(manifest: Manifest, test_fraction: float) -> tuple[Manifest, Manifest]:
    """The last ``test_fraction`` of cases are held out (cases are i.i.d. by index in the synthetic cohort)."""
    n_test = held_out_count(len(manifest), test_fraction)
    ids = manifest.case_ids
    return manifest.subset(ids[:-n_test]), manifest.subset(ids[-n_test:])


def demo_inputs(cases: int, seed: int, test_fraction: float) -> dict[str, Any]:
    """The provenance record of a demo folder: its arguments and the training and held-out case ids."""
    ids = [case_id_of(i) for i in range(cases)]
    n_test = held_out_count(cases, test_fraction)
    return {"format": PROVENANCE_FORMAT, "version": 1, "cases": cases, "seed": seed, "test_fraction": test_fraction,
            "train_ids": ids[:-n_test], "held_out_ids": ids[-n_test:]}


def claim_demo_folder(out: Path, inputs: dict[str, Any], overwrite: bool = False) -> None:
    """Make ``out`` the demo folder of ``inputs``: check what it holds, or clear it with ``overwrite``.

    Raises:
        UserInputError: the folder holds demo results of other inputs, or results that record none.
    """
    record_path = out / PROVENANCE
    recorded: dict[str, Any] | None = None
    if record_path.exists():
        try:
            recorded = json.loads(record_path.read_text(encoding="utf-8"))
            if not isinstance(recorded, dict) or recorded.get("format") != PROVENANCE_FORMAT:
                raise ValueError("not a demo provenance record")
        except (OSError, ValueError) as exc:
            if not overwrite:
                raise UserInputError(f"cannot be read ({exc}).", path=record_path, fix=FIX) from exc
            recorded = None
    if not overwrite:
        if recorded is None and any((out / name).exists() for name in DEMO_CONTENT):
            raise UserInputError("holds demo results that do not record the inputs they were built from.",
                                 path=out, fix=FIX)
        if recorded is not None and (changes := describe_demo_changes(recorded, inputs)):
            raise UserInputError(f"holds a demo built from other inputs ({changes}).", path=out, fix=FIX)
    else:  # the record is replaced last: an interrupted clear still refuses other inputs on the next run
        for path in (out / name for name in DEMO_CONTENT):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    write_json(record_path, inputs)


def describe_demo_changes(recorded: dict[str, Any], inputs: dict[str, Any]) -> str | None:
    """One phrase saying how the recorded demo arguments and cases differ from ``inputs`` (None: same)."""
    arguments = ("cases", "seed", "test_fraction")
    changes = [describe_value_change({k: recorded.get(k) for k in arguments}, {k: inputs[k] for k in arguments})]
    trained = set(recorded.get("train_ids", [])) if recorded.get("seed") == inputs["seed"] else set()
    if leaked := [cid for cid in inputs["held_out_ids"] if cid in trained]:  # same seed, same id: same patient
        changes.append(f"{len(leaked)} of the held-out cases were training cases ({examples(leaked)})")
    text = "; ".join(c for c in changes if c)
    return text or None


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
        if case.label is None:
            raise ValueError(f"demo case {case.case_id} has no label")
        reference = sitk.GetArrayFromImage(read_image(case.label)) > 0
        scores[case.case_id] = dice(threshold_baseline(images) > 0, reference)
    return pd.Series(scores, name="threshold_dice")


def held_out_table(test_set: Manifest, pred_dir: Path, per_case: pd.DataFrame,
                   risk_cutoff: float | None) -> pd.DataFrame:
    """The held-out predictions in the out-of-fold table format (method ``multitask``)."""
    with open(pred_dir / "clinical_predictions.csv", newline="", encoding="utf-8") as handle:
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
             test_fraction: float = 0.4, device: str = "auto", overwrite: bool = False,
             console: Console | None = None) -> DemoResult:
    """Run the whole multi-task job on a synthetic cohort and write ``out_dir/report.html``.

    A folder holding a demo of other ``cases``, ``seed`` or ``test_fraction`` is refused unless
    ``overwrite``, which starts afresh (module docstring).
    """
    console = console or Console(stderr=True)
    started = time.perf_counter()
    out = Path(out_dir)
    claim_demo_folder(out, demo_inputs(cases, seed, test_fraction), overwrite)

    console.rule("1/6 synthetic cohort")
    cohort = make_synthetic_cohort(out / "cohort", n_cases=cases, seed=seed, overwrite=overwrite)
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
    model = {"checkpoint_sha256": file_identity(run_dir / "fold_0" / "checkpoint_best.pt")["sha256"]}
    # the demo owns this folder: predictions of an earlier checkpoint (or unrecorded ones) are redone
    stale = _read_json(heldout / PREDICTED_WITH) != model or not StepRecord(pred_dir, PREDICTIONS_STEP).folder.is_dir()
    predict(run_dir, heldout / "manifest.json", pred_dir, largest_component=True, overwrite=stale, device=device,
            console=console).print_summary(console)
    write_json(heldout / PREDICTED_WITH, model)

    console.rule("5/6 evaluate")
    evaluation = evaluate_predictions(pred_dir, test_set, heldout / "evaluation", show_progress=False)
    cutoff = json.loads((run_dir / "fold_0" / "task_state.json").read_text(encoding="utf-8")).get("risk_cutoff")
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


def _read_json(path: Path) -> object:
    """The JSON content of ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
