"""Masked-image pretraining tasks: a CNN masked autoencoder (``mae``) and cross-modal masking (``crmae``).

Both train a registry network (any of ``sarcomakit train --network``) as an encoder-decoder that maps the
masked patch, with masked voxels set to zero, back to the whole patch; the loss is the mean squared error
over the masked voxels only (Wald et al. 2025, nnssl), because an error over every voxel would reward
copying the visible ones. Targets are the preprocessed intensities, i.e. after the plan's per-channel
normalisation (CT windowed, MRI z-scored). Neither needs labels, so every case of the manifest is used.

- ``mae``: random blocks (default 75% of them, blocks a tenth of the patch per axis) masked in every channel.
- ``crmae``: one modality per sample masked at a block density (default 50%; 1.0 masks it wholly) and
  reconstructed from the others, optionally with blocks of the others masked too (SarcomaNet's CrMAE).

Validation reports the error on masked voxels of fixed patches of the validation cases (for ``crmae``, on the
target modality's masked voxels), beside the baselines of :mod:`sarcomakit.tasks.pretraining.baselines`
scored on the very same voxels; the checkpoint score is the negative error. The fold's
``checkpoint_best.pt`` is what ``sarcomakit train --init`` starts from.
"""

from __future__ import annotations

import zlib
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.models import build_network
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import CaseOutput, LossOutput, Objective, Task, TaskRequirements
from sarcomakit.tasks.pretraining.baselines import affine_from_modalities, interpolate_from_visible
from sarcomakit.tasks.pretraining.masking import block_mask, default_block_size, modality_mask
from sarcomakit.tasks.pretraining.sampling import MaskedPatchDataset, crop, random_start

if TYPE_CHECKING:
    from sarcomakit.data.manifest import Manifest


def masked_mse(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the voxels where ``mask`` is True (all tensors broadcastable to one shape)."""
    weight = mask.to(torch.float32)
    squared = (output.float() - target.float()) ** 2
    return (squared * weight).sum() / weight.sum().clamp_min(1.0)


class MaskedReconstructionObjective(Objective):
    """Zero the masked voxels, reconstruct the patch, score only the masked voxels (:func:`masked_mse`)."""

    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        image = batch["image"].to(device, non_blocking=True)
        mask = batch["mask"].to(device, non_blocking=True)
        output = model(image.masked_fill(mask, 0.0))
        return LossOutput(masked_mse(output, image, mask))


class PretrainingTask(Task):
    """What every self-supervised pretraining task shares: no labels needed, the negative reconstruction error as
    the checkpoint score, a fold state naming the method, and a per-case table of errors as its prediction."""

    score_name = "val_score"
    requirements = TaskRequirements(needs_labels=False, allow_missing_channels=False, stratify_clinical=False)
    case_table = "reconstruction_errors.csv"

    def finish(self, model: nn.Module, train_cases: Sequence[PreprocessedCase],
               val_cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig, device: torch.device,
               fold: int, fold_dir: Path) -> dict[str, Any]:
        return {"method": self.name, "channels": list(plan.channels), "network": config.network}

    def case_row(self, case_id: str, output: CaseOutput) -> dict[str, Any]:
        return {"case_id": case_id, **{k: float(v) for k, v in output.values.items()}}


class MaskedReconstructionTask(PretrainingTask):
    """Shared parts of the masked-image tasks; subclasses say how a sample is masked (:meth:`draw_mask`)."""

    case_columns: ClassVar[tuple[str, ...]] = ("case_id", "masked_mse", "interpolation_mse")

    def __init__(self, manifest: Manifest | None = None, *, block_size: list[int] | None = None,
                 val_patches: int = 2) -> None:
        super().__init__(manifest)
        if block_size is not None and (len(block_size) != 3 or min(block_size) < 1):
            raise UserInputError(f"block_size {block_size} is not three positive voxel counts (z, y, x).",
                                 fix="give e.g. --task-option block_size=[2,8,8], or leave the default.")
        if val_patches < 1:
            raise UserInputError("val_patches must be at least 1.", fix="use --task-option val_patches=2.")
        self.block_size = None if block_size is None else [int(b) for b in block_size]
        self.val_patches = int(val_patches)

    # ------------------------------------------------------------------ masking
    def blocks(self, patch_size: Sequence[int]) -> tuple[int, ...]:
        return tuple(self.block_size) if self.block_size else default_block_size(patch_size)

    @abstractmethod
    def draw_mask(self, n_channels: int, patch_size: Sequence[int],
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """The sample's mask (C, Z, Y, X) and its target channel (-1: none)."""

    def scored(self, mask: np.ndarray, target: int) -> np.ndarray:
        """The voxels validation scores (default: every masked voxel)."""
        return mask

    # ------------------------------------------------------------------ training
    def build_model(self, plan: Plan, config: TrainConfig) -> nn.Module:
        channels = len(plan.channels)
        return build_network(config.network, in_channels=channels, out_channels=channels,
                             patch_size=config.patch_size or plan.patch_size, **config.network_options)

    def training_data(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                      length: int) -> torch.utils.data.Dataset:
        return MaskedPatchDataset(cases, config.patch_size or plan.patch_size, length, self.draw_mask,
                                  flips=config.augmentation != "none", seed=config.seed)

    def objective(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig) -> Objective:
        return MaskedReconstructionObjective()

    # ------------------------------------------------------------------ validation
    def evaluation_samples(self, case: PreprocessedCase,
                           patch_size: Sequence[int], seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
        """Fixed (image, mask, target) samples of a case: the same every epoch and on every process."""
        rng = np.random.default_rng((seed, zlib.crc32(case.case_id.encode()), 1))
        samples = []
        for _ in range(self.val_patches):
            image = crop(case.data, random_start(case.data.shape[1:], patch_size, rng), patch_size)
            mask, target = self.draw_mask(image.shape[0], patch_size, rng)
            samples.append((image, mask, target))
        return samples

    @torch.no_grad()
    def case_errors(self, model: nn.Module, case: PreprocessedCase, plan: Plan, config: TrainConfig,
                    device: torch.device) -> dict[str, float]:
        """Mean squared errors over the scored voxels of the case's fixed samples: the network's and the baselines'."""
        samples = self.evaluation_samples(case, config.patch_size or plan.patch_size, config.seed)
        images = torch.from_numpy(np.stack([s[0] for s in samples])).to(device)
        masks = torch.from_numpy(np.stack([s[1] for s in samples])).to(device)
        model.eval()
        outputs = model(images.masked_fill(masks, 0.0)).float().cpu().numpy()
        errors: dict[str, list[float]] = {"masked_mse": [], "interpolation_mse": [], **self._extra_lists()}
        for (image, mask, target), output in zip(samples, outputs, strict=True):
            scored = self.scored(mask, target)
            count = max(int(scored.sum()), 1)
            errors["masked_mse"].append(float(((output - image) ** 2)[scored].sum() / count))
            interpolated = np.stack([interpolate_from_visible(image[c], mask[c]) if scored[c].any() else image[c]
                                     for c in range(image.shape[0])])
            errors["interpolation_mse"].append(float(((interpolated - image) ** 2)[scored].sum() / count))
            self._extra_errors(errors, image, mask, target, scored)
        return {key: float(np.nanmean(values)) if not np.all(np.isnan(values)) else float("nan")
                for key, values in errors.items()}

    def _extra_lists(self) -> dict[str, list[float]]:
        return {}

    def _extra_errors(self, errors: dict[str, list[float]], image: np.ndarray, mask: np.ndarray, target: int,
                      scored: np.ndarray) -> None:
        """Add further baselines' errors for one sample."""

    def validate(self, model: nn.Module, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                 device: torch.device) -> dict[str, float]:
        per_case = [self.case_errors(model, case, plan, config, device) for case in cases]
        metrics = {f"val_{key}": float(np.nanmean([p[key] for p in per_case])) if per_case else float("nan")
                   for key in (per_case[0] if per_case else {"masked_mse": 0.0})}
        metrics["val_score"] = -metrics["val_masked_mse"]
        return metrics

    # ------------------------------------------------------------------ prediction
    def infer(self, model: nn.Module, case: PreprocessedCase, plan: Plan, config: TrainConfig,
              device: torch.device, *, overlap: float, mirror_axes: Sequence[int] = ()) -> CaseOutput:
        """No segmentation: the case's reconstruction errors (network and baselines) on its fixed samples."""
        return CaseOutput(probabilities=None, values=self.case_errors(model, case, plan, config, device))


class MaskedAutoencoderTask(MaskedReconstructionTask):
    """CNN masked autoencoder: random blocks masked in every channel, reconstructed (MSE on masked voxels).

    Args:
        mask_ratio: fraction of the patch's blocks masked.
        block_size: block edge per axis in voxels (z, y, x); default a tenth of the patch per axis.
        val_patches: fixed patches per validation case.
    """

    name = "mae"

    def __init__(self, manifest: Manifest | None = None, *, mask_ratio: float = 0.75,
                 block_size: list[int] | None = None, val_patches: int = 2) -> None:
        super().__init__(manifest, block_size=block_size, val_patches=val_patches)
        if not 0.0 < mask_ratio < 1.0:
            raise UserInputError(f"mask_ratio {mask_ratio} is not between 0 and 1.",
                                 fix="use e.g. --task-option mask_ratio=0.75.")
        self.mask_ratio = float(mask_ratio)

    def draw_mask(self, n_channels: int, patch_size: Sequence[int],
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
        spatial = block_mask(patch_size, self.blocks(patch_size), self.mask_ratio, rng)
        return np.broadcast_to(spatial, (n_channels, *spatial.shape)).copy(), -1


class CrossModalMaskedAutoencoderTask(MaskedReconstructionTask):
    """Cross-modal masked autoencoder (CrMAE): one modality per sample masked and reconstructed from the others.

    Args:
        density: fraction of the chosen modality's blocks masked (1.0: the whole modality).
        other_ratio: fraction of blocks also masked in the other modalities (0: they stay visible).
        block_size: block edge per axis in voxels (z, y, x); default a tenth of the patch per axis.
        val_patches: fixed patches per validation case.
    """

    name = "crmae"
    case_columns = ("case_id", "masked_mse", "interpolation_mse", "affine_mse")

    def __init__(self, manifest: Manifest | None = None, *, density: float = 0.5, other_ratio: float = 0.0,
                 block_size: list[int] | None = None, val_patches: int = 2) -> None:
        super().__init__(manifest, block_size=block_size, val_patches=val_patches)
        if not 0.0 < density <= 1.0 or not 0.0 <= other_ratio < 1.0:
            raise UserInputError(f"density {density} must be in (0, 1] and other_ratio {other_ratio} in [0, 1).",
                                 fix="use e.g. --task-option density=0.5 --task-option other_ratio=0.")
        self.density = float(density)
        self.other_ratio = float(other_ratio)

    def build_model(self, plan: Plan, config: TrainConfig) -> nn.Module:
        if len(plan.channels) < 2:
            raise UserInputError(f"cross-modal masking needs at least two channels; the plan has {plan.channels}.",
                                 fix="use --method mae for single-channel cohorts.")
        return super().build_model(plan, config)

    def draw_mask(self, n_channels: int, patch_size: Sequence[int],
                  rng: np.random.Generator) -> tuple[np.ndarray, int]:
        return modality_mask(n_channels, patch_size, self.blocks(patch_size), rng, density=self.density,
                             other_ratio=self.other_ratio)

    def scored(self, mask: np.ndarray, target: int) -> np.ndarray:
        scored = np.zeros_like(mask)
        scored[target] = mask[target]
        return scored

    def _extra_lists(self) -> dict[str, list[float]]:
        return {"affine_mse": []}

    def _extra_errors(self, errors: dict[str, list[float]], image: np.ndarray, mask: np.ndarray, target: int,
                      scored: np.ndarray) -> None:
        others = [c for c in range(image.shape[0]) if c != target]
        seen = np.where(mask[others], 0.0, image[others])  # the other modalities as the network sees them
        fitted = affine_from_modalities(image[target], seen, mask[target])
        count = max(int(mask[target].sum()), 1)
        errors["affine_mse"].append(float(((fitted - image[target]) ** 2)[mask[target]].sum() / count))


__all__ = ["CrossModalMaskedAutoencoderTask", "MaskedAutoencoderTask", "MaskedReconstructionObjective",
           "MaskedReconstructionTask", "PretrainingTask", "masked_mse"]
