"""Classical interactive segmentation needing no training: a random walker and a geodesic classifier.

Both implement :class:`~sarcomakit.interactive.protocol.InteractiveModel`, so they run in a
session and in the evaluation exactly like a network; they are the floor a trained model must
beat and a fallback that works on any modality.

Common rules, applied inside the ROI the session passes:

- each image channel is standardised by its median and interquartile range inside the ROI, so
  one ``beta`` / ``contrast`` suits CT, MRI and PET alike;
- seeds are the rasterised prompts (a later prompt overrides an earlier one on shared voxels); a
  positive box gives its outline as background and its centre voxel as foreground;
- with positive prompts only (clicks, extreme points), the ROI faces that are not the image
  border (all faces when the ROI is the whole image) become background seeds: the assumption
  of box-initialised methods (GrabCut, InteractiveNet's crop around extreme points) that the
  object lies inside its box;
- each channel is smoothed by a Gaussian of ``smoothing_mm`` so that noise does not build walls;
- without a positive prompt in the ROI the prediction is empty;
- the result keeps only the connected components that contain a positive seed, so stray
  look-alike regions do not appear.

:class:`RandomWalkerModel` uses ``skimage.segmentation.random_walker`` (Grady 2006) on all
channels at once (``channel_axis``) with the voxel spacing. :class:`GeodesicModel` labels a voxel
foreground when its geodesic distance to the positive seeds is smaller than to the negative ones
(GeoS, Criminisi et al. 2008; the geodesic maps of InteractiveNet and DeepIGeoS), with the local
cost ``sqrt(1 + (contrast * |grad I|)^2)`` per mm. The distances come from
``skimage.graph.MCP_Geometric`` (Dijkstra on the 26-neighbour voxel graph, exact path lengths
under anisotropic spacing), which is already a dependency: FastGeodis needs a build against the
installed torch and GeodisTK a C++ build, a cost out of proportion to a baseline, and a
Dijkstra distance is exact where their raster scans approximate.

Known limitation: clicks on the object's boundary (InteractiveNet's extreme points) starve the
random walker: a seed on an edge couples weakly to the interior, which then drifts to the much
longer ROI border (Dice about 0.2 on a sphere in noise, where the geodesic model reaches about
0.8). Extreme points are meant for a network fed with distance maps, as InteractiveNet does.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.graph import MCP_Geometric
from skimage.segmentation import random_walker

from sarcomakit.interactive.prompts import Box, Click, Prompt, Scribble, rasterize_prompts
from sarcomakit.interactive.roi import Roi


class RandomWalkerModel:
    """Scribble-seeded random walker (``skimage.segmentation.random_walker``), multichannel.

    Args:
        beta: edge-weight penalty of intensity differences (skimage's ``beta``, which skimage
            divides by ten times the data's standard deviation); larger values follow edges more
            strictly. The default suits the standardised, smoothed channels used here: with
            skimage's default of 130, seeds drawn on one slice leak into every other slice.
        smoothing_mm: standard deviation in mm of a Gaussian applied to each channel first, so
            that noise does not make walls (0: none).
        tol: tolerance of the conjugate-gradient solver.
    """

    name = "random_walker"
    n_channels: int | None = None

    def __init__(self, beta: float = 2000.0, smoothing_mm: float = 1.0, tol: float = 1e-3) -> None:
        self.beta = float(beta)
        self.smoothing_mm = float(smoothing_mm)
        self.tol = float(tol)

    def predict(self, image: np.ndarray, prompts: Sequence[Prompt], previous_mask: np.ndarray | None,
                roi: Roi, *, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Random-walker foreground in ``roi`` (see :class:`~sarcomakit.interactive.protocol.InteractiveModel`)."""
        seeds = roi_seeds(prompts, image.shape[1:], roi)
        if seeds is None:
            return np.zeros(roi.shape, dtype=bool)
        positive, negative = seeds
        labels = np.zeros(roi.shape, dtype=np.int32)
        labels[negative] = 2
        labels[positive] = 1
        sampling = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
        data = smooth(standardise(image[(slice(None), *roi.slices)]), self.smoothing_mm, sampling)
        with warnings.catch_warnings():
            # Strong edges make the linear system stiff and skimage warns that probabilities
            # leave [0, 1] by more than its tolerance; the labels (argmax) are unaffected.
            warnings.filterwarnings("ignore", message="The probability range is outside", category=UserWarning)
            segmentation = random_walker(np.moveaxis(data, 0, -1), labels, beta=self.beta, mode="cg_j", tol=self.tol,
                                         spacing=sampling, channel_axis=-1)
        return keep_seeded_components(segmentation == 1, positive)


class GeodesicModel:
    """GeoS-style segmentation: foreground where the geodesic distance to positive seeds is the smaller.

    Args:
        contrast: weight ``gamma`` of the image gradient in the local cost; 0 gives Euclidean
            distances (a Voronoi split between the seeds).
        smoothing_mm: standard deviation in mm of the Gaussian applied before the gradient, which
            keeps noise from building walls.
    """

    name = "geodesic"
    n_channels: int | None = None

    def __init__(self, contrast: float = 30.0, smoothing_mm: float = 1.0) -> None:
        self.contrast = float(contrast)
        self.smoothing_mm = float(smoothing_mm)

    def predict(self, image: np.ndarray, prompts: Sequence[Prompt], previous_mask: np.ndarray | None,
                roi: Roi, *, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Geodesic foreground in ``roi`` (see :class:`~sarcomakit.interactive.protocol.InteractiveModel`)."""
        seeds = roi_seeds(prompts, image.shape[1:], roi)
        if seeds is None:
            return np.zeros(roi.shape, dtype=bool)
        positive, negative = seeds
        sampling = np.ones(3) if spacing is None else np.asarray(spacing, dtype=float)
        data = smooth(standardise(image[(slice(None), *roi.slices)]), self.smoothing_mm, sampling)
        cost = self.local_cost(data, sampling)
        to_positive = _geodesic_distance(cost, positive, sampling)
        to_negative = _geodesic_distance(cost, negative, sampling)
        return keep_seeded_components(to_positive < to_negative, positive)

    def local_cost(self, data: np.ndarray, sampling: np.ndarray) -> np.ndarray:
        """``sqrt(1 + (contrast * |grad I|)^2)`` per mm, the gradient summed over channels in quadrature."""
        squared = np.zeros(data.shape[1:], dtype=np.float64)
        for channel in data:
            for derivative in np.gradient(channel, *sampling):
                squared += derivative.astype(np.float64) ** 2
        return np.sqrt(1.0 + self.contrast**2 * squared)


def standardise(crop: np.ndarray) -> np.ndarray:
    """Each channel of ``(C, ...)`` minus its median, over its interquartile range (std when that is 0), float32."""
    data = np.asarray(crop, dtype=np.float32)
    out = np.empty_like(data)
    for c, channel in enumerate(data):
        low, median, high = np.percentile(channel, (25, 50, 75))
        scale = float(high - low) or float(channel.std()) or 1.0
        out[c] = (channel - median) / scale
    return out


def smooth(data: np.ndarray, sigma_mm: float, sampling: np.ndarray) -> np.ndarray:
    """Each channel of ``(C, ...)`` smoothed by a Gaussian of ``sigma_mm`` (mm, per-axis ``sampling``)."""
    if sigma_mm <= 0:
        return data
    return np.stack([ndimage.gaussian_filter(channel, sigma=sigma_mm / sampling) for channel in data])


def roi_seeds(prompts: Sequence[Prompt], image_shape: Sequence[int],
              roi: Roi) -> tuple[np.ndarray, np.ndarray] | None:
    """Positive and negative seed maps in ``roi``; inner ROI faces become negative without negative prompts.

    Returns:
        ``(positive, negative)`` boolean arrays of ``roi.shape``, or None when no positive seed
        lies in the ROI (nothing to segment).
    """
    positive, negative = rasterize_prompts(box_as_seeds(prompts), image_shape, roi)
    if not positive.any():
        return None
    if not negative.any():
        negative = inner_faces(roi, image_shape) & ~positive
    if not negative.any():  # the ROI is the whole image: its border is the only background left
        negative = inner_faces(roi, image_shape, include_image_border=True) & ~positive
    return positive, negative


def box_as_seeds(prompts: Sequence[Prompt]) -> list[Prompt]:
    """Prompts with each positive box replaced by seeds a seeded method can use.

    A box drawn around an object holds background in its corners, so its filled rectangle (the
    network encoding) would be wrong as foreground seeds. As in box-initialised methods, its
    outline on its slice becomes a negative scribble and its centre voxel a positive click.
    Negative boxes stay as they are: all of a box drawn on background is background.
    """
    seeds: list[Prompt] = []
    for prompt in prompts:
        if isinstance(prompt, Box) and prompt.positive:
            voxels = prompt.covered_voxels()
            low, high = np.asarray(prompt.start), np.asarray(prompt.stop)
            on_edge = np.zeros(len(voxels), dtype=bool)
            for axis in range(3):
                if low[axis] != high[axis]:
                    on_edge |= (voxels[:, axis] == low[axis]) | (voxels[:, axis] == high[axis])
            outline = voxels[on_edge]
            seeds.append(Scribble.from_voxels(outline, positive=False, axis=prompt.axis))
            seeds.append(Click.from_voxel((low + high) // 2, positive=True))
        else:
            seeds.append(prompt)
    return seeds


def inner_faces(roi: Roi, image_shape: Sequence[int], *, include_image_border: bool = False) -> np.ndarray:
    """Boolean map (``roi.shape``) of the ROI faces that are not on the image border (or of all faces)."""
    faces = np.zeros(roi.shape, dtype=bool)
    for axis in range(len(roi.shape)):
        index: list[slice | int] = [slice(None)] * len(roi.shape)
        if include_image_border or roi.start[axis] > 0:
            index[axis] = 0
            faces[tuple(index)] = True
        if include_image_border or roi.stop[axis] < int(image_shape[axis]):
            index[axis] = -1
            faces[tuple(index)] = True
    return faces


def keep_seeded_components(mask: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """The connected components (26-connectivity) of ``mask`` that contain a positive seed."""
    labels, _ = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    kept = np.unique(labels[positive & mask])
    return np.isin(labels, kept[kept > 0])


def _geodesic_distance(cost: np.ndarray, seeds: np.ndarray, sampling: np.ndarray) -> np.ndarray:
    if not seeds.any():
        return np.full(cost.shape, np.inf)
    distances, _ = MCP_Geometric(cost, sampling=tuple(sampling)).find_costs([tuple(p) for p in np.argwhere(seeds)])
    return distances
