"""The region of interest an interactive prediction works on, grown until the object is not clipped.

Running a model on the whole scan makes every interaction cost as much as the scan is large; a
tumour occupies a small part of it. nnInteractive therefore predicts in a box around the prompts
and, when the predicted object reaches a side of the box, enlarges the box on that side and
predicts again. :func:`grow_roi` does exactly that with any ``predict(roi) -> mask`` callback:

1. start from the bounding box of the prompts (and of the current mask), enlarged by ``margin``
   voxels on every side and clipped to the image;
2. predict; find the faces of the box that the mask touches and that are **not** the image
   border (an object may legitimately touch the edge of the scan);
3. if there are none, stop; otherwise move each touched face outwards by
   ``max(margin, growth * box size along that axis)`` voxels, clipped to the image, and repeat,
   at most ``max_iterations`` predictions or until the box would exceed ``max_voxels``.

Everything is in voxel indices of the original image (array order ``z, y, x``), so the result
can be pasted back on the original grid with ``full[roi.slices] = mask``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Roi:
    """A box of voxels ``[start, stop)`` per axis, in array order, inside an image."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.start) != len(self.stop) or any(b <= a for a, b in zip(self.start, self.stop, strict=True)):
            raise ValueError(f"a ROI needs start < stop on every axis, got start={self.start} stop={self.stop}")

    @classmethod
    def of_image(cls, shape: Sequence[int]) -> Roi:
        """The whole image."""
        return cls(tuple(0 for _ in shape), tuple(int(s) for s in shape))

    @classmethod
    def around(cls, points: np.ndarray | Sequence[Sequence[int]]) -> Roi:
        """The smallest box holding every point of an ``(N, ndim)`` array of voxel indices."""
        array = np.asarray(points, dtype=np.int64)
        if array.ndim != 2 or array.shape[0] == 0:
            raise ValueError("a ROI around points needs at least one point")
        return cls(tuple(int(v) for v in array.min(axis=0)), tuple(int(v) + 1 for v in array.max(axis=0)))

    @classmethod
    def around_mask(cls, mask: np.ndarray) -> Roi | None:
        """The bounding box of a boolean mask's foreground, None when it is empty."""
        if not mask.any():
            return None
        start, stop = [], []
        for axis in range(mask.ndim):
            profile = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
            start.append(int(profile[0]))
            stop.append(int(profile[-1]) + 1)
        return cls(tuple(start), tuple(stop))

    @property
    def slices(self) -> tuple[slice, ...]:
        """Index of this region in an array of the whole image."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop, strict=True))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop, strict=True))

    @property
    def size(self) -> int:
        """Number of voxels."""
        return math.prod(self.shape)

    def union(self, other: Roi) -> Roi:
        """The smallest box holding both boxes."""
        return Roi(tuple(map(min, self.start, other.start)), tuple(map(max, self.stop, other.stop)))

    def expand(self, margin: int | Sequence[int], image_shape: Sequence[int]) -> Roi:
        """This box with ``margin`` voxels more on every side (one value or one per axis), clipped to the image."""
        margins = _per_axis(margin, len(self.start))
        return Roi(tuple(max(a - m, 0) for a, m in zip(self.start, margins, strict=True)),
                   tuple(min(b + m, int(s)) for b, m, s in zip(self.stop, margins, image_shape, strict=True)))

    def clip(self, image_shape: Sequence[int]) -> Roi:
        """This box restricted to the image."""
        return Roi(tuple(max(a, 0) for a in self.start),
                   tuple(min(b, int(s)) for b, s in zip(self.stop, image_shape, strict=True)))


@dataclass(frozen=True)
class RoiGrowth:
    """Result of :func:`grow_roi`: the final box, the mask predicted in it and how it got there."""

    roi: Roi
    mask: np.ndarray
    iterations: int
    clipped_faces: tuple[tuple[int, int], ...]
    history: tuple[Roi, ...]

    @property
    def clipped(self) -> bool:
        """True when the final mask still touches an inner face (the cap stopped the growth)."""
        return bool(self.clipped_faces)


def clipped_faces(mask: np.ndarray, roi: Roi, image_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """Faces ``(axis, side)`` (side 0 = low, 1 = high) that ``mask`` touches and that are not the image border.

    Args:
        mask: boolean mask with the shape of ``roi``.
        roi: where the mask lies in the image.
        image_shape: shape of the whole image.
    """
    faces = []
    for axis in range(mask.ndim):
        if roi.start[axis] > 0 and np.take(mask, 0, axis=axis).any():
            faces.append((axis, 0))
        if roi.stop[axis] < int(image_shape[axis]) and np.take(mask, -1, axis=axis).any():
            faces.append((axis, 1))
    return tuple(faces)


def grow_roi(predict: Callable[[Roi], np.ndarray], initial: Roi, image_shape: Sequence[int], *,
             margin: int | Sequence[int] = 8, growth: float = 0.5, max_iterations: int = 5,
             max_voxels: int | None = None) -> RoiGrowth:
    """Predict in a box around ``initial`` and enlarge the box until the predicted object is not clipped.

    Args:
        predict: returns a boolean mask of the given ROI's shape (the object inside the ROI).
        initial: the box the object must cover at least (prompts and current mask), in voxel
            indices of the image.
        image_shape: spatial shape of the whole image.
        margin: voxels added on each side at the start and the least added to a clipped face;
            one value or one per axis (use fewer voxels along a coarsely sampled axis).
        growth: a clipped face moves out by this fraction of the box size along its axis (or
            ``margin``, whichever is larger), so a large object needs few re-runs.
        max_iterations: cap on the number of predictions (>= 1).
        max_voxels: optional cap on the box volume; growth stops before exceeding it.

    Returns:
        :class:`RoiGrowth` with the final box and its mask (``mask.shape == roi.shape``).
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    if growth < 0:
        raise ValueError(f"growth must be >= 0, got {growth}")
    margins = _per_axis(margin, len(image_shape))
    roi = initial.clip(image_shape).expand(margins, image_shape)
    history = [roi]
    for iteration in range(1, max_iterations + 1):
        mask = np.asarray(predict(roi)).astype(bool, copy=False)
        if mask.shape != roi.shape:
            raise ValueError(f"predict returned a mask of shape {mask.shape} for a ROI of shape {roi.shape}")
        faces = clipped_faces(mask, roi, image_shape)
        if not faces or iteration == max_iterations:
            break
        larger = _move_faces(roi, faces, margins, growth, image_shape)
        if larger == roi or (max_voxels is not None and larger.size > max_voxels):
            break
        roi = larger
        history.append(roi)
    return RoiGrowth(roi=roi, mask=mask, iterations=iteration, clipped_faces=faces, history=tuple(history))


def _move_faces(roi: Roi, faces: Sequence[tuple[int, int]], margins: Sequence[int], growth: float,
                image_shape: Sequence[int]) -> Roi:
    start, stop = list(roi.start), list(roi.stop)
    for axis, side in faces:
        step = max(margins[axis], math.ceil(growth * roi.shape[axis]), 1)
        if side == 0:
            start[axis] = max(start[axis] - step, 0)
        else:
            stop[axis] = min(stop[axis] + step, int(image_shape[axis]))
    return Roi(tuple(start), tuple(stop))


def _per_axis(value: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    values: tuple[int, ...] = (int(value),) * ndim if isinstance(value, int | np.integer) else \
        tuple(int(v) for v in value)
    if len(values) != ndim or any(v < 0 for v in values):
        raise ValueError(f"margin must be one non-negative integer or one per axis, got {value}")
    return tuple(int(v) for v in values)
