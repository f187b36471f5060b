"""Reference reconstructions of masked voxels that a pretrained network has to beat.

A reconstruction error means little alone: masked voxels inside smooth tissue are easy to guess. Two
baselines use no learning:

- :func:`interpolate_from_visible`: linear interpolation from the nearest visible voxels of the same
  channel. Along each axis, a masked voxel lying between two visible voxels gets the linear
  interpolation between them; the estimates of the axes that bracket it are averaged with weights
  inversely proportional to the bracket's length (the tighter bracket counts more). A voxel bracketed
  along no axis takes its nearest visible voxel along the axes where there is one, and failing that the
  mean of the visible voxels. A wholly masked channel has nothing to interpolate from (NaN).
- :func:`affine_from_modalities`: the best affine map of the other channels' values at the same voxels
  (least squares fitted on the very voxels it is scored on, so no voxel-wise affine map can do better:
  an optimistic baseline for cross-modal reconstruction).
"""

from __future__ import annotations

import numpy as np


def _axis_brackets(values: np.ndarray, visible: np.ndarray, axis: int) -> tuple[np.ndarray, ...]:
    """Along ``axis``: (two-sided estimate, bracket length, has both sides, one-sided nearest, has one side)."""
    v = np.moveaxis(values, axis, -1)
    seen = np.moveaxis(visible, axis, -1)
    n = v.shape[-1]
    index = np.broadcast_to(np.arange(n), v.shape)
    before = np.maximum.accumulate(np.where(seen, index, -1), axis=-1)
    after = np.flip(np.minimum.accumulate(np.flip(np.where(seen, index, n), -1), axis=-1), -1)
    has_before, has_after = before >= 0, after < n
    value_before = np.take_along_axis(v, np.clip(before, 0, n - 1), axis=-1)
    value_after = np.take_along_axis(v, np.clip(after, 0, n - 1), axis=-1)
    both = has_before & has_after
    length = np.where(both, np.maximum(after - before, 1), 1).astype(np.float64)
    t = (index - before) / length
    two_sided = value_before + t * (value_after - value_before)
    one_sided = np.where(has_before & (~has_after | (index - before <= after - index)), value_before, value_after)
    moved = (two_sided, length, both, one_sided, has_before | has_after)
    return tuple(np.moveaxis(a, -1, axis) for a in moved)


def interpolate_from_visible(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Estimate the masked voxels of one channel (Z, Y, X) from its visible ones (module docstring).

    Args:
        values: the channel's true values (only the visible ones are read).
        mask: True where masked.

    Returns:
        ``values`` with the masked voxels replaced by their estimate (all NaN when nothing is visible).
    """
    values = np.asarray(values, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    visible = ~mask
    if not visible.any():
        return np.full(values.shape, np.nan)
    weighted = np.zeros(values.shape)
    weights = np.zeros(values.shape)
    nearest = np.zeros(values.shape)
    nearest_count = np.zeros(values.shape)
    for axis in range(values.ndim):
        two_sided, length, both, one_sided, one = _axis_brackets(values, visible, axis)
        weighted += np.where(both, two_sided / length, 0.0)
        weights += np.where(both, 1.0 / length, 0.0)
        nearest += np.where(one, one_sided, 0.0)
        nearest_count += one
    estimate = np.where(weights > 0, weighted / np.maximum(weights, 1e-12),
                        np.where(nearest_count > 0, nearest / np.maximum(nearest_count, 1), values[visible].mean()))
    return np.where(mask, estimate, values)


def affine_from_modalities(target: np.ndarray, others: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The least-squares affine map ``a + sum_k b_k * others[k]`` of the target's masked voxels, evaluated there.

    Args:
        target: the masked channel's true values (Z, Y, X).
        others: the other channels as the network sees them (K, Z, Y, X).
        mask: True where the target is masked (the voxels fitted and returned).

    Returns:
        ``target`` with the masked voxels replaced by the fitted map.
    """
    mask = np.asarray(mask, dtype=bool)
    out = np.array(target, dtype=np.float64)
    if not mask.any():
        return out
    design = np.concatenate([np.ones((1, int(mask.sum()))), np.asarray(others, dtype=np.float64)[:, mask]]).T
    coefficients, *_ = np.linalg.lstsq(design, out[mask], rcond=None)
    out[mask] = design @ coefficients
    return out
