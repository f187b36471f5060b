"""The multi-task task: segmentation, histological grade and survival from the same scans.

Each training patch carries its case's labels; a case lacking a label for a task contributes
only to the tasks it has (see :mod:`sarcomakit.training.multitask_losses`). The Cox loss of a
batch of one or two cases is computed against a memory of recent cases' risks. Modality dropout
zero-fills one present channel of a patch with probability ``modality_dropout`` and clears its
availability flag, so that the model copes with a missing modality at test time. Single-task
ablations are the same network trained on a subset of ``tasks``.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sarcomakit.data.manifest import GRADES, Manifest
from sarcomakit.errors import UserInputError
from sarcomakit.evaluation.classification import macro_ovr_auc
from sarcomakit.evaluation.metrics import segmentation_metrics
from sarcomakit.evaluation.survival import harrell_c_index
from sarcomakit.inference.case_level import predict_case_outputs
from sarcomakit.io.atomic import write_json, write_text
from sarcomakit.models.multitask import build_multitask_network
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.training.config import TrainConfig
from sarcomakit.training.multitask_losses import (
    CoxRiskMemory,
    FixedWeighting,
    MultiTaskLoss,
    UncertaintyWeighting,
    balanced_class_weights,
)
from sarcomakit.training.patches import CaseVolume, PatchDataset
from sarcomakit.training.tasks import Task, case_tensor, register_task

log = logging.getLogger(__name__)
ALL_TASKS = ("segmentation", "grade", "survival")
OOF_COLUMNS = ("case_id", "method", "fold", "grade_true", "p_low", "p_intermediate", "p_high", "grade_pred", "time",
               "event", "log_risk", "risk_group", "dice", "hd95", "train_risk_cutoff")


def channel_availability(case: PreprocessedCase, channels: Sequence[str]) -> np.ndarray:
    """1 for each plan channel present in the case, 0 for one that was missing and zero-filled."""
    missing = set(case.properties.get("missing_channels", []))
    return np.array([0.0 if ch in missing else 1.0 for ch in channels], dtype=np.float32)


class ClinicalTargets:
    """Per-case grade index (-1 unknown), survival time (NaN unknown) and event (NaN unknown)."""

    def __init__(self, manifest: Manifest | None) -> None:
        self.by_id = {c.case_id: c for c in manifest.cases} if manifest is not None else {}

    def grade(self, case_id: str) -> int:
        case = self.by_id.get(case_id)
        return GRADES.index(case.grade) if case is not None and case.grade in GRADES else -1

    def survival(self, case_id: str) -> tuple[float, float]:
        case = self.by_id.get(case_id)
        if case is None or case.survival_time is None or case.event is None or case.survival_time < 0:
            return float("nan"), float("nan")
        return float(case.survival_time), float(case.event)


class MultiTaskPatchDataset(torch.utils.data.Dataset):
    """Segmentation patches with their case's clinical targets, availability flags and modality dropout."""

    def __init__(self, patches: PatchDataset, cases: Sequence[PreprocessedCase], targets: ClinicalTargets,
                 channels: Sequence[str], modality_dropout: float) -> None:
        self.patches = patches
        self.case_ids = [c.case_id for c in cases]
        self.availability = [channel_availability(c, channels) for c in cases]
        self.targets = targets
        self.modality_dropout = modality_dropout

    def set_epoch(self, epoch: int) -> None:
        self.patches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.patches)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.patches[index]
        i = sample.pop("case_index")
        case_id = self.case_ids[i]
        available = self.availability[i].copy()
        rng = np.random.default_rng((self.patches.seed, self.patches.epoch, index, 1))
        present = np.flatnonzero(available)
        if len(present) > 1 and rng.random() < self.modality_dropout:
            dropped = int(rng.choice(present))
            sample["image"][dropped] = 0.0
            available[dropped] = 0.0
        time, event = self.targets.survival(case_id)
        sample.update({"available": torch.from_numpy(available), "grade": self.targets.grade(case_id),
                       "survival_time": torch.tensor(time), "event": torch.tensor(event), "case_id": case_id})
        return sample


class MultiTaskTask(Task):
    """Segmentation + grade + survival (or a subset, for single-task ablations).

    Args:
        manifest: the cohort (clinical labels by case id).
        tasks: which of ``segmentation``, ``grade``, ``survival`` to train.
        weighting: ``fixed`` (``weights``) or ``uncertainty`` (Kendall et al. 2018, learnt).
        weights: fixed weight per task.
        ordinal: ordinal grade head (low < intermediate < high) instead of nominal.
        mask_pooling: also pool bottleneck features under the predicted tumour (needs segmentation).
        modality_dropout: probability of zero-filling one present channel of a training patch.
        cox_memory: cases kept in the Cox risk memory.
        method: the name of this model in out-of-fold tables.
    """

    score_name = "val_score"

    def __init__(self, manifest: Manifest | None = None, *, tasks: Sequence[str] = ALL_TASKS,
                 weighting: str = "fixed", weights: dict[str, float] | None = None, ordinal: bool = False,
                 mask_pooling: bool = True, modality_dropout: float = 0.2, cox_memory: int = 64,
                 method: str = "multitask") -> None:
        super().__init__(manifest)
        unknown = set(tasks) - set(ALL_TASKS)
        if unknown or not tasks:
            raise UserInputError(f"unknown task(s) {sorted(unknown) or 'none'}.",
                                 fix=f"choose among {', '.join(ALL_TASKS)}.")
        self.tasks = tuple(t for t in ALL_TASKS if t in tasks)
        self.targets = ClinicalTargets(manifest)
        self.ordinal = ordinal
        self.mask_pooling = mask_pooling and "segmentation" in self.tasks
        self.modality_dropout = modality_dropout
        self.method = method
        self.memory = CoxRiskMemory(size=cox_memory)
        if weighting == "uncertainty":
            self.weighting: torch.nn.Module = UncertaintyWeighting(list(self.tasks))
        elif weighting == "fixed":
            self.weighting = FixedWeighting({t: (weights or {}).get(t, 1.0) for t in self.tasks})
        else:
            raise UserInputError(f"unknown loss weighting '{weighting}'.", fix="use fixed or uncertainty.")
        self.loss_fn: MultiTaskLoss | None = None

    # ---------------------------------------------------------------- building
    def build_model(self, plan: Plan, config: TrainConfig) -> torch.nn.Module:
        return build_multitask_network(config.network, in_channels=len(plan.channels),
                                       out_channels=len(plan.labels), patch_size=config.patch_size or plan.patch_size,
                                       ordinal=self.ordinal, mask_pooling=self.mask_pooling,
                                       **config.network_options)

    def dataset(self, cases, plan, config, length):
        grades = [g for g in (self.targets.grade(c.case_id) for c in cases) if g >= 0]
        class_weights = balanced_class_weights(grades) if grades else None
        self.loss_fn = MultiTaskLoss(self.weighting, grade_class_weights=class_weights, ordinal=self.ordinal,
                                     cox_memory=self.memory)
        self._warn_missing_labels(cases)
        volumes = [CaseVolume(c, seed=config.seed + i) for i, c in enumerate(cases)]
        patches = PatchDataset(volumes, config.patch_size or plan.patch_size, length,
                               foreground_fraction=config.foreground_fraction, augmentation=config.augmentation,
                               seed=config.seed)
        return MultiTaskPatchDataset(patches, cases, self.targets, plan.channels, self.modality_dropout)

    def _warn_missing_labels(self, cases: Sequence[PreprocessedCase]) -> None:
        ids = [c.case_id for c in cases]
        if "grade" in self.tasks and not any(self.targets.grade(i) >= 0 for i in ids):
            log.warning("no training case has a grade: the grade task is skipped")
        if "survival" in self.tasks:
            events = [self.targets.survival(i)[1] for i in ids]
            if not np.nansum(events):
                log.warning("no training case has an observed event: the survival task is skipped")

    def parameters(self) -> list[torch.nn.Parameter]:
        return list(self.weighting.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {"weighting": self.weighting.state_dict(), "memory": self.memory.state_dict()}

    def load_state_dict(self, state):
        if "weighting" in state:
            self.weighting.load_state_dict(state["weighting"])
            self.memory.load_state_dict(state["memory"])

    # ---------------------------------------------------------------- training
    def loss(self, model, batch, device):
        assert self.loss_fn is not None, "build the dataset first"
        self.loss_fn.train(model.training)
        outputs = model(batch["image"].to(device, non_blocking=True), batch["available"].to(device))
        keep = {"segmentation": "segmentation", "grade": "grade", "survival": "log_risk"}
        outputs = {keep[t]: outputs[keep[t]] for t in self.tasks}
        targets = {"segmentation": batch["label"].to(device, non_blocking=True), "grade": batch["grade"].to(device),
                   "survival_time": batch["survival_time"].to(device), "event": batch["event"].to(device),
                   "case_ids": list(batch["case_id"])}
        result = self.loss_fn(outputs, targets)
        logged = {f"loss_{name}": float(value.detach()) for name, value in result.losses.items()
                  if name not in result.skipped}
        return result.total, logged

    # ---------------------------------------------------------------- validation and outputs
    def case_rows(self, model, cases, plan, config, device, fold: int | None = None,
                  risk_cutoff: float | None = None) -> list[dict[str, Any]]:
        """One out-of-fold row per case (columns :data:`OOF_COLUMNS`)."""
        rows = []
        patch = config.patch_size or plan.patch_size
        for case in cases:
            volume = case_tensor(case, device)
            out = predict_case_outputs(model, volume, patch, available=torch.from_numpy(
                channel_availability(case, plan.channels)), overlap=config.sw_overlap,
                sw_batch_size=config.sw_batch_size, amp=config.amp)
            time, event = self.targets.survival(case.case_id)
            grade = self.targets.grade(case.case_id)
            row: dict[str, Any] = {"case_id": case.case_id, "method": self.method, "fold": fold,
                                   "grade_true": GRADES[grade] if grade >= 0 else None,
                                   "time": None if np.isnan(time) else time,
                                   "event": None if np.isnan(event) else int(event)}
            if "grade" in self.tasks:
                p = out.grade_probabilities
                row.update({"p_low": float(p[0]), "p_intermediate": float(p[1]), "p_high": float(p[2]),
                            "grade_pred": GRADES[int(np.argmax(p))]})
            if "survival" in self.tasks:
                row["log_risk"] = out.log_risk
                if risk_cutoff is not None:
                    row.update({"risk_group": "high" if out.log_risk > risk_cutoff else "low",
                                "train_risk_cutoff": risk_cutoff})
            if "segmentation" in self.tasks and case.label is not None:
                metrics = segmentation_metrics(out.probabilities.argmax(0).cpu().numpy() > 0,
                                               np.asarray(case.label) > 0, plan.target_spacing)
                row.update({"dice": metrics["dice"], "hd95": metrics["hd95"]})
            rows.append(row)
        return rows

    def validate(self, model, cases, plan, config, device):
        rows = self.case_rows(model, cases, plan, config, device)
        metrics = _summary_metrics(rows)
        parts = [metrics[k] for k in ("val_dice", "val_grade_auc", "val_c_index") if not np.isnan(metrics[k])]
        # the checkpoint score: the mean of the tasks' metrics, each on a 0-1 scale where 0.5 is chance
        # for AUC and C-index; a task with too few labelled validation cases does not count
        metrics["val_score"] = float(np.mean(parts)) if parts else float("nan")
        return metrics

    def finish(self, model, train_cases, val_cases, plan, config, device, fold_dir):
        cutoff = None
        if "survival" in self.tasks and train_cases:
            train_rows = self.case_rows(model, train_cases, plan, config, device)
            cutoff = float(np.median([r["log_risk"] for r in train_rows]))
        fold = int(fold_dir.name.split("_")[-1]) if fold_dir.name.split("_")[-1].isdigit() else None
        write_json(fold_dir / "task_state.json", {"method": self.method, "tasks": list(self.tasks),
                                                 "risk_cutoff": cutoff})
        if val_cases:
            rows = self.case_rows(model, val_cases, plan, config, device, fold=fold, risk_cutoff=cutoff)
            write_oof(rows, fold_dir / "oof_predictions.csv")


def _summary_metrics(rows: list[dict[str, Any]]) -> dict[str, float]:
    dice = [r["dice"] for r in rows if r.get("dice") is not None]
    graded = [r for r in rows if r.get("grade_true") and r.get("p_low") is not None]
    auc = float("nan")
    if len({r["grade_true"] for r in graded}) > 1:
        y = np.array([GRADES.index(r["grade_true"]) for r in graded])
        proba = np.array([[r["p_low"], r["p_intermediate"], r["p_high"]] for r in graded])
        auc = macro_ovr_auc(y, proba)
    surv = [r for r in rows if r.get("log_risk") is not None and r.get("time") is not None]
    c_index = float("nan")
    if surv and sum(r["event"] for r in surv) > 0:
        c_index = harrell_c_index([r["time"] for r in surv], [r["event"] for r in surv],
                                  [r["log_risk"] for r in surv])
    return {"val_dice": float(np.mean(dice)) if dice else float("nan"), "val_grade_auc": auc,
            "val_c_index": c_index}


def write_oof(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write out-of-fold rows as CSV with the standard columns (empty where a task was not predicted)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(OOF_COLUMNS), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in OOF_COLUMNS})
    return write_text(path, buffer.getvalue())


register_task("multitask", MultiTaskTask)
