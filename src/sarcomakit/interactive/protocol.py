"""What an interactive segmentation model is: one ``predict`` call from prompts to a mask in a region.

The session, the ROI growth and the evaluation know models only through this protocol, so the
classical baselines (random walker, geodesic) and a trained network are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from sarcomakit.core.io.image import Geometry
from sarcomakit.interactive.prompts import Prompt
from sarcomakit.interactive.roi import Roi


@runtime_checkable
class InteractiveModel(Protocol):
    """A model that turns an image, the prompts so far and the current mask into a mask in a ROI.

    Implementations may also define ``name`` (a short label for tables), ``n_channels`` (the
    number of image channels they accept; absent or None means any), which the session checks, and
    ``prepare(image, *, spacing, geometry)`` (see :class:`PreparingModel`): a session then calls it once
    for its image and passes what it returned as ``image`` to every ``predict``, so that work done
    once per image (resampling, normalisation) is not repeated at each interaction.
    """

    def predict(self, image: np.ndarray, prompts: Sequence[Prompt], previous_mask: np.ndarray | None,
                roi: Roi, *, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Predict the object inside ``roi``.

        Args:
            image: the whole image, ``(C, Z, Y, X)`` float array in the original voxel grid
                (never modified), or what the model's ``prepare`` returned for it.
            prompts: every prompt so far, in order, in voxel indices of the whole image; the
                session has checked they lie inside it.
            previous_mask: the current mask on the whole grid ``(Z, Y, X)``, or None before
                the first prediction.
            roi: the region to predict, in voxel indices of the whole image.
            spacing: voxel size in mm in array order, None when unknown (1 mm assumed).

        Returns:
            Boolean mask of shape ``roi.shape``.
        """
        ...


@runtime_checkable
class PreparingModel(InteractiveModel, Protocol):
    """An interactive model with a once-per-image step (the plan's preprocessing of a network)."""

    def prepare(self, image: np.ndarray, *, spacing: Sequence[float] | None = None,
                geometry: Geometry | None = None) -> object:
        """Work done once for ``image`` (``(C, Z, Y, X)``, original grid), passed back as ``image`` to ``predict``.

        Args:
            image: the whole image (never modified).
            spacing: voxel size in mm in array order.
            geometry: the image's grid (origin, spacing, direction), None when only the spacing is known.
        """
        ...
