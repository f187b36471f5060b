"""Voxel-wise segmentation: Dice + cross-entropy on sampled patches, validated by Dice, predicted by sliding window."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sarcomakit.evaluation.metrics import dice
from sarcomakit.inference.sliding_window import predict_volume
from sarcomakit.losses.segmentation import dice_ce_loss
from sarcomakit.models import build_network
from sarcomakit.models.preprocessing_layers.base import input_layer_losses
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import CaseOutput, LossOutput, Objective, Task, TaskRequirements, case_tensor
from sarcomakit.tasks.patches import CaseVolume, PatchDataset


def segmentation_dice(prediction: np.ndarray, reference: np.ndarray, n_classes: int) -> list[float]:
    """Dice per foreground class of two label maps (1.0 when a class is absent from both)."""
    return [dice(prediction == k, reference == k) for k in range(1, n_classes)]


class SegmentationObjective(Objective):
    """Dice + cross-entropy of the network's logits against the patch labels, plus the auxiliary losses of
    the network's input layers (e.g. a ROI crop's weak box loss), logged by name."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = dice_ce_loss()

    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        logits = model(batch["image"].to(device, non_blocking=True))
        label = batch["label"].to(device, non_blocking=True)
        total = self.loss(logits, label)
        auxiliary = input_layer_losses(model, label)
        for value in auxiliary.values():
            total = total + value
        return LossOutput(total, {name: float(value.detach()) for name, value in auxiliary.items()})


def patch_dataset(cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig, length: int) -> PatchDataset:
    """The configured patch sampler (foreground oversampling, augmentation) over labelled cases."""
    volumes = [CaseVolume(c, seed=config.seed + i) for i, c in enumerate(cases)]
    return PatchDataset(volumes, config.patch_size or plan.patch_size, length,
                        foreground_fraction=config.foreground_fraction, augmentation=config.augmentation,
                        seed=config.seed)


class SegmentationTask(Task):
    """Voxel-wise segmentation with Dice + cross-entropy; validated by Dice in the preprocessed space.

    It takes no options: the network, patch, sampling and augmentation are training options.
    """

    name = "segmentation"
    score_name = "val_dice"
    requirements = TaskRequirements(needs_labels=True, allow_missing_channels=False, stratify_clinical=False)

    def build_model(self, plan: Plan, config: TrainConfig) -> nn.Module:
        return build_network(config.network, in_channels=len(plan.channels), out_channels=len(plan.labels),
                             patch_size=config.patch_size or plan.patch_size, **config.network_options)

    def training_data(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                      length: int) -> torch.utils.data.Dataset:
        return patch_dataset(cases, plan, config, length)

    def objective(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig) -> Objective:
        return SegmentationObjective()

    def validate(self, model: nn.Module, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                 device: torch.device) -> dict[str, float]:
        model.eval()
        scores: list[float] = []
        for case in cases:
            output = self.infer(model, case, plan, config, device, overlap=config.sw_overlap)
            assert output.probabilities is not None
            scores += segmentation_dice(output.probabilities.argmax(0).cpu().numpy(), np.asarray(case.label),
                                        len(plan.labels))
        return {"val_dice": float(np.mean(scores)) if scores else float("nan")}

    def infer(self, model: nn.Module, case: PreprocessedCase, plan: Plan, config: TrainConfig,
              device: torch.device, *, overlap: float, mirror_axes: Sequence[int] = ()) -> CaseOutput:
        probabilities = predict_volume(model, case_tensor(case, device), config.patch_size or plan.patch_size,
                                       overlap=overlap, sw_batch_size=config.sw_batch_size,
                                       mirror_axes=mirror_axes, amp=config.amp)
        return CaseOutput(probabilities=probabilities)
