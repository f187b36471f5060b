"""Training the automatic segmentation model from scribbles alone (weak supervision).

A radiologist's scribbles are cheap labels: a stroke inside the tumour and a loop around it on a few
slices label well under 1% of the voxels. This task trains the same network as
:class:`~sarcomakit.tasks.segmentation.SegmentationTask` from such scribbles only, in one of two ways:

- ``partial``: cross-entropy on the scribbled voxels alone (the partial cross-entropy of scribble-supervised
  segmentation, Tang et al. 2018; Lin et al., ScribbleSup 2016), optionally with a total-variation penalty
  on the tumour probability (``tv_weight``) that favours compact, smooth masks where nothing is labelled;
- ``random_walker``: the scribbles seed a random walker on the training image (the classical interactive
  baseline, :class:`~sarcomakit.interactive.classical.RandomWalkerModel`), whose mask becomes a dense
  pseudo-label trained with Dice + cross-entropy, as in Grady's random-walker pseudo-labelling.

The scribbles of a case are those the simulated annotator (:class:`~sarcomakit.interactive.robot.RobotUser`)
draws on the case's reference mask on ``scribble_slices`` slices (a tumour stroke and a background loop
each), seeded by the case id, so every arm of a comparison and every fold sees the same scribbles of a
case. The reference mask is used for nothing else in training; validation still scores the full masks of
the validation cases (set ``checkpoint_selection: last`` for a run in which no full mask is seen at all).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.classical import RandomWalkerModel
from sarcomakit.interactive.prompts import Prompt, rasterize_prompts
from sarcomakit.interactive.robot import RobotConfig, RobotUser
from sarcomakit.interactive.roi import Roi
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import LossOutput, Objective
from sarcomakit.tasks.patches import CaseVolume, PatchDataset
from sarcomakit.tasks.segmentation import SegmentationObjective, SegmentationTask

#: values of a scribble label map
UNLABELLED, BACKGROUND, TUMOUR = 0, 1, 2


def case_scribbles(reference: np.ndarray, case_id: str, n_slices: int, seed: int = 0) -> list[Prompt]:
    """The simulated annotator's first-round scribbles of ``reference`` on ``n_slices`` slices (random planes),
    the same for a given case id and seed."""
    robot = RobotUser(RobotConfig(plane="random"), seed=zlib.crc32(case_id.encode()) + 7919 * seed)
    prompts: list[Prompt] = []
    for _ in range(n_slices):
        prompts += robot.initial_prompts(reference)
    return prompts


def scribble_label_map(prompts: Sequence[Prompt], shape: Sequence[int]) -> np.ndarray:
    """``(Z, Y, X)`` uint8: :data:`TUMOUR` and :data:`BACKGROUND` on scribbled voxels, :data:`UNLABELLED` elsewhere."""
    positive, negative = rasterize_prompts(prompts, shape)
    labels = np.full(tuple(shape), UNLABELLED, dtype=np.uint8)
    labels[negative] = BACKGROUND
    labels[positive] = TUMOUR
    return labels


def random_walker_pseudo_label(data: np.ndarray, prompts: Sequence[Prompt], spacing: Sequence[float],
                               margin: float = 0.5) -> np.ndarray:
    """A dense 0/1 mask grown from the scribbles by a random walker, in a box around them enlarged by
    ``margin`` of its size on each side (outside it: background)."""
    shape = data.shape[1:]
    voxels = np.concatenate([p.covered_voxels() for p in prompts])
    box = Roi.around(voxels)
    roi = box.expand([int(np.ceil(margin * s)) + 2 for s in box.shape], shape)
    mask = np.zeros(shape, dtype=np.uint8)
    mask[roi.slices] = RandomWalkerModel().predict(data, prompts, None, roi, spacing=spacing)
    return mask


def total_variation(probability: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring voxels of a ``(B, Z, Y, X)`` map (anisotropic TV)."""
    return torch.stack([torch.diff(probability, dim=d).abs().mean() for d in (1, 2, 3)]).sum()


class PartialCrossEntropy(Objective):
    """Cross-entropy on scribbled voxels only, plus ``tv_weight`` times the total variation of the tumour
    probability over the whole patch."""

    def __init__(self, tv_weight: float = 0.0) -> None:
        super().__init__()
        self.tv_weight = float(tv_weight)

    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        logits = model(batch["image"].to(device, non_blocking=True))
        target = batch["label"].to(device, non_blocking=True)[:, 0].long() - 1  # unlabelled -> -1, ignored
        # a patch without scribbles teaches nothing but smoothness
        labelled = bool((target >= 0).any())
        ce = F.cross_entropy(logits, target, ignore_index=-1) if labelled else logits.sum() * 0.0
        parts = {"partial_ce": float(ce.detach())}
        total = ce
        if self.tv_weight > 0:
            tv = total_variation(torch.softmax(logits, dim=1)[:, 1:].sum(1))
            parts["tv"] = float(tv.detach())
            total = total + self.tv_weight * tv
        return LossOutput(total, parts)


class ScribbleSegmentationTask(SegmentationTask):
    """Segmentation trained from scribbles alone (partial cross-entropy, or random-walker pseudo-labels).

    Args:
        mode: partial (cross-entropy on scribbled voxels) or random_walker (dense pseudo-labels grown from the
            scribbles, trained with Dice + cross-entropy).
        scribble_slices: slices scribbled per training case (each: a tumour stroke and a background loop,
            drawn by the simulated annotator in a random plane).
        tv_weight: weight of the total-variation penalty on the tumour probability (partial mode).
    """

    name = "scribble_segmentation"

    def __init__(self, manifest: Any = None, *, mode: Literal["partial", "random_walker"] = "partial",
                 scribble_slices: int = 3, tv_weight: float = 0.0) -> None:
        super().__init__(manifest)
        if mode not in ("partial", "random_walker"):
            raise UserInputError(f"unknown scribble training mode '{mode}'.", fix="use partial or random_walker.")
        if scribble_slices < 1:
            raise UserInputError(f"scribble_slices must be at least 1, got {scribble_slices}.")
        if tv_weight < 0:
            raise UserInputError(f"tv_weight must be >= 0, got {tv_weight}.")
        self.mode = mode
        self.scribble_slices = int(scribble_slices)
        self.tv_weight = float(tv_weight)
        self.labelled_fraction = float("nan")

    def weak_labels(self, case: PreprocessedCase, plan: Plan, seed: int) -> tuple[np.ndarray, float]:
        """The training label of a case (its scribble map, or the random walker's mask grown from it) and the
        fraction of its voxels the scribbles label."""
        if case.label is None:
            raise UserInputError(f"case {case.case_id} has no mask to draw scribbles from.",
                                 fix="give every training case a label.")
        reference = np.asarray(case.label) > 0
        if not reference.any():  # nothing to scribble: the case teaches nothing in partial mode
            return np.zeros(reference.shape, dtype=np.uint8), 0.0
        prompts = case_scribbles(reference, case.case_id, self.scribble_slices, seed)
        scribbles = scribble_label_map(prompts, reference.shape)
        fraction = float(np.mean(scribbles != UNLABELLED))
        if self.mode == "partial":
            return scribbles, fraction
        return random_walker_pseudo_label(np.asarray(case.data), prompts, plan.target_spacing), fraction

    def training_data(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                      length: int) -> torch.utils.data.Dataset:
        volumes, fractions = [], []
        for i, case in enumerate(cases):
            weak, fraction = self.weak_labels(case, plan, config.seed)
            fractions.append(fraction)
            # partial mode: oversample around the tumour scribbles, not the background loop
            volumes.append(CaseVolume(replace(case, label=weak), seed=config.seed + i,
                                      foreground_mask=weak == TUMOUR if self.mode == "partial" else None))
        self.labelled_fraction = float(np.mean(fractions))
        return PatchDataset(volumes, config.patch_size or plan.patch_size, length,
                            foreground_fraction=config.foreground_fraction, augmentation=config.augmentation,
                            seed=config.seed)

    def objective(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig) -> Objective:
        return PartialCrossEntropy(self.tv_weight) if self.mode == "partial" else SegmentationObjective()

    def finish(self, model: nn.Module, train_cases: Sequence[PreprocessedCase],
               val_cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig, device: torch.device,
               fold: int, fold_dir: Any) -> dict[str, Any]:
        """The fold's state records the supervision used: the fraction of training voxels scribbled."""
        return {"mode": self.mode, "scribble_slices": self.scribble_slices,
                "labelled_voxel_fraction": self.labelled_fraction}
