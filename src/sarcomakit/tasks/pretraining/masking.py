"""Masks for masked-image pretraining: random blocks of a patch, and one modality of a multi-channel patch.

A block mask divides the patch into a grid of blocks (the last block of an axis may be cut by the patch's
edge) and masks exactly ``round(ratio * blocks)`` of them, chosen at random; every voxel of a block shares
its state, so the network cannot fill a masked voxel from an adjacent visible one of the same block.
The default block is a tenth of the patch per axis: nnssl's 16^3 blocks in its 160^3 patches, scaled to
any patch (an anisotropic patch gets anisotropic blocks, in voxels as the plan sampled them).

A modality mask (cross-modal masking) picks one present channel of the sample and masks it, wholly or
at a block density, optionally together with blocks of the other channels.

Example:
    >>> rng = np.random.default_rng(0)
    >>> mask = block_mask((20, 40, 40), (2, 4, 4), 0.75, rng)
    >>> float(mask.mean())
    0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: a block is this fraction of the patch along each axis (16 voxels of a 160-voxel patch)
DEFAULT_BLOCK_FRACTION = 0.1


def default_block_size(patch_size: Sequence[int], fraction: float = DEFAULT_BLOCK_FRACTION) -> tuple[int, ...]:
    """Block edge per axis: ``fraction`` of the patch, rounded, at least one voxel."""
    return tuple(max(1, round(int(p) * fraction)) for p in patch_size)


def block_mask(patch_size: Sequence[int], block_size: Sequence[int], ratio: float,
               rng: np.random.Generator) -> np.ndarray:
    """A boolean (Z, Y, X) mask with ``round(ratio * n_blocks)`` of the patch's blocks set (True = masked).

    Args:
        patch_size: the patch, in voxels.
        block_size: the block edge per axis, in voxels (blocks at the far edge are cut to the patch).
        ratio: fraction of blocks to mask, in [0, 1].
        rng: the random generator (the mask is deterministic for its state).
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio {ratio} is not in [0, 1]")
    patch = [int(p) for p in patch_size]
    block = [int(b) for b in block_size]
    grid = [math.ceil(p / b) for p, b in zip(patch, block, strict=True)]
    n_blocks = math.prod(grid)
    flat = np.zeros(n_blocks, dtype=bool)
    flat[rng.permutation(n_blocks)[:round(ratio * n_blocks)]] = True
    mask = flat.reshape(grid)
    for axis, size in enumerate(block):
        mask = np.repeat(mask, size, axis=axis)
    return np.ascontiguousarray(mask[tuple(slice(0, p) for p in patch)])


def modality_mask(n_channels: int, patch_size: Sequence[int], block_size: Sequence[int], rng: np.random.Generator,
                  *, density: float = 0.5, other_ratio: float = 0.0,
                  present: Sequence[int] | None = None) -> tuple[np.ndarray, int]:
    """Cross-modal mask (C, Z, Y, X): one channel masked at ``density`` of its blocks (1.0: wholly), the others at
    ``other_ratio`` of theirs (one spatial mask shared by them; 0: left visible).

    Args:
        n_channels: channels of the patch (at least two: the masked one is predicted from the others).
        present: channels that may be chosen (default: all).

    Returns:
        The mask and the index of the chosen (target) channel.
    """
    if n_channels < 2:
        raise ValueError("cross-modal masking needs at least two channels")
    choices = list(range(n_channels)) if present is None else list(present)
    target = int(choices[rng.integers(len(choices))])
    mask = np.zeros((n_channels, *[int(p) for p in patch_size]), dtype=bool)
    if other_ratio > 0:
        mask[:] = block_mask(patch_size, block_size, other_ratio, rng)
    mask[target] = True if density >= 1.0 else block_mask(patch_size, block_size, density, rng)
    return mask, target
