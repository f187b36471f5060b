"""Tasks: what a run optimises and how it is validated. The engine runs the loop for any task.

A task bundles a network, a patch dataset, a loss and a validation; new capabilities (multi-task
heads, self-supervised objectives) are new tasks, not flags in the loop.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from sarcomakit.data.manifest import Manifest
from sarcomakit.errors import UserInputError
from sarcomakit.evaluation.metrics import dice
from sarcomakit.inference.sliding_window import predict_volume
from sarcomakit.models import build_network
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.training.config import TrainConfig
from sarcomakit.training.patches import CaseVolume, PatchDataset


class Task:
    """Base class of training tasks (see the module docstring)."""

    #: key of the validation metric that selects the best checkpoint (higher is better)
    score_name = "val_score"

    def __init__(self, manifest: Manifest | None = None) -> None:
        #: the cohort, for tasks that need per-case clinical targets
        self.manifest = manifest

    def build_model(self, plan: Plan, config: TrainConfig) -> torch.nn.Module:
        raise NotImplementedError

    def dataset(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                length: int) -> torch.utils.data.Dataset:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor],
             device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise for one batch, and named parts to log."""
        raise NotImplementedError

    def validate(self, model: torch.nn.Module, cases: Sequence[PreprocessedCase], plan: Plan,
                 config: TrainConfig, device: torch.device) -> dict[str, float]:
        """Validation metrics, including :attr:`score_name`."""
        raise NotImplementedError

    def finish(self, model: torch.nn.Module, train_cases: Sequence[PreprocessedCase],
               val_cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig, device: torch.device,
               fold_dir: Path) -> None:
        """After training, with the best weights loaded: write task outputs (e.g. out-of-fold predictions)."""

    def parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters owned by the task rather than the network (e.g. loss weights)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""


def segmentation_dice(prediction: np.ndarray, reference: np.ndarray, n_classes: int) -> list[float]:
    """Dice per foreground class of two label maps (1.0 when a class is absent from both)."""
    return [dice(prediction == k, reference == k) for k in range(1, n_classes)]


def case_tensor(case: PreprocessedCase, device: torch.device) -> torch.Tensor:
    # copy: cached cases may be read-only memory maps
    return torch.from_numpy(np.array(case.data, dtype=np.float32)).to(device)


class SegmentationTask(Task):
    """Voxel-wise segmentation with Dice + cross-entropy; validated by Dice in the preprocessed space."""

    score_name = "val_dice"

    def __init__(self, manifest: Manifest | None = None) -> None:
        super().__init__(manifest)
        self.loss_fn = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True,
                                  smooth_nr=1e-5, smooth_dr=1e-5)

    def build_model(self, plan: Plan, config: TrainConfig) -> torch.nn.Module:
        return build_network(config.network, in_channels=len(plan.channels), out_channels=len(plan.labels),
                             patch_size=config.patch_size or plan.patch_size, **config.network_options)

    def dataset(self, cases, plan, config, length):
        volumes = [CaseVolume(c, seed=config.seed + i) for i, c in enumerate(cases)]
        return PatchDataset(volumes, config.patch_size or plan.patch_size, length,
                            foreground_fraction=config.foreground_fraction, augmentation=config.augmentation,
                            seed=config.seed)

    def loss(self, model, batch, device):
        loss = self.loss_fn(model(batch["image"].to(device, non_blocking=True)),
                            batch["label"].to(device, non_blocking=True))
        return loss, {}

    def validate(self, model, cases, plan, config, device):
        model.eval()
        scores = []
        for case in cases:
            probs = predict_volume(model, case_tensor(case, device), config.patch_size or plan.patch_size,
                                   overlap=config.sw_overlap, sw_batch_size=config.sw_batch_size, amp=config.amp)
            scores += segmentation_dice(probs.argmax(0).cpu().numpy(), np.asarray(case.label), len(plan.labels))
        return {"val_dice": float(np.mean(scores)) if scores else float("nan")}


_TASKS: dict[str, type[Task]] = {"segmentation": SegmentationTask}


def register_task(name: str, task_class: type[Task]) -> None:
    """Make a task available to ``TrainConfig.task`` under ``name``."""
    _TASKS[name] = task_class


def build_task(config: TrainConfig, manifest: Manifest | None = None) -> Task:
    """The task named by ``config.task``, built with ``config.task_options`` and the training cohort."""
    import sarcomakit.training.multitask  # noqa: F401  (registers the multi-task task)

    if config.task not in _TASKS:
        raise UserInputError(f"unknown task '{config.task}'.", fix=f"choose one of {', '.join(sorted(_TASKS))}.")
    return _TASKS[config.task](manifest=manifest, **config.task_options)
