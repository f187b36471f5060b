"""Segmentation metrics in physical units: Dice, HD95, normalised surface Dice and volume difference.

Masks are boolean arrays in array order (z, y, x) and ``spacing`` is the voxel size in mm in the
same order (``Geometry.array_spacing``). Surfaces are the mask voxels that touch the background
(the mask minus its binary erosion, 6-connectivity in 3D), and surface distances are Euclidean
distances in mm between surface voxel centres: the conventions of MONAI's
``compute_hausdorff_distance`` and ``compute_surface_dice`` (without sub-voxel areas), so the
numbers agree with theirs.

Empty masks are decided explicitly rather than left to NaN/inf arithmetic:

============================  ======  ======  ============  ==========================
case                          Dice    HD95    surface Dice  relative volume difference
============================  ======  ======  ============  ==========================
both empty                    1.0     0.0     1.0           nan
only one empty                0.0     nan     0.0           -1.0 / nan (reference empty)
============================  ======  ======  ============  ==========================

Example:
    >>> import numpy as np
    >>> a = np.zeros((20, 20, 20), bool); a[5:15, 5:15, 5:15] = True
    >>> b = np.roll(a, 2, axis=0)
    >>> round(dice(a, b), 3)
    0.8
    >>> hausdorff_distance_95(a, b, spacing=(3.0, 1.0, 1.0))
    6.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

Spacing = Sequence[float] | np.ndarray | None

#: Keys of :func:`segmentation_metrics`, in the order tables show them.
METRIC_NAMES: tuple[str, ...] = (
    "dice", "hd95", "surface_dice", "volume_pred_ml", "volume_ref_ml", "volume_diff_ml", "volume_diff_rel",
)
#: Human-readable names with units, for tables and figures.
METRIC_LABELS: dict[str, str] = {
    "dice": "Dice",
    "hd95": "HD95 (mm)",
    "surface_dice": "Surface Dice",
    "volume_pred_ml": "Predicted volume (ml)",
    "volume_ref_ml": "Reference volume (ml)",
    "volume_diff_ml": "Volume difference (ml)",
    "volume_diff_rel": "Relative volume difference",
}


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice similarity coefficient ``2 |P ∩ R| / (|P| + |R|)``.

    Args:
        prediction: boolean (or 0/1) mask.
        reference: boolean (or 0/1) mask of the same shape.

    Returns:
        Dice in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    pred, ref = _as_masks(prediction, reference)
    total = int(pred.sum()) + int(ref.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(pred, ref).sum()) / total


def hausdorff_distance_95(prediction: np.ndarray, reference: np.ndarray, spacing: Spacing = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between the mask surfaces, in mm.

    ``HD95 = max(P95{d(p, S_R) : p in S_P}, P95{d(r, S_P) : r in S_R})`` where ``S_P`` and ``S_R``
    are the surface voxels of prediction and reference and ``d`` the Euclidean distance in mm
    (percentiles with linear interpolation, as MONAI's ``compute_hausdorff_distance(percentile=95)``).

    Args:
        prediction: boolean mask (z, y, x).
        reference: boolean mask of the same shape.
        spacing: voxel size in mm in array order; None means 1 mm isotropic.

    Returns:
        HD95 in mm; 0.0 when both masks are empty, nan when exactly one is.
    """
    pred, ref = _as_masks(prediction, reference)
    empty = _empty_case(pred, ref)
    if empty is not None:
        return 0.0 if empty == "both" else float("nan")
    d_pred_to_ref, d_ref_to_pred = _surface_distances(pred, ref, _spacing(spacing, pred.ndim))
    return float(max(np.percentile(d_pred_to_ref, 95), np.percentile(d_ref_to_pred, 95)))


def surface_dice(prediction: np.ndarray, reference: np.ndarray, spacing: Spacing = None,
                 tolerance_mm: float = 2.0) -> float:
    """Normalised surface Dice at a tolerance (Nikolov et al., 2021), counted over surface voxels.

    ``NSD = (|{p in S_P : d(p, S_R) <= tau}| + |{r in S_R : d(r, S_P) <= tau}|) / (|S_P| + |S_R|)``:
    the fraction of both surfaces lying within ``tau`` mm of the other surface. Equal to MONAI's
    ``compute_surface_dice`` with ``use_subvoxels=False``.

    Args:
        prediction: boolean mask (z, y, x).
        reference: boolean mask of the same shape.
        spacing: voxel size in mm in array order; None means 1 mm isotropic.
        tolerance_mm: the accepted boundary deviation ``tau`` in mm (>= 0).

    Returns:
        Surface Dice in [0, 1]; 1.0 when both masks are empty, 0.0 when exactly one is.
    """
    if not np.isfinite(tolerance_mm) or tolerance_mm < 0:
        raise ValueError(f"tolerance_mm must be a finite number >= 0, got {tolerance_mm}")
    pred, ref = _as_masks(prediction, reference)
    empty = _empty_case(pred, ref)
    if empty is not None:
        return 1.0 if empty == "both" else 0.0
    d_pred_to_ref, d_ref_to_pred = _surface_distances(pred, ref, _spacing(spacing, pred.ndim))
    within = int((d_pred_to_ref <= tolerance_mm).sum()) + int((d_ref_to_pred <= tolerance_mm).sum())
    return within / (d_pred_to_ref.size + d_ref_to_pred.size)


def volume_difference(prediction: np.ndarray, reference: np.ndarray,
                      spacing: Spacing = None) -> dict[str, float]:
    """Volumes of both masks and their difference, in millilitres (1 ml = 1000 mm³).

    Returns:
        ``volume_pred_ml``, ``volume_ref_ml``, ``volume_diff_ml`` (prediction minus reference) and
        ``volume_diff_rel`` (difference over the reference volume; nan when the reference is empty).
    """
    pred, ref = _as_masks(prediction, reference)
    voxel_ml = float(np.prod(_spacing(spacing, pred.ndim))) / 1000.0
    volume_pred = int(pred.sum()) * voxel_ml
    volume_ref = int(ref.sum()) * voxel_ml
    difference = volume_pred - volume_ref
    return {
        "volume_pred_ml": volume_pred,
        "volume_ref_ml": volume_ref,
        "volume_diff_ml": difference,
        "volume_diff_rel": difference / volume_ref if volume_ref > 0 else float("nan"),
    }


def segmentation_metrics(prediction: np.ndarray, reference: np.ndarray, spacing: Spacing = None,
                         tolerance_mm: float = 2.0) -> dict[str, float]:
    """All metrics of this module for one mask pair, sharing one surface-distance computation.

    Returns:
        A dict with the keys of :data:`METRIC_NAMES`: ``dice``, ``hd95`` (mm), ``surface_dice``
        (at ``tolerance_mm``) and the four volume entries of :func:`volume_difference`.
    """
    pred, ref = _as_masks(prediction, reference)
    sampling = _spacing(spacing, pred.ndim)
    result = {"dice": dice(pred, ref)}
    empty = _empty_case(pred, ref)
    if empty is None:
        d_pred_to_ref, d_ref_to_pred = _surface_distances(pred, ref, sampling)
        result["hd95"] = float(max(np.percentile(d_pred_to_ref, 95), np.percentile(d_ref_to_pred, 95)))
        within = int((d_pred_to_ref <= tolerance_mm).sum()) + int((d_ref_to_pred <= tolerance_mm).sum())
        result["surface_dice"] = within / (d_pred_to_ref.size + d_ref_to_pred.size)
    else:
        result["hd95"] = 0.0 if empty == "both" else float("nan")
        result["surface_dice"] = 1.0 if empty == "both" else 0.0
    result.update(volume_difference(pred, ref, sampling))
    return result


# ---------------------------------------------------------------------- internals
def _as_masks(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(prediction).astype(bool, copy=False)
    ref = np.asarray(reference).astype(bool, copy=False)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    return pred, ref


def _spacing(spacing: Spacing, ndim: int) -> np.ndarray:
    if spacing is None:
        return np.ones(ndim)
    values = np.broadcast_to(np.asarray(spacing, dtype=float), (ndim,)).copy()
    if np.any(values <= 0) or not np.all(np.isfinite(values)):
        raise ValueError(f"spacing must be positive and finite, got {tuple(values)}")
    return values


def _empty_case(pred: np.ndarray, ref: np.ndarray) -> str | None:
    has_pred, has_ref = bool(pred.any()), bool(ref.any())
    if not has_pred and not has_ref:
        return "both"
    if has_pred != has_ref:
        return "one"
    return None


def _surface_distances(pred: np.ndarray, ref: np.ndarray,
                       spacing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each prediction surface voxel to the reference surface, and back.

    Both masks must be non-empty. The work is confined to the bounding box of both masks plus a
    one-voxel margin (the margin keeps the erosion exact; outside the image, background is assumed
    as in MONAI). Nearest surface voxels are found with a k-d tree over physical coordinates, which
    scales with the surface size rather than the box volume (MONAI does the same on CPU).
    """
    union = pred | ref
    box = tuple(slice(max(int(idx.min()) - 1, 0), int(idx.max()) + 2) for idx in np.nonzero(union))
    surface_pred = _surface(pred[box])
    surface_ref = _surface(ref[box])
    points_pred = np.argwhere(surface_pred) * spacing
    points_ref = np.argwhere(surface_ref) * spacing
    d_pred_to_ref = cKDTree(points_ref, leafsize=32).query(points_pred, k=1)[0]
    d_ref_to_pred = cKDTree(points_pred, leafsize=32).query(points_ref, k=1)[0]
    return d_pred_to_ref, d_ref_to_pred


def _surface(mask: np.ndarray) -> np.ndarray:
    # border_value=0: a mask touching the image border has its border voxels on the surface.
    return mask & ~ndimage.binary_erosion(mask, border_value=0)
