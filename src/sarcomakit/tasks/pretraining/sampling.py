"""Random patches of unlabelled preprocessed cases, each with its pretraining mask.

Cases stay memory-mapped (:meth:`PreprocessedCase.load` maps them), so a patch costs reading its own voxels
and a cohort of thousands of volumes is streamed from disk rather than held in memory. Unlike the
segmentation sampler (:mod:`sarcomakit.tasks.patches`) there is no label to oversample: patches are drawn
uniformly inside the volume. The mask is drawn with the patch, in the loader's worker processes, from the
same per-sample generator, so a sample is deterministic for (seed, epoch, index).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from sarcomakit.planning.preprocess import PreprocessedCase

#: ``mask_fn(n_channels, patch_size, rng) -> (mask (C, Z, Y, X) bool, target channel or -1)``
MaskFunction = Callable[[int, Sequence[int], np.random.Generator], tuple[np.ndarray, int]]


def random_start(shape: Sequence[int], patch_size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A uniformly random patch corner: inside the volume, or (volume smaller than the patch) anywhere that keeps
    the volume whole in the patch."""
    shape_a, patch = np.asarray(shape), np.asarray(patch_size)
    return rng.integers(np.minimum(shape_a - patch, 0), np.maximum(shape_a - patch, 0) + 1)


def crop(data: np.ndarray, start: Sequence[int] | np.ndarray, patch_size: Sequence[int]) -> np.ndarray:
    """The (C, *patch) float32 patch of (C, Z, Y, X) ``data`` at ``start``, zero beyond the volume."""
    shape, patch, start_a = np.asarray(data.shape[1:]), np.asarray(patch_size), np.asarray(start)
    src_lo, src_hi = np.maximum(start_a, 0), np.minimum(start_a + patch, shape)
    dst_lo = src_lo - start_a
    dst_hi = dst_lo + (src_hi - src_lo)
    out = np.zeros((data.shape[0], *patch), dtype=np.float32)
    out[(slice(None), *(slice(a, b) for a, b in zip(dst_lo, dst_hi, strict=True)))] = \
        data[(slice(None), *(slice(a, b) for a, b in zip(src_lo, src_hi, strict=True)))]
    return out


class MaskedPatchDataset(torch.utils.data.Dataset):
    """``length`` random (patch, mask) samples from ``cases``; deterministic for (seed, epoch, index).

    Args:
        cases: preprocessed cases (labels, if any, are ignored).
        patch_size: the patch, in voxels.
        length: samples per epoch.
        mask_fn: draws the sample's mask (see :data:`MaskFunction`).
        flips: mirror each patch along each axis with probability 0.5 (mask drawn after, so it is unaffected).
        seed: the run's seed.

    Each sample is ``{"image": (C, *patch) float32, "mask": (C, *patch) bool, "target_channel": int,
    "case_index": int}``; ``target_channel`` is -1 for masks that are not cross-modal.
    """

    def __init__(self, cases: Sequence[PreprocessedCase], patch_size: Sequence[int], length: int,
                 mask_fn: MaskFunction, *, flips: bool = True, seed: int = 0) -> None:
        if not cases:
            raise ValueError("no training cases")
        self.data = [case.data for case in cases]
        self.patch_size = tuple(int(p) for p in patch_size)
        self.length = length
        self.mask_fn = mask_fn
        self.flips = flips
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        case_index = int(rng.integers(len(self.data)))
        data = self.data[case_index]
        image = crop(data, random_start(data.shape[1:], self.patch_size, rng), self.patch_size)
        if self.flips:
            axes = tuple(1 + a for a in range(3) if rng.random() < 0.5)
            if axes:
                image = np.ascontiguousarray(np.flip(image, axis=axes))
        mask, target = self.mask_fn(image.shape[0], self.patch_size, rng)
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(np.ascontiguousarray(mask)),
                "target_channel": target, "case_index": case_index}
