"""Thresholding baseline for tumour segmentation: bright on T2FS, inside the body, largest component.

The classic unsupervised recipe a radiologist's script would use on fat-suppressed T2 images:

1. body mask: voxels above the lower multi-Otsu threshold of the body channel (air vs tissue), holes filled,
   eroded by ``skin_voxels`` to drop the skin;
2. candidates: body voxels above a threshold on the T2FS channel: the upper of the two multi-Otsu
   thresholds (dark / intermediate / bright) by default, or a percentile of the body's intensities;
3. the largest 3D connected component of the candidates, with its holes filled.

Learned models should beat it clearly: oedema, fluid, vessels, failed fat suppression and coil bias
are as bright as tumour on T2FS, and fibrous tumour is not bright at all.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

from sarcomakit.core.errors import UserInputError


def threshold_baseline(images: dict[str, np.ndarray], *, channel: str = "T2FS", body_channel: str | None = None,
                       method: Literal["otsu", "percentile"] = "otsu", percentile: float = 97.0,
                       skin_voxels: int = 2) -> np.ndarray:
    """Segment the tumour by thresholding one channel; returns a uint8 mask of the input's shape.

    Args:
        images: channel name -> (z, y, x) array, all of one shape.
        channel: the channel to threshold (tumour bright).
        body_channel: the channel used for the body mask (default: T1 when given, else ``channel``).
        method: ``"otsu"`` (upper of three multi-Otsu classes inside the body) or ``"percentile"``.
        percentile: the body percentile used by ``method="percentile"``.
        skin_voxels: erosion of the body mask, in voxels.

    Returns:
        uint8 mask (1 = tumour) of the largest bright component; all zeros when nothing is bright.

    Raises:
        UserInputError: a requested channel is missing or the arrays disagree in shape.
    """
    if channel not in images:
        raise UserInputError(f"the thresholding baseline needs channel '{channel}' (given: {sorted(images)}).",
                             fix=f"give a cohort with {channel}, or choose another channel.")
    body_channel = body_channel or ("T1" if "T1" in images else channel)
    if body_channel not in images:
        raise UserInputError(f"body channel '{body_channel}' is missing (given: {sorted(images)}).",
                             fix="choose a body channel among the given ones.")
    target = np.asarray(images[channel], dtype=np.float32)
    reference = np.asarray(images[body_channel], dtype=np.float32)
    if target.shape != reference.shape:
        raise UserInputError(f"channels '{channel}' and '{body_channel}' differ in shape "
                             f"({target.shape} vs {reference.shape}).", fix="resample the channels to one grid.")

    # Lower of three multi-Otsu classes (air / soft tissue / fat or fluid) separates air from the body.
    body_cut = _otsu_cut(reference, lowest=True)
    if body_cut is None:
        return np.zeros(target.shape, np.uint8)
    body = ndimage.binary_fill_holes(reference > body_cut)
    body = ndimage.binary_erosion(body, iterations=skin_voxels) if skin_voxels > 0 else body
    if not body.any():
        return np.zeros(target.shape, np.uint8)
    inside = target[body]
    if method == "otsu":
        cut = _otsu_cut(inside, lowest=False)
        if cut is None:
            return np.zeros(target.shape, np.uint8)
    elif method == "percentile":
        cut = float(np.percentile(inside, percentile))
    else:
        raise UserInputError(f"unknown threshold method '{method}'.", fix="use 'otsu' or 'percentile'.")

    candidates = body & (target > cut)
    components, count = ndimage.label(candidates)
    if count == 0:
        return np.zeros(target.shape, np.uint8)
    sizes = np.bincount(components.ravel())[1:]
    largest = components == (int(np.argmax(sizes)) + 1)
    return ndimage.binary_fill_holes(largest).astype(np.uint8)


def _otsu_cut(values: np.ndarray, *, lowest: bool) -> float | None:
    """Lowest or highest of the three-class Otsu thresholds (two-class Otsu when only two levels exist).

    Returns None for constant input, where no threshold separates anything.
    """
    if values.size == 0 or float(values.min()) == float(values.max()):
        return None
    try:
        cuts = threshold_multiotsu(values, classes=3)
    except ValueError:  # fewer than three distinct levels
        return float(threshold_otsu(values))
    return float(cuts[0] if lowest else cuts[-1])
