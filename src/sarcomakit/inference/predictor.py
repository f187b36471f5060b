"""Predict masks with a trained run: fold ensemble, mirroring, restore to the input geometry, write NIfTI."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from rich.console import Console
from scipy import ndimage

from sarcomakit.cohort_runner import CohortResult, run_per_case
from sarcomakit.data.manifest import GRADES, Case
from sarcomakit.errors import UserInputError
from sarcomakit.inference.case_level import predict_case_outputs
from sarcomakit.inference.inputs import cases_from_input
from sarcomakit.inference.sliding_window import predict_volume
from sarcomakit.io.atomic import write_text
from sarcomakit.io.image import array_to_image, read_image, write_image
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import preprocess_case, restore_to_input_geometry
from sarcomakit.training.checkpoint import load_checkpoint
from sarcomakit.training.config import TrainConfig
from sarcomakit.training.engine import build_model, select_device
from sarcomakit.training.multitask import channel_availability
from sarcomakit.training.run import RunFolder


@dataclass
class Prediction:
    """A case's predicted mask on its input grid, the class probabilities (K, z, y, x), and for a
    multi-task run the grade probabilities (low, intermediate, high), the log-risk and its risk group."""

    case_id: str
    mask: sitk.Image
    probabilities: np.ndarray
    grade_probabilities: np.ndarray | None = None
    log_risk: float | None = None
    risk_group: str | None = None

    def clinical_row(self) -> dict[str, object]:
        row: dict[str, object] = {"case_id": self.case_id}
        if self.grade_probabilities is not None:
            p = self.grade_probabilities
            row.update({"p_low": float(p[0]), "p_intermediate": float(p[1]), "p_high": float(p[2]),
                        "grade_pred": GRADES[int(np.argmax(p))]})
        if self.log_risk is not None:
            row.update({"log_risk": self.log_risk, "risk_group": self.risk_group})
        return row


class Predictor:
    """The models of a run, ready to predict cases (load once, predict many)."""

    def __init__(self, plan: Plan, config: TrainConfig, models: Sequence[torch.nn.Module], device: torch.device,
                 *, mirror: bool = False, overlap: float | None = None, risk_cutoff: float | None = None,
                 largest_component: bool = False) -> None:
        self.plan = plan
        self.config = config
        self.models = list(models)
        self.multitask = config.task == "multitask"
        self.largest_component = largest_component
        self.risk_cutoff = risk_cutoff
        self.device = device
        self.mirror_axes = (0, 1, 2) if mirror else ()
        self.overlap = config.sw_overlap if overlap is None else overlap

    @classmethod
    def from_run(cls, run_dir: str | Path, *, folds: Sequence[int] | None = None, checkpoint: str = "best",
                 device: str = "auto", mirror: bool = False, overlap: float | None = None,
                 largest_component: bool = False) -> Predictor:
        """Load the given folds (default: every trained fold, an ensemble) of a run folder."""
        run = RunFolder.open(run_dir)
        plan, config = run.plan(), run.config()
        available = run.trained_folds(checkpoint)
        chosen = sorted(available) if folds is None else list(folds)
        missing = [f for f in chosen if f not in available]
        if not available or missing:
            raise UserInputError(f"no checkpoint_{checkpoint}.pt for fold(s) {missing or 'any'}.", path=run.root,
                                 fix="train those folds first, or choose among "
                                     f"{sorted(available) or 'none'}.")
        torch_device = select_device(device)
        models, cutoffs = [], []
        for fold in chosen:
            state_file = available[fold].parent / "task_state.json"
            if state_file.is_file():
                cutoff = json.loads(state_file.read_text()).get("risk_cutoff")
                if cutoff is not None:
                    cutoffs.append(cutoff)
            state = load_checkpoint(available[fold], map_location=torch_device)
            model = build_model(plan, config).to(torch_device)
            model.load_state_dict(state["model"])
            model.eval()
            models.append(model)
        # the ensemble's log-risk is the folds' mean, so its cut-off is the mean of theirs
        return cls(plan, config, models, torch_device, mirror=mirror, overlap=overlap,
                   risk_cutoff=float(np.mean(cutoffs)) if cutoffs else None, largest_component=largest_component)

    def predict_case(self, case: Case) -> Prediction:
        """Preprocess with the plan, average the ensemble's outputs, restore to the input geometry."""
        images = {ch: read_image(case.images[ch]) for ch in self.plan.channels if ch in case.images}
        pre = preprocess_case(images, self.plan, case_id=case.case_id, allow_missing_channels=self.multitask)
        available = torch.from_numpy(channel_availability(pre, self.plan.channels))
        volume = torch.from_numpy(np.ascontiguousarray(pre.data)).to(self.device)
        patch = self.config.patch_size or self.plan.patch_size
        options = {"overlap": self.overlap, "sw_batch_size": self.config.sw_batch_size,
                   "mirror_axes": self.mirror_axes, "amp": self.config.amp}
        probabilities, grades, risks = [], [], []
        for model in self.models:
            if self.multitask:
                out = predict_case_outputs(model, volume, patch, available=available, **options)
                probabilities.append(out.probabilities)
                grades.append(out.grade_probabilities)
                risks.append(out.log_risk)
            else:
                probabilities.append(predict_volume(model, volume, patch, **options))
        mean_probabilities = (sum(probabilities) / len(probabilities)).cpu().numpy()
        restored = restore_to_input_geometry(mean_probabilities, pre)
        reference = next(iter(images.values()))
        labels = restored.argmax(0).astype(np.uint8)
        if self.largest_component:
            labels = keep_largest_component(labels)
        mask = array_to_image(labels, reference)
        prediction = Prediction(case_id=case.case_id, mask=mask, probabilities=restored.astype(np.float32))
        if self.multitask:
            prediction.grade_probabilities = np.mean(grades, axis=0)
            prediction.log_risk = float(np.mean(risks))
            if self.risk_cutoff is not None:
                prediction.risk_group = "high" if prediction.log_risk > self.risk_cutoff else "low"
        return prediction


def keep_largest_component(labels: np.ndarray) -> np.ndarray:
    """Keep, for each foreground class, only its largest 26-connected component (others become background).

    nnU-Net applies this post-processing when it improves validation Dice; for one tumour per case
    it removes stray islands (vessels, fluid) the network mistook for tumour.
    """
    out = labels.copy()
    for value in np.unique(labels):
        if value == 0:
            continue
        components, count = ndimage.label(labels == value, structure=np.ones((3, 3, 3), bool))
        if count > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


def prediction_path(out_dir: Path, case_id: str) -> Path:
    return out_dir / f"{case_id}.nii.gz"


def predict(run_dir: str | Path, source: str | Path, out_dir: str | Path, *, folds: Sequence[int] | None = None,
            checkpoint: str = "best", mirror: bool = False, save_probabilities: bool = False,
            largest_component: bool = False, overwrite: bool = False, device: str = "auto",
            console: Console | None = None) -> CohortResult[Path]:
    """Predict every case of ``source`` (manifest, folder or one case) into ``out_dir``.

    Writes ``{case_id}.nii.gz`` masks on each input's exact grid and, with ``save_probabilities``,
    ``{case_id}_probabilities.nii.gz`` (one component per class); a multi-task run also writes
    ``clinical_predictions.csv`` (grade probabilities, predicted grade, log-risk, risk group). Cases whose
    mask exists are skipped unless ``overwrite``; a failing case is reported and the others are predicted.
    """
    predictor = Predictor.from_run(run_dir, folds=folds, checkpoint=checkpoint, device=device, mirror=mirror,
                                   largest_component=largest_component)
    cases = cases_from_input(source, predictor.plan.channels, allow_missing=predictor.multitask)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    clinical_path = out / "clinical_predictions.csv"
    clinical = _read_rows(clinical_path) if predictor.multitask and not overwrite else {}

    def one(case: Case) -> Path:
        prediction = predictor.predict_case(case)
        if predictor.multitask:
            clinical[case.case_id] = prediction.clinical_row()
            _write_rows(clinical, clinical_path)
        if save_probabilities:
            probs = np.moveaxis(prediction.probabilities, 0, -1)
            image = sitk.GetImageFromArray(np.ascontiguousarray(probs), isVector=True)
            image.CopyInformation(prediction.mask)
            write_image(image, out / f"{case.case_id}_probabilities.nii.gz")
        return write_image(prediction.mask, prediction_path(out, case.case_id))

    result = run_per_case(cases, one, name=lambda c: c.case_id, description="predicting",
                          is_done=None if overwrite else (lambda c: prediction_path(out, c.case_id).exists()),
                          console=console)
    return result


def _read_rows(path: Path) -> dict[str, dict[str, object]]:
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def _write_rows(rows: dict[str, dict[str, object]], path: Path) -> None:
    """Per-case grade probabilities, predicted grade, log-risk and risk group (rewritten after each case)."""
    columns = ["case_id", "p_low", "p_intermediate", "p_high", "grade_pred", "log_risk", "risk_group"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for case_id in sorted(rows):
        writer.writerow(rows[case_id])
    write_text(path, buffer.getvalue())
