"""Multi-task model vs single-task models vs a radiomics baseline, on the same folds and seeds.

```
EXP/
  splits.json                    one set of folds (stratified by grade and event) for every method
  plans/split_K/                 fold K's plan, made from its training cases only
  preprocessed/split_K/          cases preprocessed once per fold plan
  runs/<method>/split_K/         a run folder per deep model (multitask, segmentation_only, grade_only,
                                 survival_only) and fold, holding that fold as its fold_0/ and its
                                 oof_predictions.csv
  radiomics/                     features.csv and the baseline's out-of-fold predictions
  oof_predictions.csv            every method's out-of-fold predictions
  comparison.csv/.md, differences.csv, experiment.json
```
Nothing of a fold's validation cases shapes what is scored on them (:mod:`sarcomakit.experiments.protocol`): each
fold is planned on its training cases, and every network keeps its last epoch. Every step resumes: finished
folds and cached features are reused when the experiment is rerun.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.data.folds import make_folds, save_folds
from sarcomakit.data.manifest import GRADES, Manifest
from sarcomakit.evaluation.comparison import ComparisonResult, compare_methods
from sarcomakit.evaluation.comparison_tables import write_comparison
from sarcomakit.evaluation.oof import OOF_COLUMNS, OOF_FILE, write_oof
from sarcomakit.experiments.protocol import plan_training_cases, without_model_selection
from sarcomakit.experiments.setup import experiment_folds
from sarcomakit.planning.plan import Plan
from sarcomakit.runs.config import TrainConfig
from sarcomakit.training.api import train

log = logging.getLogger(__name__)

DEEP_METHODS: dict[str, tuple[str, ...]] = {
    "multitask": ("segmentation", "grade", "survival"),
    "segmentation_only": ("segmentation",),
    "grade_only": ("grade",),
    "survival_only": ("survival",),
}
ALL_METHODS = (*DEEP_METHODS, "radiomics")


def radiomics_available() -> bool:
    """pyradiomics is an optional extra (``pip install sarcomakit[radiomics]``)."""
    return importlib.util.find_spec("radiomics") is not None


def radiomics_out_of_fold(manifest: Manifest, folds: list[dict[str, list[str]]], out_dir: Path,
                          channels: Sequence[str] | None = None) -> pd.DataFrame:
    """Out-of-fold grade probabilities and log-risks of the radiomics baseline (features from the reference mask)."""
    from sarcomakit.baselines.radiomics import RadiomicsBaseline, extract_cohort_features

    features, outcome = extract_cohort_features(manifest, channels, out_dir / "features.csv")
    if outcome.failures:
        outcome.print_summary()
    by_id = {c.case_id: c for c in manifest.cases}
    rows = []
    for k, fold in enumerate(folds):
        train_ids = [c for c in fold["train"] if c in features.index]
        val_ids = [c for c in fold["val"] if c in features.index]
        if not train_ids or not val_ids:
            continue
        cases = [by_id[c] for c in train_ids]
        model = RadiomicsBaseline().fit(
            features.loc[train_ids], grade=[c.grade for c in cases],
            time=[np.nan if c.survival_time is None else c.survival_time for c in cases],
            event=[np.nan if c.event is None else c.event for c in cases])
        proba = model.predict_proba(features.loc[val_ids]) if model.grade_model_ is not None else None
        risk = model.predict_risk(features.loc[val_ids]) if model.survival_model_ is not None else None
        cutoff = float(np.median(model.predict_risk(features.loc[train_ids]))) if risk is not None else None
        for i, case_id in enumerate(val_ids):
            case = by_id[case_id]
            row = {"case_id": case_id, "method": "radiomics", "fold": k, "grade_true": case.grade,
                   "time": case.survival_time, "event": case.event}
            if proba is not None:
                row.update({"p_low": proba[i, 0], "p_intermediate": proba[i, 1], "p_high": proba[i, 2],
                            "grade_pred": GRADES[int(np.argmax(proba[i]))]})
            if risk is not None:
                row.update({"log_risk": float(risk[i]), "risk_group": "high" if risk[i] > cutoff else "low",
                            "train_risk_cutoff": cutoff})
            rows.append(row)
    table = pd.DataFrame(rows, columns=list(OOF_COLUMNS))
    write_oof(table, out_dir / OOF_FILE)
    return table


def run_experiment(manifest: Manifest, out_dir: str | Path, *, plan: Plan | None = None, n_folds: int = 5,
                   config: TrainConfig | None = None, methods: Sequence[str] = ALL_METHODS,
                   reference: str = "multitask", n_bootstrap: int = 1000,
                   console: Console | None = None) -> ComparisonResult:
    """Train and evaluate every method on the same folds; write the comparison (module docstring).

    Args:
        manifest: cohort with labels and clinical fields.
        out_dir: experiment folder (resumable).
        plan: one conventional plan for every fold (default: each fold planned on its own training cases).
        n_folds: cross-validation folds, stratified by grade and event (grouped by site when possible).
        config: training options shared by the deep models (task fields are set per method).
        methods: subset of :data:`ALL_METHODS`.
        reference: the method the others are compared with (paired differences).
    """
    console = console or Console(stderr=True)
    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise UserInputError(f"unknown method(s) {unknown}.", fix=f"choose among {', '.join(ALL_METHODS)}.")
    if "radiomics" in methods and not radiomics_available():
        console.print("[yellow]pyradiomics is not installed: the radiomics baseline is left out "
                      "(install it with: pip install numpy setuptools wheel && "
                      "pip install --no-build-isolation pyradiomics).[/yellow]")
        methods = [m for m in methods if m != "radiomics"]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = without_model_selection(config or TrainConfig())
    folds = experiment_folds(out, lambda: make_folds(manifest, n_folds, config.seed, clinical=True))
    plans = [plan or plan_training_cases(manifest, fold["train"], out / "plans" / f"split_{k}")[0]
             for k, fold in enumerate(folds)]

    tables = []
    for method in methods:
        console.rule(f"{method}")
        if method == "radiomics":
            tables.append(radiomics_out_of_fold(manifest, folds, out / "radiomics", plans[0].channels))
            continue
        method_config = config.updated(task="multitask", n_folds=2,
                                       task_options={**config.task_options, "tasks": list(DEEP_METHODS[method]),
                                                     "method": method})
        for k, (fold, fold_plan) in enumerate(zip(folds, plans, strict=True)):
            run_dir = out / "runs" / method / f"split_{k}"
            run_dir.mkdir(parents=True, exist_ok=True)
            if not (run_dir / "splits.json").exists():
                save_folds([fold], run_dir / "splits.json")
            train(manifest.subset([*fold["train"], *fold["val"]]), fold_plan, run_dir, folds=(0,),
                  config=method_config, resume=True, preprocessed_dir=out / "preprocessed" / f"split_{k}",
                  console=console)
            tables.append(pd.read_csv(run_dir / OOF_FILE).assign(fold=k))

    oof = pd.concat(tables, ignore_index=True)
    write_oof(oof, out / OOF_FILE)
    chosen_reference = reference if reference in methods else methods[0]
    result = compare_methods(oof, reference=chosen_reference, n_bootstrap=n_bootstrap, seed=config.seed)
    write_comparison(result, out)
    write_json(out / "experiment.json", {
        "methods": list(methods), "reference": chosen_reference, "folds": len(folds), "seed": config.seed,
        "cohort": str(manifest.source) if manifest.source else None,
        "prediction_dirs": dict.fromkeys(methods),
    })
    return result
