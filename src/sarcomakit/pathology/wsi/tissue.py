"""Tissue detection on a low-resolution level: saturation + Otsu, pen marks and debris removed.

Stained tissue is saturated (pink/purple) while glass is white or grey, so a threshold on the HSV
saturation (Otsu's, never below a floor so that an empty slide stays empty) separates tissue from
background. Marker pen is saturated too, but its colour differs from H&E: in H&E the green channel is
the most absorbed (eosin absorbs green, haematoxylin red and green), whereas blue and green markers
leave green brighter than red; black marker and dust are dark and unsaturated. Those pixels are
removed, then small fragments are dropped and small holes filled, with areas given in square
microns so that the result does not depend on the level the mask was computed at.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import filters, morphology

from sarcomakit.pathology.wsi.reader import SlideReader

# Otsu's threshold is not allowed below this saturation: white glass with JPEG noise stays background.
MIN_TISSUE_SATURATION = 0.07
# Pixels above this fraction of Otsu's threshold are tissue if connected to pixels above it.
_HYSTERESIS_LOW_FRACTION = 0.5
# Pen: green brighter than red by this many grey levels (blue and green markers) with some colour ...
_PEN_GREEN_OVER_RED = 12
_PEN_MIN_SATURATION = 0.15
# ... or darker than this in every channel (black marker, dust, folds of dark debris).
_PEN_MAX_BRIGHTNESS = 70
# Pen strokes are widened by this distance to remove their anti-aliased, JPEG-blurred edges.
_PEN_MARGIN_UM = 8.0


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask over the whole slide.

    Attributes:
        mask: ``(h, w)`` bool, True on tissue.
        downsample: level-0 pixels per mask pixel (``level_dimensions[0][0] / w``).
        level: the pyramid level the mask was computed from.
        pen: ``(h, w)`` bool, pen marks found (excluded from ``mask``).
    """

    mask: np.ndarray
    downsample: float
    level: int
    pen: np.ndarray | None = None

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def is_empty(self) -> bool:
        return not bool(self.mask.any())


def read_low_resolution(reader: SlideReader, target_mpp: float) -> tuple[np.ndarray, float, int]:
    """Read the whole slide at about ``target_mpp`` µm/px.

    The coarsest level not coarser than needed is read whole when its resolution is within 25 % of
    the target, otherwise it is read block by block and resized (with antialiasing) to the target.

    Returns:
        ``(rgb, downsample, level)`` where ``downsample`` is level-0 pixels per returned pixel (x).
    """
    width0 = reader.level_dimensions[0][0]
    wanted = max(target_mpp / reader.mpp[0], 1.0)
    level = reader.best_level_for_downsample(wanted)
    if wanted / reader.level_downsamples[level] > 1.25:
        rgb = reader.read_whole_slide(wanted)
    else:
        rgb = reader.read_region((0, 0), level, reader.level_dimensions[level])
    return rgb, width0 / rgb.shape[1], level


def hsv_saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation ``(max - min) / max`` (0 where max is 0) as float32.

    Computed directly: ``skimage.color.rgb2hsv`` also computes hue, in float64, and is tens of times
    slower on a whole-slide overview for the one channel needed here.
    """
    high = rgb.max(axis=-1).astype(np.float32)
    low = rgb.min(axis=-1).astype(np.float32)
    return np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)


def pen_mask(rgb: np.ndarray, saturation: np.ndarray | None = None) -> np.ndarray:
    """Pixels of blue, green or black marker (and dark debris); ``saturation`` may be passed if known."""
    rgb_int = rgb.astype(np.int16)
    red, green = rgb_int[..., 0], rgb_int[..., 1]
    if saturation is None:
        saturation = hsv_saturation(rgb)
    coloured_pen = (green - red > _PEN_GREEN_OVER_RED) & (saturation > _PEN_MIN_SATURATION)
    dark = rgb_int.max(axis=-1) < _PEN_MAX_BRIGHTNESS
    return coloured_pen | dark


def _remove_small_fragments(tissue: np.ndarray, pen: np.ndarray, min_pixels: int) -> np.ndarray:
    """Drop tissue fragments with fewer than ``min_pixels`` tissue pixels.

    Fragments are the connected components of tissue *and pen*, so that tissue a marker stroke cuts
    into pieces is judged as the whole piece it was before the stroke, not as small fragments.
    """
    labels, count = ndimage.label(tissue | pen)
    tissue_pixels = np.bincount(labels[tissue], minlength=count + 1)
    keep = tissue_pixels >= min_pixels
    keep[0] = False
    return tissue & keep[labels]


def detect_tissue(reader: SlideReader, *, target_mpp: float = 8.0, min_area_um2: float = 20_000.0,
                  hole_area_um2: float = 20_000.0, exclude_pen: bool = True) -> TissueMask:
    """Find the tissue on a slide.

    Steps, at about ``target_mpp`` µm/px: HSV saturation smoothed by a Gaussian (sigma 0.5 px);
    Otsu's threshold ``t`` over the non-pen pixels, floored at :data:`MIN_TISSUE_SATURATION`;
    hysteresis thresholding between ``t / 2`` and ``t`` (pale fat attached to stained tissue is kept);
    pen marks (widened by 8 µm) removed; a binary closing (radius 2 px); holes up to ``hole_area_um2``
    filled; a binary opening (radius 1 px); fragments below ``min_area_um2`` removed (pen strokes count
    as tissue when judging a fragment's extent).

    Args:
        reader: an open slide.
        target_mpp: resolution of the mask in µm/px (8 µm/px is about a 1.25x objective).
        min_area_um2: smallest tissue fragment kept, in µm² (default 0.02 mm², ~140 µm across).
        hole_area_um2: largest hole filled, in µm² (fat vacuoles and cracks inside tissue).
        exclude_pen: remove marker pen and dark debris.

    Returns:
        A :class:`TissueMask`; its ``mask`` is all False when there is no tissue (the caller decides
        whether that is an error).
    """
    rgb, downsample, level = read_low_resolution(reader, target_mpp)
    pixel_area_um2 = (downsample * reader.mpp[0]) * (downsample * reader.mpp[1])
    raw_saturation = hsv_saturation(rgb)
    saturation = filters.gaussian(raw_saturation, sigma=0.5)
    pen = pen_mask(rgb, raw_saturation) if exclude_pen else np.zeros(rgb.shape[:2], bool)
    if exclude_pen and pen.any():
        margin_px = max(1, round(_PEN_MARGIN_UM / (downsample * reader.mpp[0])))
        pen = ndimage.binary_dilation(pen, structure=morphology.disk(margin_px))
    candidates = saturation[~pen]
    threshold = MIN_TISSUE_SATURATION
    if candidates.size and candidates.max() > candidates.min():
        threshold = max(threshold, float(filters.threshold_otsu(candidates)))
    # Hysteresis: pale tissue (fat, oedema) joins the mask where it touches clearly stained tissue.
    low = max(MIN_TISSUE_SATURATION, _HYSTERESIS_LOW_FRACTION * threshold)
    tissue = filters.apply_hysteresis_threshold(np.where(pen, 0.0, saturation), low, threshold)
    # Closing bridges thin septa (fat) before hole filling; opening then drops thin strands of noise.
    tissue = ndimage.binary_closing(tissue, structure=morphology.disk(2), border_value=0)
    tissue = morphology.remove_small_holes(tissue, max_size=max(1, round(hole_area_um2 / pixel_area_um2)))
    tissue = ndimage.binary_opening(tissue, structure=morphology.disk(1))
    tissue &= ~pen
    tissue = _remove_small_fragments(tissue, pen, max(1, round(min_area_um2 / pixel_area_um2)))
    return TissueMask(mask=tissue, downsample=downsample, level=level, pen=pen)
