"""Patch sampling with foreground oversampling, and the MONAI augmentation pipeline.

Sampling follows nnU-Net: a fraction of patches (``foreground_fraction``) is centred on a random
foreground voxel, the rest anywhere in the volume; volumes smaller than the patch are padded.
Foreground and background locations are cached per case (a random subset of at most
``max_locations``), so drawing a patch costs a crop, not a scan of the whole volume; this is why
it is written here instead of using MONAI's ``RandCropByPosNegLabeld``, which recomputes them
for every sample unless given precomputed full index arrays that cost memory per case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from monai import transforms as mt

if TYPE_CHECKING:
    from sarcomakit.planning.preprocess import PreprocessedCase


class CaseVolume:
    """A preprocessed case held for sampling: data (C,Z,Y,X), label (Z,Y,X), cached locations."""

    def __init__(self, case: PreprocessedCase, max_locations: int = 20000, seed: int = 0,
                 foreground_mask: np.ndarray | None = None) -> None:
        """``foreground_mask``: where foreground-oversampled patches are centred (default: label > 0)."""
        if case.label is None:
            raise ValueError(f"case {case.case_id} has no label to train on")
        self.case_id = case.case_id
        self.data = case.data
        self.label = case.label
        rng = np.random.default_rng(seed)
        flat = np.asarray(case.label > 0 if foreground_mask is None else foreground_mask).reshape(-1)
        foreground = np.flatnonzero(flat)
        if foreground.size > max_locations:
            foreground = rng.choice(foreground, max_locations, replace=False)
        self.foreground = np.stack(np.unravel_index(foreground, case.label.shape), axis=1) if foreground.size \
            else np.zeros((0, 3), dtype=np.int64)


def crop_patch(volume: CaseVolume, patch_size: Sequence[int], rng: np.random.Generator,
               force_foreground: bool) -> tuple[np.ndarray, np.ndarray]:
    """Crop one (C,*patch) image patch and its (1,*patch) label, zero-padding beyond the volume."""
    shape = np.array(volume.label.shape)
    patch = np.array(patch_size)
    # start range per axis: inside the volume, or (volume smaller than patch) anywhere that keeps it whole
    lowest = np.minimum(shape - patch, 0)
    highest = np.maximum(shape - patch, 0)
    if force_foreground and len(volume.foreground):
        centre = volume.foreground[rng.integers(len(volume.foreground))]
        start = centre - patch // 2 + rng.integers(-(patch // 4), patch // 4 + 1)
    else:
        start = rng.integers(lowest, highest + 1)
    start = np.clip(start, lowest, highest)
    src_lo = np.maximum(start, 0)
    src_hi = np.minimum(start + patch, shape)
    dst_lo = src_lo - start
    dst_hi = dst_lo + (src_hi - src_lo)
    src = tuple(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True))
    dst = tuple(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True))
    image = np.zeros((volume.data.shape[0], *patch), dtype=np.float32)
    label = np.zeros((1, *patch), dtype=np.uint8)
    image[(slice(None), *dst)] = volume.data[(slice(None), *src)]
    label[0][dst] = volume.label[src]  # label[0] is a view: this writes into label
    return image, label


def augmentation_pipeline(kind: str, patch_size: Sequence[int]) -> mt.Compose:
    """MONAI dictionary transforms on ``{"image", "label"}`` patches (nnU-Net-like probabilities).

    ``default``: small rotations/scaling, mirroring, intensity scale and shift, gamma, noise, blur;
    ``light``: mirroring and intensity only (cheap on CPU); ``none``: identity.
    """
    keys = ["image", "label"]
    if kind == "none":
        return mt.Compose([])
    steps: list = []
    if kind == "default":
        steps.append(mt.RandAffined(keys=keys, prob=0.2, rotate_range=(0.26, 0.26, 0.26), scale_range=0.15,
                                    mode=("bilinear", "nearest"), padding_mode="zeros",
                                    spatial_size=tuple(patch_size), cache_grid=True))
    steps += [
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        mt.RandScaleIntensityd(keys="image", factors=0.25, prob=0.15),
        mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.15),
        mt.RandAdjustContrastd(keys="image", gamma=(0.7, 1.5), prob=0.15),
    ]
    if kind == "default":
        steps += [mt.RandGaussianNoised(keys="image", prob=0.1, std=0.1),
                  mt.RandGaussianSmoothd(keys="image", prob=0.1, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0),
                                         sigma_z=(0.5, 1.0))]
    return mt.Compose(steps)


class PatchDataset(torch.utils.data.Dataset):
    """``length`` random training patches drawn from ``volumes``; deterministic for (seed, epoch, index)."""

    def __init__(self, volumes: Sequence[CaseVolume], patch_size: Sequence[int], length: int, *,
                 foreground_fraction: float = 0.33, augmentation: str = "default", seed: int = 0) -> None:
        if not volumes:
            raise ValueError("no training cases")
        self.volumes = list(volumes)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.length = length
        self.foreground_fraction = foreground_fraction
        self.transform = augmentation_pipeline(augmentation, self.patch_size)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        case_index = int(rng.integers(len(self.volumes)))
        volume = self.volumes[case_index]
        image, label = crop_patch(volume, self.patch_size, rng, rng.random() < self.foreground_fraction)
        if len(self.transform.transforms):
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            sample = self.transform({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
            image_t = torch.as_tensor(sample["image"]).float()
            label_t = torch.as_tensor(sample["label"]).round().long()
        else:
            image_t, label_t = torch.from_numpy(image), torch.from_numpy(label).long()
        return {"image": image_t.as_subclass(torch.Tensor), "label": label_t.as_subclass(torch.Tensor),
                "case_index": case_index}
