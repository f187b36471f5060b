"""Reorientation, crop-to-nonzero and resampling onto a target spacing, all with SimpleITK.

Resampling is done in physical space with SimpleITK's multi-threaded ``Resample`` (one scalar image
per channel), not with order-3 scipy over whole volumes as nnU-Net does.

The output grid of :func:`target_grid` has the input's direction, ``round(extent / target)`` voxels per
axis, and covers exactly the input's field of view, so its spacing is the target spacing to within half
a voxel over the extent (nnU-Net's convention; the grid's real spacing is recorded in its geometry).

Anisotropic data (nnU-Net's rule: largest / smallest spacing > 3, of the input or of the target,
with a unique low-resolution axis) is resampled in two passes: first in-plane with linear
interpolation, keeping the slices where they are, then across the slices with nearest-neighbour
interpolation. Interpolating across thick slices blends anatomy that does not belong together; like
nnU-Net (``order_z=0``) we copy the nearest slice instead. Isotropic-enough data gets one linear pass.

Labels are resampled as one-hot maps (linear interpolation, or nearest), then argmax: this keeps
thin structures and every class present, which nearest-neighbour alone can lose on downsampling.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.io.image import Geometry

ANISOTROPY_THRESHOLD = 3.0
"""Spacing ratio (largest / smallest) above which an axis counts as low-resolution (nnU-Net's value)."""

Interpolation = Literal["linear", "nearest"]
_INTERPOLATORS = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}


# ---------------------------------------------------------------------------- orientation
def orientation_of(image: sitk.Image | Geometry) -> str:
    """Three-letter DICOM orientation code of an image's direction cosines (e.g. ``"LPS"``, ``"RAS"``)."""
    direction = image.direction if isinstance(image, Geometry) else image.GetDirection()
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(direction)


def reorient(image: sitk.Image, orientation: str = "LPS") -> sitk.Image:
    """Permute and flip the axes of ``image`` so that it reads in ``orientation`` (no interpolation).

    The voxels keep their physical positions; only the array order changes, so the operation is
    exactly undone by resampling back onto the original grid (see ``restore_to_input_geometry``).
    """
    if orientation_of(image) == orientation:
        return image
    return sitk.DICOMOrient(image, orientation)


# ---------------------------------------------------------------------------- cropping
def nonzero_bbox(data: np.ndarray) -> list[list[int]]:
    """Bounding box of the voxels that are nonzero in any channel of ``data`` (C, Z, Y, X).

    Returns:
        ``[[z0, z1], [y0, y1], [x0, x1]]`` with exclusive stops; the whole array when all is zero.
    """
    nonzero = np.any(data != 0, axis=0)
    box = []
    for axis in range(nonzero.ndim):
        other = tuple(a for a in range(nonzero.ndim) if a != axis)
        hits = np.flatnonzero(np.any(nonzero, axis=other))
        box.append([int(hits[0]), int(hits[-1]) + 1] if hits.size else [0, nonzero.shape[axis]])
    return box


def bbox_slices(bbox: list[list[int]]) -> tuple[slice, ...]:
    """Slices of a ``[[start, stop], ...]`` box, for indexing a (Z, Y, X) array."""
    return tuple(slice(start, stop) for start, stop in bbox)


def cropped_geometry(geometry: Geometry, bbox: list[list[int]]) -> Geometry:
    """Geometry of the sub-grid ``bbox`` (array order, exclusive stops) of ``geometry``."""
    start_xyz = [bbox[2][0], bbox[1][0], bbox[0][0]]
    size_xyz = tuple(int(stop - start) for start, stop in reversed(bbox))
    direction = np.asarray(geometry.direction).reshape(3, 3)
    origin = np.asarray(geometry.origin) + direction @ (np.asarray(start_xyz) * np.asarray(geometry.spacing))
    return Geometry(size=size_xyz, spacing=geometry.spacing, origin=tuple(float(o) for o in origin),
                    direction=geometry.direction)


# ---------------------------------------------------------------------------- grids
def new_shape(shape: list[int] | tuple[int, ...], spacing: list[float] | tuple[float, ...],
              target_spacing: list[float] | tuple[float, ...]) -> list[int]:
    """Voxel counts after resampling: ``round(shape * spacing / target_spacing)``, at least 1 per axis."""
    return [max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target_spacing, strict=True)]


def target_grid(geometry: Geometry, target_spacing_zyx: list[float] | tuple[float, ...],
                *, keep_axis: int | None = None) -> Geometry:
    """Grid of about ``target_spacing_zyx`` covering exactly the field of view of ``geometry``.

    Along each axis the output has ``n_out = round(n_in * s_in / t)`` voxels of spacing
    ``s_out = n_in * s_in / n_out`` (within half a voxel over the extent of the target ``t``), and its
    first voxel edge coincides with the input's: the first voxel centre moves by ``(s_out - s_in) / 2``.
    Output voxel ``j`` thus sits at input index ``(j + 0.5) * n_in / n_out - 0.5``, the sampling
    positions of nnU-Net's (and scikit-image's) resize. ``keep_axis`` (array order) keeps that axis of
    the input unchanged (the in-plane pass of anisotropic resampling).
    """
    size_xyz = list(reversed(new_shape(geometry.array_shape, geometry.array_spacing, target_spacing_zyx)))
    if keep_axis is not None:
        size_xyz[2 - keep_axis] = geometry.size[2 - keep_axis]
    spacing_xyz = [n_in * s_in / n_out for n_in, s_in, n_out in zip(geometry.size, geometry.spacing, size_xyz,
                                                                    strict=True)]
    shift = [(s_out - s_in) / 2.0 for s_in, s_out in zip(geometry.spacing, spacing_xyz, strict=True)]
    direction = np.asarray(geometry.direction).reshape(3, 3)
    origin = np.asarray(geometry.origin) + direction @ np.asarray(shift)
    return Geometry(size=tuple(int(n) for n in size_xyz), spacing=tuple(float(s) for s in spacing_xyz),
                    origin=tuple(float(o) for o in origin), direction=geometry.direction)


def separate_axis(spacing_zyx: list[float] | tuple[float, ...],
                  target_spacing_zyx: list[float] | tuple[float, ...],
                  threshold: float = ANISOTROPY_THRESHOLD) -> int | None:
    """The low-resolution axis to resample on its own, or None (nnU-Net's ``get_do_separate_z`` rule).

    The input spacing is checked first, then the target spacing: when largest / smallest > ``threshold``
    and exactly one axis has the largest spacing, that axis (array order) is returned.
    """
    for spacing in (spacing_zyx, target_spacing_zyx):
        values = np.asarray(spacing, dtype=float)
        if values.max() / values.min() > threshold:
            candidates = np.flatnonzero(np.isclose(values, values.max()))
            return int(candidates[0]) if candidates.size == 1 else None
    return None


# ---------------------------------------------------------------------------- resampling
def _resample(image: sitk.Image, grid: Geometry, interpolation: Interpolation) -> sitk.Image:
    return sitk.Resample(image, [int(n) for n in grid.size], sitk.Transform(), _INTERPOLATORS[interpolation],
                         grid.origin, grid.spacing, grid.direction, 0.0, image.GetPixelID())


def resample_onto(image: sitk.Image, grid: Geometry, *, in_plane: Interpolation = "linear",
                  across_slices: Interpolation = "nearest") -> sitk.Image:
    """Resample a scalar or vector image onto ``grid``, a grid with the image's direction.

    Anisotropic data (see :func:`separate_axis`) is resampled in two passes: in-plane with
    ``in_plane`` keeping the input slices, then across slices with ``across_slices``.
    """
    geometry = Geometry.of(image)
    if grid.matches(geometry, atol=1e-6):
        return image
    axis = separate_axis(geometry.array_spacing, grid.array_spacing)
    if axis is None or in_plane == across_slices:
        return _resample(image, grid, in_plane)
    in_plane_grid = _keep_axis_of(grid, geometry, axis)
    if not in_plane_grid.matches(geometry, atol=1e-6):
        image = _resample(image, in_plane_grid, in_plane)
    if in_plane_grid.matches(grid, atol=1e-6):
        return image
    if across_slices == "nearest":
        return _nearest_slices(image, grid, axis)
    return _resample(image, grid, across_slices)


def _nearest_slices(image: sitk.Image, grid: Geometry, axis: int) -> sitk.Image:
    """Resample onto ``grid``, which differs from the image's grid only along array ``axis``, by copying
    the nearest slices: what nearest-neighbour ``sitk.Resample`` computes, as one cheap array gather."""
    source = Geometry.of(image)
    xyz = 2 - axis
    direction = np.asarray(source.direction).reshape(3, 3)
    offset = (direction.T @ (np.asarray(grid.origin) - np.asarray(source.origin)))[xyz]
    positions = (offset + np.arange(grid.size[xyz]) * grid.spacing[xyz]) / source.spacing[xyz]
    # Exact ties (position k + 0.5, frequent for ratios like 10/11) go up, as in scipy and ITK; rounding
    # first keeps floating-point noise from deciding them.
    index = np.clip(np.floor(np.round(positions, 6) + 0.5).astype(np.int64), 0, source.size[xyz] - 1)
    array = np.take(sitk.GetArrayViewFromImage(image), index, axis=axis)
    return grid.apply(sitk.GetImageFromArray(array, isVector=image.GetNumberOfComponentsPerPixel() > 1))


def _keep_axis_of(grid: Geometry, source: Geometry, axis: int) -> Geometry:
    """``grid`` with its positions along array ``axis`` replaced by those of ``source`` (same direction)."""
    xyz = 2 - axis
    direction = np.asarray(grid.direction).reshape(3, 3)
    offset = direction.T @ (np.asarray(grid.origin) - np.asarray(source.origin))
    offset[xyz] = 0.0
    size, spacing = list(grid.size), list(grid.spacing)
    size[xyz], spacing[xyz] = source.size[xyz], source.spacing[xyz]
    origin = np.asarray(source.origin) + direction @ offset
    return Geometry(size=tuple(size), spacing=tuple(spacing), origin=tuple(float(o) for o in origin),
                    direction=grid.direction)


def resample_to_spacing(image: sitk.Image, target_spacing_zyx: list[float] | tuple[float, ...], *,
                        in_plane: Interpolation = "linear",
                        across_slices: Interpolation = "nearest") -> sitk.Image:
    """Resample a scalar or vector image onto :func:`target_grid` of its own geometry.

    Args:
        image: the image (a vector image resamples all its components in one pass).
        target_spacing_zyx: output spacing in array order, mm.
        in_plane: interpolation for all axes, or for the in-plane axes of anisotropic data.
        across_slices: interpolation along the low-resolution axis of anisotropic data (see
            :func:`separate_axis`); nearest by default, as nnU-Net.

    Returns:
        The resampled image, same pixel type.
    """
    grid = target_grid(Geometry.of(image), target_spacing_zyx)
    return resample_onto(image, grid, in_plane=in_plane, across_slices=across_slices)


def resample_channels(data: np.ndarray, geometry: Geometry, grid: Geometry | list[float] | tuple[float, ...], *,
                      in_plane: Interpolation = "linear",
                      across_slices: Interpolation = "nearest") -> tuple[np.ndarray, Geometry]:
    """Resample each channel of ``data`` (C, Z, Y, X) on ``geometry`` onto a grid.

    Channels are resampled one by one as scalar images, which SimpleITK does faster than one vector
    image and without reordering the array.

    Args:
        data: the channels.
        geometry: their grid.
        grid: the output grid (same direction), or a target spacing (z, y, x) for :func:`target_grid`.
        in_plane, across_slices: see :func:`resample_onto`.

    Returns:
        The resampled float32 array (C, Z', Y', X') and its geometry.
    """
    if not isinstance(grid, Geometry):
        grid = target_grid(geometry, grid)
    out = np.empty((data.shape[0], *grid.array_shape), dtype=np.float32)
    for c in range(data.shape[0]):
        image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(data[c], dtype=np.float32)))
        resampled = resample_onto(image, grid, in_plane=in_plane, across_slices=across_slices)
        out[c] = sitk.GetArrayViewFromImage(resampled)  # the view needs ``resampled`` alive
    return out, grid


def resample_label(label: np.ndarray, geometry: Geometry, target_spacing_zyx: list[float] | tuple[float, ...],
                   *, method: Interpolation = "linear") -> np.ndarray:
    """Resample a (Z, Y, X) integer label map to ``target_spacing_zyx``, keeping its classes.

    ``method="linear"``: each foreground class present becomes a one-hot map; the maps are resampled
    together (in-plane linear, nearest across thick slices), background is ``1 - sum``, and each voxel
    takes the class of largest value. Only the bounding box of the foreground (plus a margin) is
    resampled; the rest of the output is background.
    ``method="nearest"``: plain nearest-neighbour resampling.

    Returns:
        The resampled label map, same dtype, on ``target_grid(geometry, target_spacing_zyx)``.
    """
    grid = target_grid(geometry, target_spacing_zyx)
    if method == "nearest":
        image = geometry.apply(sitk.GetImageFromArray(np.ascontiguousarray(label)))
        nearest = resample_onto(image, grid, in_plane="nearest", across_slices="nearest")
        return sitk.GetArrayFromImage(nearest).astype(label.dtype, copy=False)
    background = label.dtype.type(0)
    out = np.full(grid.array_shape, background, dtype=label.dtype)
    box = nonzero_bbox(label[None])
    if not np.any(label[bbox_slices(box)]):
        return out
    box = [[max(0, a - _LABEL_MARGIN), min(n, b + _LABEL_MARGIN)]
           for (a, b), n in zip(box, label.shape, strict=True)]
    sub = label[bbox_slices(box)]
    classes = _present_classes(sub)
    classes = classes[classes != background]
    out_box = _covering_box(geometry, box, grid)
    if any(b <= a for a, b in out_box):
        return out
    one_hot = np.stack([sub == c for c in classes]).astype(np.float32)
    resampled, _ = resample_channels(one_hot, cropped_geometry(geometry, box), cropped_geometry(grid, out_box))
    scores = np.concatenate([1.0 - resampled.sum(axis=0, keepdims=True), resampled])
    values = np.concatenate([[background], classes]).astype(label.dtype)
    out[bbox_slices(out_box)] = values[np.argmax(scores, axis=0)]
    return out


_LABEL_MARGIN = 2


def _present_classes(label: np.ndarray) -> np.ndarray:
    if label.dtype == np.uint8:  # bincount is much faster than np.unique's sort for small integer labels
        return np.flatnonzero(np.bincount(label.ravel(), minlength=1)).astype(np.uint8)
    return np.unique(label)


def _covering_box(source: Geometry, box: list[list[int]], grid: Geometry) -> list[list[int]]:
    """Box of the voxels of ``grid`` whose centres lie in the voxels ``box`` of ``source`` (same direction)."""
    direction = np.asarray(source.direction).reshape(3, 3)
    offset_xyz = direction.T @ (np.asarray(grid.origin) - np.asarray(source.origin))
    out = []
    for axis, (start, stop) in enumerate(box):
        xyz = 2 - axis
        s_in, s_out, shift = source.spacing[xyz], grid.spacing[xyz], offset_xyz[xyz]
        first = int(np.ceil(((start - 0.5) * s_in - shift) / s_out - 1e-6))
        last = int(np.floor(((stop - 0.5) * s_in - shift) / s_out + 1e-6))
        out.append([max(0, first), min(grid.size[xyz], last + 1)])
    return out
