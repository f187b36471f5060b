"""What every comparison experiment sets up first: its folds and its plan, made once and reloaded on a rerun; and
the Dice of a run's model on preprocessed cases.

The folds are written first (``splits.json``) so that a plan can be made on the training cases alone; both are
reused when the experiment resumes, so every method sees the same folds and the same preprocessing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from sarcomakit.core.device import select_device
from sarcomakit.data.folds import save_folds
from sarcomakit.data.manifest import Manifest
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.segmentation import SegmentationTask, segmentation_dice

Folds = list[dict[str, list[str]]]


def experiment_folds(out: Path, make: Callable[[], Folds]) -> Folds:
    """``out/splits.json``: made by ``make`` the first time, read back afterwards."""
    path = out / "splits.json"
    if not path.exists():
        save_folds(make(), path)
    return json.loads(path.read_text(encoding="utf-8"))


def experiment_plan(planning_cases: Manifest, out: Path, plan: Plan | None = None) -> Plan:
    """The user's ``plan``, else ``out/plan.json`` (made from ``planning_cases`` the first time)."""
    if plan is not None:
        return plan
    plan_path = out / "plan.json"
    return Plan.load(plan_path) if plan_path.exists() else plan_cohort(planning_cases, plan_path)


def case_dice(run_dir: Path, plan: Plan, config: TrainConfig, case_ids: Sequence[str],
                  preprocessed: Path) -> list[float]:
    """Mean foreground Dice of each case, on the preprocessed grid, with the run's ``fold_0`` best weights."""
    device = select_device(config.device)
    task = SegmentationTask()
    model = task.build_model(plan, config)
    model.load_state_dict(load_checkpoint(run_dir / "fold_0" / "checkpoint_best.pt")["model"])
    model.to(device).eval()
    scores = []
    for case_id in case_ids:
        case = PreprocessedCase.load(preprocessed, case_id)
        output = task.infer(model, case, plan, config, device, overlap=config.sw_overlap)
        assert output.probabilities is not None
        scores.append(float(np.mean(segmentation_dice(output.probabilities.argmax(0).cpu().numpy(),
                                                      np.asarray(case.label), len(plan.labels)))))
    return scores
