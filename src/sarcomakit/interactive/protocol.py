"""What an interactive segmentation model is: one ``predict`` call from prompts to a mask in a region.

The session, the ROI growth and the evaluation know models only through this protocol, so the
classical baselines (random walker, geodesic) and a trained network are interchangeable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from sarcomakit.interactive.prompts import Prompt
from sarcomakit.interactive.roi import Roi


@runtime_checkable
class InteractiveModel(Protocol):
    """A model that turns an image, the prompts so far and the current mask into a mask in a ROI.

    Implementations may also define ``name`` (a short label for tables) and ``n_channels`` (the
    number of image channels they accept; absent or None means any), which the session checks.
    """

    def predict(self, image: np.ndarray, prompts: Sequence[Prompt], previous_mask: np.ndarray | None,
                roi: Roi, *, spacing: Sequence[float] | None = None) -> np.ndarray:
        """Predict the object inside ``roi``.

        Args:
            image: the whole image, ``(C, Z, Y, X)`` float array in the original voxel grid
                (never modified).
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
