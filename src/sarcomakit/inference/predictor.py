"""Predict masks with a trained run: fold ensemble, mirroring, restore to the input geometry, write NIfTI."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from rich.console import Console
from scipy import ndimage

from sarcomakit.core import distributed
from sarcomakit.core.cohort_runner import CohortResult, run_per_case
from sarcomakit.core.device import select_device
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text
from sarcomakit.core.io.image import array_to_image, read_image, write_image
from sarcomakit.data.manifest import Case
from sarcomakit.inference.inputs import cases_from_input
from sarcomakit.inference.prediction_record import PredictionRecord, model_key
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import preprocess_case, restore_to_input_geometry
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.runs.folder import RunFolder
from sarcomakit.tasks import Task, build_task


@dataclass
class Prediction:
    """A case's predicted mask on its input grid, the class probabilities (K, z, y, x) there, and the task's
    case-level row (e.g. grade probabilities and log-risk of a multi-task run; only ``case_id`` otherwise)."""

    case_id: str
    mask: sitk.Image
    probabilities: np.ndarray
    row: dict[str, Any] = field(default_factory=dict)


class Predictor:
    """The models of a run, ready to predict cases (load once, predict many). What a case's prediction holds
    beyond its mask is the run's task's business (:meth:`~sarcomakit.tasks.base.Task.infer`, ``combine``,
    ``case_row``)."""

    def __init__(self, plan: Plan, config: TrainConfig, task: Task, models: Sequence[torch.nn.Module],
                 device: torch.device, *, fold_states: Sequence[dict[str, Any]] = (), mirror: bool = False,
                 overlap: float | None = None, largest_component: bool = False) -> None:
        self.plan = plan
        self.config = config
        self.task = task
        self.models = list(models)
        self.fold_states = list(fold_states) or [{} for _ in self.models]
        self.largest_component = largest_component
        self.device = device
        self.mirror_axes = (0, 1, 2) if mirror else ()
        self.overlap = config.sw_overlap if overlap is None else overlap
        self.checkpoints: list[Path] = []  # the files the models were loaded from (set by from_run)

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
        task = build_task(config)
        models, states = [], []
        for fold in chosen:
            state_file = available[fold].parent / "task_state.json"
            states.append(json.loads(state_file.read_text(encoding="utf-8")) if state_file.is_file() else {})
            state = load_checkpoint(available[fold], map_location=torch_device)
            model = task.build_model(plan, config).to(torch_device)
            model.load_state_dict(state["model"])
            model.eval()
            models.append(model)
        predictor = cls(plan, config, task, models, torch_device, fold_states=states, mirror=mirror,
                        overlap=overlap, largest_component=largest_component)
        predictor.checkpoints = [available[fold] for fold in chosen]
        return predictor

    def output_key(self) -> str:
        """What identifies the masks this predictor makes: its checkpoints and the options that change them."""
        return model_key(self.checkpoints, {"mirror_axes": list(self.mirror_axes), "overlap": self.overlap,
                                            "largest_component": self.largest_component})

    def predict_case(self, case: Case) -> Prediction:
        """Preprocess with the plan, combine the ensemble's outputs, restore to the input geometry."""
        images = {ch: read_image(case.images[ch]) for ch in self.plan.channels if ch in case.images}
        pre = preprocess_case(images, self.plan, case_id=case.case_id,
                              allow_missing_channels=self.task.requirements.allow_missing_channels)
        with torch.no_grad():
            outputs = [self.task.infer(model, pre, self.plan, self.config, self.device, overlap=self.overlap,
                                       mirror_axes=self.mirror_axes) for model in self.models]
        combined = self.task.combine(outputs, self.fold_states)
        if combined.probabilities is None:
            raise UserInputError(f"the run's task '{self.task.name}' does not segment.",
                                 fix="predict with a segmentation or multi-task run.")
        restored = restore_to_input_geometry(combined.probabilities.cpu().numpy(), pre)
        reference = next(iter(images.values()))
        labels = restored.argmax(0).astype(np.uint8)
        if self.largest_component:
            labels = keep_largest_component(labels)
        return Prediction(case_id=case.case_id, mask=array_to_image(labels, reference),
                          probabilities=restored.astype(np.float32),
                          row=self.task.case_row(case.case_id, combined))


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
    mask exists are skipped unless ``overwrite``, if this model made it from the same input
    (:mod:`~sarcomakit.inference.prediction_record`); a folder holding masks made otherwise is refused. A failing
    case is reported and the others are predicted.
    """
    distributed.init_from_environment(device)
    predictor = Predictor.from_run(run_dir, folds=folds, checkpoint=checkpoint, device=device, mirror=mirror,
                                   largest_component=largest_component)
    task = predictor.task
    cases = cases_from_input(source, predictor.plan.channels, allow_missing=task.requirements.allow_missing_channels)
    out = Path(out_dir)
    record = PredictionRecord(out, predictor.output_key(), predictor.plan.channels,
                              mask_name=lambda case_id: prediction_path(out, case_id).name)
    if not overwrite:
        record.check_folder(cases)
    out.mkdir(parents=True, exist_ok=True)
    # under torchrun each process predicts every world_size-th case and writes its own part of the table
    cases = distributed.shard(cases)

    final_table = out / task.case_table
    table_path = final_table if distributed.world_size() == 1 else \
        out / f"{final_table.stem}.part{distributed.rank()}{final_table.suffix}"
    table = _read_rows(final_table) if task.case_columns and not overwrite else {}

    def one(case: Case) -> Path:
        prediction = predictor.predict_case(case)
        if task.case_columns:
            table[case.case_id] = prediction.row
            _write_rows(table, table_path, task.case_columns)
        if save_probabilities:
            probs = np.moveaxis(prediction.probabilities, 0, -1)
            image = sitk.GetImageFromArray(np.ascontiguousarray(probs), isVector=True)
            image.CopyInformation(prediction.mask)
            write_image(image, out / f"{case.case_id}_probabilities.nii.gz")
        written = write_image(prediction.mask, prediction_path(out, case.case_id))
        record.save(case)
        return written

    def done(case: Case) -> bool:
        extra = [out / f"{case.case_id}_probabilities.nii.gz"] if save_probabilities else []
        return record.is_current(case, also=extra)

    result = run_per_case(cases, one, name=lambda c: c.case_id, description="predicting",
                          is_done=None if overwrite else done, console=console)
    if task.case_columns and distributed.world_size() > 1:
        distributed.barrier()
        if distributed.is_main():
            merged = {**table}
            for part in sorted(out.glob(f"{final_table.stem}.part*{final_table.suffix}")):
                merged.update(_read_rows(part))
            _write_rows(merged, final_table, task.case_columns)
            for part in out.glob(f"{final_table.stem}.part*{final_table.suffix}"):
                part.unlink()
    return result


def _read_rows(path: Path) -> dict[str, dict[str, object]]:
    if not path.is_file():
        return {}
    with path.open(newline="", encoding="utf-8") as handle:
        return {row["case_id"]: row for row in csv.DictReader(handle)}


def _write_rows(rows: dict[str, dict[str, object]], path: Path, columns: Sequence[str]) -> None:
    """The task's per-case table (rewritten after each case, so an interrupted run keeps what it predicted)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for case_id in sorted(rows):
        writer.writerow(rows[case_id])
    write_text(path, buffer.getvalue())
