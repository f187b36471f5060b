"""Prompts a user gives an interactive model (scribbles, clicks, boxes) and their encodings as channels.

All coordinates are voxel indices of the original image in array order ``(z, y, x)``, the order
of ``sitk.GetArrayFromImage``: a viewer converts its own ITK ``(i, j, k)`` index by reversing it.
Keeping prompts on the original voxel grid means an oblique or anisotropic image needs no special
case here; physical units enter only through ``spacing`` (mm, array order) in the encodings.

Three prompt kinds, each positive (inside the object) or negative (outside it):

- :class:`Scribble`: the voxels along strokes drawn on **one slice** (every voxel shares its
  coordinate along ``axis``), as a user draws them in a 2D view.
- :class:`Click`: one voxel.
- :class:`Box`: an axis-aligned rectangle on one slice (inclusive corners); all of it is
  rasterised, as nnInteractive encodes boxes.

Encodings (:func:`encode_prompts`) turn a prompt list into two channels, positive and negative,
for a network input (early fusion) over a region of interest:

- ``"binary"``: 1 on prompt voxels, 0 elsewhere;
- ``"edt"``: ``exp(-d / scale_mm)`` with ``d`` the Euclidean distance in mm to the nearest prompt
  voxel of that sign (``scipy.ndimage.distance_transform_edt`` with the voxel spacing): 1 on the
  prompt, strictly decreasing with distance, never saturating between two nearby strokes;
- ``"gaussian"``: the binary map smoothed by a Gaussian of ``scale_mm`` and rescaled to a
  maximum of 1, the "Gaussian blob" guidance of DeepEdit / MONAI Label, kept for comparison
  (exponential-distance encodings are reported to train better than blobs).

A channel with no prompt of its sign is all zeros in every encoding, so "no information" is
distinguishable from "far from every prompt".

Example:
    >>> s = Scribble.from_voxels([(4, 2, 2), (4, 2, 3), (4, 2, 4)], positive=True)
    >>> s.axis
    0
    >>> channels = encode_prompts([s], (8, 8, 8), encoding="binary")
    >>> channels.shape, int(channels[0].sum()), int(channels[1].sum())
    ((2, 8, 8, 8), 3, 0)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import ndimage

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.roi import Roi

Encoding = Literal["binary", "edt", "gaussian"]
ENCODINGS: tuple[str, ...] = ("binary", "edt", "gaussian")
#: Channel order of :func:`encode_prompts`.
PROMPT_CHANNELS: tuple[str, ...] = ("positive", "negative")


@dataclass(frozen=True, eq=False)
class Scribble:
    """Voxels along strokes drawn on one slice; ``axis`` is the slice normal (0 = z, 1 = y, 2 = x)."""

    voxels: np.ndarray
    positive: bool
    axis: int

    @classmethod
    def from_voxels(cls, voxels: Sequence[Sequence[float]] | np.ndarray, positive: bool,
                    axis: int | None = None) -> Scribble:
        """Validate and build a scribble from ``(N, 3)`` voxel indices.

        Duplicate voxels are merged. ``axis`` may be given to state the drawing plane; otherwise
        it is the first axis along which all voxels share their coordinate.

        Raises:
            UserInputError: empty voxel set, wrong shape, non-finite or non-integer indices,
                voxels not on one slice (or not on the slice of the given ``axis``).
        """
        points = _voxel_array(voxels, "scribble")
        if points.shape[0] == 0:
            raise UserInputError("the scribble has no voxels.", fix="draw at least one voxel.")
        flat_axes = [a for a in range(3) if np.all(points[:, a] == points[0, a])]
        if axis is not None:
            if axis not in (0, 1, 2):
                raise UserInputError(f"scribble axis must be 0, 1 or 2 (z, y, x), got {axis}.")
            if axis not in flat_axes:
                raise UserInputError(
                    f"the scribble's voxels span {np.unique(points[:, axis]).size} slices along axis {axis}; "
                    "a scribble is drawn on one slice.", fix="send the strokes of each slice as separate scribbles.")
        elif not flat_axes:
            raise UserInputError("the scribble's voxels do not lie on one slice of any axis.",
                                 fix="send the strokes of each slice as separate scribbles.")
        else:
            axis = flat_axes[0]
        points = np.unique(points, axis=0)
        points.setflags(write=False)
        return cls(voxels=points, positive=bool(positive), axis=int(axis))

    @property
    def slice_index(self) -> int:
        """Index of the slice the scribble lies on, along :attr:`axis`."""
        return int(self.voxels[0, self.axis])

    def covered_voxels(self) -> np.ndarray:
        """The ``(N, 3)`` voxels this prompt marks."""
        return self.voxels


@dataclass(frozen=True, eq=False)
class Click:
    """One voxel marked as inside (positive) or outside (negative) the object."""

    voxel: tuple[int, int, int]
    positive: bool

    @classmethod
    def from_voxel(cls, voxel: Sequence[float] | np.ndarray, positive: bool) -> Click:
        """Validate and build a click from one ``(z, y, x)`` voxel index.

        Raises:
            UserInputError: not three finite integer indices.
        """
        points = _voxel_array(np.atleast_2d(np.asarray(voxel, dtype=float)), "click")
        if points.shape[0] != 1:
            raise UserInputError(f"a click is one voxel (z, y, x), got {points.shape[0]} voxels.")
        z, y, x = (int(v) for v in points[0])
        return cls(voxel=(z, y, x), positive=bool(positive))

    def covered_voxels(self) -> np.ndarray:
        """The ``(1, 3)`` voxel this prompt marks."""
        return np.asarray([self.voxel], dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Box:
    """An axis-aligned rectangle on one slice, between two inclusive corner voxels."""

    start: tuple[int, int, int]
    stop: tuple[int, int, int]
    positive: bool
    axis: int

    @classmethod
    def from_corners(cls, corner_a: Sequence[float], corner_b: Sequence[float], positive: bool = True) -> Box:
        """Validate and build a box from two opposite corners (inclusive) on the same slice.

        Raises:
            UserInputError: corners that are not three integer indices each, or not on one slice.
        """
        corners = _voxel_array([corner_a, corner_b], "box")
        if corners.shape[0] != 2:
            raise UserInputError("a box needs two corner voxels (z, y, x).")
        flat_axes = [a for a in range(3) if corners[0, a] == corners[1, a]]
        if not flat_axes:
            raise UserInputError(f"the box corners {corners[0].tolist()} and {corners[1].tolist()} are not on one "
                                 "slice.", fix="give two corners that share their slice coordinate.")
        start = tuple(int(v) for v in corners.min(axis=0))
        stop = tuple(int(v) for v in corners.max(axis=0))
        return cls(start=start, stop=stop, positive=bool(positive), axis=flat_axes[0])  # type: ignore[arg-type]

    def covered_voxels(self) -> np.ndarray:
        """All ``(N, 3)`` voxels of the filled rectangle."""
        grids = np.meshgrid(*[np.arange(a, b + 1) for a, b in zip(self.start, self.stop, strict=True)], indexing="ij")
        return np.stack([g.reshape(-1) for g in grids], axis=1).astype(np.int64)


Prompt = Scribble | Click | Box


def check_prompt_in_image(prompt: Prompt, shape: Sequence[int]) -> None:
    """Raise :class:`UserInputError` naming the first voxel of ``prompt`` outside an image of ``shape``.

    Args:
        prompt: a scribble, click or box.
        shape: spatial shape ``(Z, Y, X)`` of the image.
    """
    if len(shape) != 3:
        raise UserInputError(f"prompts index a 3D image; the image has spatial shape {tuple(shape)}.")
    voxels = prompt.covered_voxels()
    outside = np.any((voxels < 0) | (voxels >= np.asarray(shape)), axis=1)
    if outside.any():
        first = voxels[np.argmax(outside)].tolist()
        kind = type(prompt).__name__.lower()
        raise UserInputError(
            f"the {kind} has {int(outside.sum())} voxel(s) outside the image, e.g. (z, y, x) = {tuple(first)}, "
            f"while the image has shape (z, y, x) = {tuple(int(s) for s in shape)}.",
            fix="send voxel indices of the image in array order (z, y, x), each in 0 .. size - 1.")


def check_prompts(prompts: Sequence[Prompt], shape: Sequence[int]) -> None:
    """Check that there is at least one prompt and that every prompt lies inside the image.

    Raises:
        UserInputError: empty prompt list, an object that is not a prompt, or a voxel outside.
    """
    if len(prompts) == 0:
        raise UserInputError("no prompts were given.", fix="add a scribble or a click inside the object first.")
    for prompt in prompts:
        if not isinstance(prompt, Scribble | Click | Box):
            raise UserInputError(f"{type(prompt).__name__} is not a prompt (Scribble, Click or Box).")
        check_prompt_in_image(prompt, shape)


def rasterize_prompts(prompts: Sequence[Prompt], shape: Sequence[int],
                      roi: Roi | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean maps of positive and negative prompt voxels, over the image or a region of it.

    Prompts are applied in order and a later prompt overrides an earlier one on the voxels they
    share, so a correction wins over the stroke it corrects.

    Args:
        prompts: prompts in voxel indices of the whole image.
        shape: spatial shape of the whole image.
        roi: optional region of the image; the maps then have the region's shape and prompt
            voxels outside it are left out.

    Returns:
        ``(positive, negative)`` boolean arrays, disjoint.
    """
    offset, out_shape = _region(shape, roi)
    positive = np.zeros(out_shape, dtype=bool)
    negative = np.zeros(out_shape, dtype=bool)
    for prompt in prompts:
        voxels = prompt.covered_voxels() - offset
        voxels = voxels[np.all((voxels >= 0) & (voxels < np.asarray(out_shape)), axis=1)]
        index = tuple(voxels.T)
        (positive if prompt.positive else negative)[index] = True
        (negative if prompt.positive else positive)[index] = False
    return positive, negative


def encode_prompts(prompts: Sequence[Prompt], shape: Sequence[int], *, encoding: Encoding = "edt",
                   spacing: Sequence[float] | None = None, scale_mm: float = 5.0,
                   roi: Roi | None = None) -> np.ndarray:
    """Encode prompts as positive and negative channels, shape ``(2, *region_shape)``, float32 in [0, 1].

    Args:
        prompts: prompts in voxel indices of the whole image.
        shape: spatial shape ``(Z, Y, X)`` of the whole image.
        encoding: ``"binary"``, ``"edt"`` (exponential decay of the distance) or ``"gaussian"``
            (smoothed binary map); see the module docstring.
        spacing: voxel size in mm, array order; None means 1 mm isotropic.
        scale_mm: decay length of ``"edt"`` and standard deviation of ``"gaussian"``, in mm.
        roi: optional region of the image to encode (see :func:`rasterize_prompts`).

    Returns:
        Channels ``(positive, negative)``; a channel without prompts is all zeros.
    """
    seeds = rasterize_prompts(prompts, shape, roi)
    return encode_seeds(*seeds, encoding=encoding, spacing=spacing, scale_mm=scale_mm)


def encode_seeds(positive: np.ndarray, negative: np.ndarray, *, encoding: Encoding = "edt",
                 spacing: Sequence[float] | None = None, scale_mm: float = 5.0) -> np.ndarray:
    """Encode boolean maps of positive and negative prompt voxels as two channels (see :func:`encode_prompts`).

    This is the encoding step alone, for callers that hold prompts as voxel maps already (the training
    samples of the interactive task, a prediction on a resampled grid).

    Returns:
        float32 ``(2, *positive.shape)`` in [0, 1]; a channel without seeds is all zeros.
    """
    if encoding not in ENCODINGS:
        raise UserInputError(f"unknown prompt encoding {encoding!r}; choose one of {', '.join(ENCODINGS)}.")
    if not np.isfinite(scale_mm) or scale_mm <= 0:
        raise UserInputError(f"scale_mm must be a positive number, got {scale_mm}.")
    sampling = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
    seeds = (np.asarray(positive, dtype=bool), np.asarray(negative, dtype=bool))
    channels = np.zeros((2, *seeds[0].shape), dtype=np.float32)
    for channel, seed in zip(channels, seeds, strict=True):
        if not seed.any():
            continue
        if encoding == "binary":
            channel[...] = seed
        elif encoding == "edt":
            distance = ndimage.distance_transform_edt(~seed, sampling=sampling)
            channel[...] = np.exp(-distance / scale_mm)
        else:
            blurred = ndimage.gaussian_filter(seed.astype(np.float32), sigma=scale_mm / sampling, mode="constant")
            channel[...] = blurred / blurred.max()
    return channels


# ---------------------------------------------------------------------- internals
def _voxel_array(voxels: Sequence[Sequence[float]] | np.ndarray, kind: str) -> np.ndarray:
    """``(N, 3)`` int64 indices from user input, or a UserInputError saying what is wrong."""
    try:
        array = np.asarray(voxels, dtype=float)
    except (TypeError, ValueError) as error:
        raise UserInputError(f"the {kind} voxels are not numbers: {error}.") from None
    if array.size == 0:
        return np.zeros((0, 3), dtype=np.int64)
    if array.ndim != 2 or array.shape[1] != 3:
        raise UserInputError(f"the {kind} voxels must have shape (N, 3) in (z, y, x) order, got shape {array.shape}.",
                             fix="send one (z, y, x) index triple per voxel of a 3D image.")
    if not np.all(np.isfinite(array)):
        raise UserInputError(f"the {kind} voxels contain NaN or infinite values.")
    rounded = np.rint(array)
    if not np.allclose(array, rounded, atol=1e-6):
        raise UserInputError(f"the {kind} voxels must be integer voxel indices, got e.g. {array[0].tolist()}.",
                             fix="round physical or sub-voxel positions to voxel indices first.")
    return rounded.astype(np.int64)


def _region(shape: Sequence[int], roi: Roi | None) -> tuple[np.ndarray, tuple[int, ...]]:
    if roi is None:
        return np.zeros(3, dtype=np.int64), tuple(int(s) for s in shape)
    return np.asarray(roi.start, dtype=np.int64), roi.shape
