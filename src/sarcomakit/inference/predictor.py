"""Predict masks with a trained run: fold ensemble, mirroring, restore to the input geometry, write NIfTI."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from rich.console import Console

from sarcomakit.cohort_runner import CohortResult, run_per_case
from sarcomakit.data.manifest import Case
from sarcomakit.errors import UserInputError
from sarcomakit.inference.inputs import cases_from_input
from sarcomakit.inference.sliding_window import predict_volume
from sarcomakit.io.image import array_to_image, read_image, write_image
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import preprocess_case, restore_to_input_geometry
from sarcomakit.training.checkpoint import load_checkpoint
from sarcomakit.training.config import TrainConfig
from sarcomakit.training.engine import build_model, select_device
from sarcomakit.training.run import RunFolder


@dataclass
class Prediction:
    """A case's predicted mask on its input grid, and the class probabilities (K, z, y, x)."""

    case_id: str
    mask: sitk.Image
    probabilities: np.ndarray


class Predictor:
    """The models of a run, ready to predict cases (load once, predict many)."""

    def __init__(self, plan: Plan, config: TrainConfig, models: Sequence[torch.nn.Module], device: torch.device,
                 *, mirror: bool = False, overlap: float | None = None) -> None:
        self.plan = plan
        self.config = config
        self.models = list(models)
        self.device = device
        self.mirror_axes = (0, 1, 2) if mirror else ()
        self.overlap = config.sw_overlap if overlap is None else overlap

    @classmethod
    def from_run(cls, run_dir: str | Path, *, folds: Sequence[int] | None = None, checkpoint: str = "best",
                 device: str = "auto", mirror: bool = False, overlap: float | None = None) -> Predictor:
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
        models = []
        for fold in chosen:
            state = load_checkpoint(available[fold], map_location=torch_device)
            model = build_model(plan, config).to(torch_device)
            model.load_state_dict(state["model"])
            model.eval()
            models.append(model)
        return cls(plan, config, models, torch_device, mirror=mirror, overlap=overlap)

    def predict_case(self, case: Case) -> Prediction:
        """Preprocess with the plan, average the ensemble's softmax, restore to the input geometry."""
        images = {ch: read_image(case.images[ch]) for ch in self.plan.channels}
        pre = preprocess_case(images, self.plan)
        volume = torch.from_numpy(np.ascontiguousarray(pre.data)).to(self.device)
        patch = self.config.patch_size or self.plan.patch_size
        total = None
        for model in self.models:
            probs = predict_volume(model, volume, patch, overlap=self.overlap,
                                   sw_batch_size=self.config.sw_batch_size, mirror_axes=self.mirror_axes,
                                   amp=self.config.amp)
            total = probs if total is None else total + probs
        probabilities = (total / len(self.models)).cpu().numpy()
        restored = restore_to_input_geometry(probabilities, pre)
        reference = images[self.plan.channels[0]]
        mask = array_to_image(restored.argmax(0).astype(np.uint8), reference)
        return Prediction(case_id=case.case_id, mask=mask, probabilities=restored.astype(np.float32))


def prediction_path(out_dir: Path, case_id: str) -> Path:
    return out_dir / f"{case_id}.nii.gz"


def predict(run_dir: str | Path, source: str | Path, out_dir: str | Path, *, folds: Sequence[int] | None = None,
            checkpoint: str = "best", mirror: bool = False, save_probabilities: bool = False,
            overwrite: bool = False, device: str = "auto", console: Console | None = None) -> CohortResult[Path]:
    """Predict every case of ``source`` (manifest, folder or one case) into ``out_dir``.

    Writes ``{case_id}.nii.gz`` masks on each input's exact grid and, with ``save_probabilities``,
    ``{case_id}_probabilities.nii.gz`` (one component per class). Cases whose mask exists are
    skipped unless ``overwrite``; a failing case is reported and the others are predicted.
    """
    predictor = Predictor.from_run(run_dir, folds=folds, checkpoint=checkpoint, device=device, mirror=mirror)
    cases = cases_from_input(source, predictor.plan.channels)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def one(case: Case) -> Path:
        prediction = predictor.predict_case(case)
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
