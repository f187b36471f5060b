"""The multi-task task: segmentation, histological grade and survival from the same scans.

Each training patch carries its case's labels; a case lacking a label for a task contributes
only to the tasks it has (see :mod:`sarcomakit.losses.multitask`). The Cox loss of a
batch of one or two cases is computed against a memory of recent cases' risks. Modality dropout
zero-fills one present channel of a patch with probability ``modality_dropout`` and clears its
availability flag, so that the model copes with a missing modality at test time. Single-task
ablations are the same network trained on a subset of ``tasks``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import GRADES, Manifest
from sarcomakit.evaluation.classification import macro_ovr_auc
from sarcomakit.evaluation.metrics import segmentation_metrics
from sarcomakit.evaluation.oof import write_oof
from sarcomakit.evaluation.survival import harrell_c_index
from sarcomakit.inference.case_level import predict_case_outputs
from sarcomakit.losses.cox import CoxRiskMemory
from sarcomakit.losses.grade import balanced_class_weights
from sarcomakit.losses.multitask import MultiTaskLoss
from sarcomakit.losses.weighting import FixedWeighting, UncertaintyWeighting
from sarcomakit.models.multitask import build_multitask_network
from sarcomakit.models.preprocessing_layers.base import input_layer_losses
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import (
    CaseOutput,
    LossOutput,
    Objective,
    Task,
    TaskRequirements,
    case_tensor,
    channel_availability,
)
from sarcomakit.tasks.patches import PatchDataset
from sarcomakit.tasks.segmentation import patch_dataset

log = logging.getLogger(__name__)
ALL_TASKS = ("segmentation", "grade", "survival")
#: what prediction writes per case (``clinical_predictions.csv``)
CLINICAL_COLUMNS = ("case_id", "p_low", "p_intermediate", "p_high", "grade_pred", "log_risk", "risk_group")


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

    def __init__(self, patches: PatchDataset, cases: Sequence[PreprocessedCase],
                 targets: ClinicalTargets, channels: Sequence[str], modality_dropout: float) -> None:
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


class MultiTaskObjective(Objective):
    """The partial-label multi-task loss of the chosen tasks; its learnt weights are optimised with the network and
    its Cox risk memory is part of its state (so a resumed run continues with it)."""

    def __init__(self, tasks: Sequence[str], weighting: nn.Module, memory: CoxRiskMemory,
                 grade_class_weights: torch.Tensor | None, ordinal: bool) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.memory = memory
        self.loss = MultiTaskLoss(weighting, grade_class_weights=grade_class_weights, ordinal=ordinal,
                                  cox_memory=memory)

    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        outputs = model(batch["image"].to(device, non_blocking=True), batch["available"].to(device))
        keep = {"segmentation": "segmentation", "grade": "grade", "survival": "log_risk"}
        outputs = {keep[t]: outputs[keep[t]] for t in self.tasks}
        targets = {"segmentation": batch["label"].to(device, non_blocking=True), "grade": batch["grade"].to(device),
                   "survival_time": batch["survival_time"].to(device), "event": batch["event"].to(device),
                   "case_ids": list(batch["case_id"])}
        result = self.loss(outputs, targets)
        logged = {f"loss_{name}": float(value.detach()) for name, value in result.losses.items()
                  if name not in result.skipped}
        total = result.total
        for name, value in input_layer_losses(model, targets["segmentation"]).items():
            total = total + value
            logged[name] = float(value.detach())
        return LossOutput(total, logged)

    def get_extra_state(self) -> dict[str, Any]:
        return self.memory.state_dict()

    def set_extra_state(self, state: Any) -> None:
        self.memory.load_state_dict(state)


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

    name = "multitask"
    score_name = "val_score"
    requirements = TaskRequirements(needs_labels=True, allow_missing_channels=True, stratify_clinical=True)
    case_columns = CLINICAL_COLUMNS
    case_table = "clinical_predictions.csv"

    def __init__(self, manifest: Manifest | None = None, *, tasks: Sequence[str] = ALL_TASKS,
                 weighting: str = "fixed", weights: dict[str, float] | None = None, ordinal: bool = False,
                 mask_pooling: bool = True, modality_dropout: float = 0.2, cox_memory: int = 64,
                 method: str = "multitask") -> None:
        super().__init__(manifest)
        if isinstance(tasks, str):
            tasks = [t.strip() for t in tasks.split(",")]
        unknown = set(tasks) - set(ALL_TASKS)
        if unknown or not tasks:
            raise UserInputError(f"unknown task(s) {sorted(unknown) or 'none'}.",
                                 fix=f"choose among {', '.join(ALL_TASKS)}.")
        if weighting not in ("fixed", "uncertainty"):
            raise UserInputError(f"unknown loss weighting '{weighting}'.", fix="use fixed or uncertainty.")
        self.tasks = tuple(t for t in ALL_TASKS if t in tasks)
        self.targets = ClinicalTargets(manifest)
        self.weighting_kind = weighting
        self.weights = dict(weights or {})
        self.ordinal = ordinal
        self.mask_pooling = mask_pooling and "segmentation" in self.tasks
        self.modality_dropout = modality_dropout
        self.cox_memory = cox_memory
        self.method = method

    # ---------------------------------------------------------------- building
    def build_model(self, plan: Plan, config: TrainConfig) -> nn.Module:
        return build_multitask_network(config.network, in_channels=len(plan.channels),
                                       out_channels=len(plan.labels), patch_size=config.patch_size or plan.patch_size,
                                       ordinal=self.ordinal, mask_pooling=self.mask_pooling,
                                       **config.network_options)

    def training_data(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                      length: int) -> torch.utils.data.Dataset:
        self._warn_missing_labels(cases)
        return MultiTaskPatchDataset(patch_dataset(cases, plan, config, length), cases, self.targets, plan.channels,
                                     self.modality_dropout)

    def objective(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig) -> Objective:
        grades = [g for g in (self.targets.grade(c.case_id) for c in cases) if g >= 0]
        weighting: nn.Module = UncertaintyWeighting(list(self.tasks)) if self.weighting_kind == "uncertainty" \
            else FixedWeighting({t: self.weights.get(t, 1.0) for t in self.tasks})
        return MultiTaskObjective(self.tasks, weighting, CoxRiskMemory(size=self.cox_memory),
                                  balanced_class_weights(grades) if grades else None, self.ordinal)

    def _warn_missing_labels(self, cases: Sequence[PreprocessedCase]) -> None:
        ids = [c.case_id for c in cases]
        if "grade" in self.tasks and not any(self.targets.grade(i) >= 0 for i in ids):
            log.warning("no training case has a grade: the grade task is skipped")
        if "survival" in self.tasks:
            events = [self.targets.survival(i)[1] for i in ids]
            if not np.nansum(events):
                log.warning("no training case has an observed event: the survival task is skipped")

    # ---------------------------------------------------------------- validation and outputs
    def case_rows(self, model: nn.Module, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                  device: torch.device, fold: int | None = None,
                  risk_cutoff: float | None = None) -> list[dict[str, Any]]:
        """One out-of-fold row per case (columns :data:`~sarcomakit.evaluation.oof.OOF_COLUMNS`)."""
        rows = []
        for case in cases:
            out = self.infer(model, case, plan, config, device, overlap=config.sw_overlap)
            time, event = self.targets.survival(case.case_id)
            grade = self.targets.grade(case.case_id)
            row: dict[str, Any] = {"case_id": case.case_id, "method": self.method, "fold": fold,
                                   "grade_true": GRADES[grade] if grade >= 0 else None,
                                   "time": None if np.isnan(time) else time,
                                   "event": None if np.isnan(event) else int(event)}
            row.update({k: v for k, v in self._clinical_values(out, risk_cutoff).items()})
            if "risk_group" in row:
                row["train_risk_cutoff"] = risk_cutoff
            if "segmentation" in self.tasks and case.label is not None:
                assert out.probabilities is not None
                metrics = segmentation_metrics(out.probabilities.argmax(0).cpu().numpy() > 0,
                                               np.asarray(case.label) > 0, plan.target_spacing)
                row.update({"dice": metrics["dice"], "hd95": metrics["hd95"]})
            rows.append(row)
        return rows

    def _clinical_values(self, out: CaseOutput, risk_cutoff: float | None) -> dict[str, Any]:
        """Grade probabilities, predicted grade, log-risk and (with a cut-off) risk group of the trained tasks."""
        values: dict[str, Any] = {}
        if "grade" in self.tasks:
            p = np.asarray(out.values["grade_probabilities"], dtype=float)
            values.update({"p_low": float(p[0]), "p_intermediate": float(p[1]), "p_high": float(p[2]),
                           "grade_pred": GRADES[int(np.argmax(p))]})
        if "survival" in self.tasks:
            values["log_risk"] = float(out.values["log_risk"])
            if risk_cutoff is not None:
                values["risk_group"] = "high" if values["log_risk"] > risk_cutoff else "low"
        return values

    def validate(self, model: nn.Module, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                 device: torch.device) -> dict[str, float]:
        rows = self.case_rows(model, cases, plan, config, device)
        metrics = _summary_metrics(rows)
        parts = [metrics[k] for k in ("val_dice", "val_grade_auc", "val_c_index") if not np.isnan(metrics[k])]
        # the checkpoint score: the mean of the tasks' metrics, each on a 0-1 scale where 0.5 is chance
        # for AUC and C-index; a task with too few labelled validation cases does not count
        metrics["val_score"] = float(np.mean(parts)) if parts else float("nan")
        return metrics

    def finish(self, model: nn.Module, train_cases: Sequence[PreprocessedCase],
               val_cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig, device: torch.device,
               fold: int, fold_dir: Path) -> dict[str, Any]:
        cutoff = None
        if "survival" in self.tasks and train_cases:
            train_rows = self.case_rows(model, train_cases, plan, config, device)
            cutoff = float(np.median([r["log_risk"] for r in train_rows]))
        if val_cases:
            rows = self.case_rows(model, val_cases, plan, config, device, fold=fold, risk_cutoff=cutoff)
            write_oof(rows, fold_dir / "oof_predictions.csv")
        return {"method": self.method, "tasks": list(self.tasks), "risk_cutoff": cutoff}

    def infer(self, model: nn.Module, case: PreprocessedCase, plan: Plan, config: TrainConfig,
              device: torch.device, *, overlap: float, mirror_axes: Sequence[int] = ()) -> CaseOutput:
        out = predict_case_outputs(model, case_tensor(case, device), config.patch_size or plan.patch_size,
                                   available=torch.from_numpy(channel_availability(case, plan.channels)),
                                   overlap=overlap, sw_batch_size=config.sw_batch_size, mirror_axes=mirror_axes,
                                   amp=config.amp)
        return CaseOutput(probabilities=out.probabilities,
                          values={"grade_probabilities": out.grade_probabilities, "log_risk": out.log_risk})

    def combine(self, outputs: Sequence[CaseOutput], fold_states: Sequence[Mapping[str, Any]]) -> CaseOutput:
        combined = super().combine(outputs, fold_states)
        # the ensemble's log-risk is the folds' mean, so its cut-off is the mean of theirs
        cutoffs = [s["risk_cutoff"] for s in fold_states if s.get("risk_cutoff") is not None]
        combined.values["risk_cutoff"] = float(np.mean(cutoffs)) if cutoffs else None
        return combined

    def case_row(self, case_id: str, output: CaseOutput) -> dict[str, Any]:
        return {"case_id": case_id, **self._clinical_values(output, output.values.get("risk_cutoff"))}


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
