"""Intensity normalisation schemes of the plan (nnU-Net's rules).

- ``"ct"``: clip to the dataset's foreground 0.5 / 99.5 percentiles, then subtract the dataset
  foreground mean and divide by its standard deviation: ``x' = (clip(x, lo, hi) - mean) / std``.
  Hounsfield units mean the same in every scan, so dataset-wide statistics are used.
- ``"zscore"``: per image, ``x' = (x - mean(x)) / std(x)``. With ``use_nonzero_mask`` the mean and
  standard deviation are taken inside the mask only and voxels outside it are set to 0 (MR images whose
  background is exactly 0, where the zeros would otherwise dominate the statistics).
- ``"percentile"``: per image, MONAI's ``ScaleIntensityRangePercentiles``: the 0.5 / 99.5 percentiles map
  to 0 / 1, values beyond are clipped (a fixed alternative to nnU-Net's rules, robust to outliers).
- ``"none"``: values are only cast to float32.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pydantic
from scipy import ndimage

NormalizationScheme = Literal["zscore", "ct", "percentile", "none"]
_EPS = 1e-8


class ChannelNormalization(pydantic.BaseModel):
    """How one channel is normalised; the CT statistics come from the dataset fingerprint."""

    model_config = pydantic.ConfigDict(extra="forbid")

    channel: str
    scheme: NormalizationScheme
    use_nonzero_mask: bool = False
    clip_low: float | None = None
    clip_high: float | None = None
    mean: float | None = None
    std: float | None = None

    @pydantic.model_validator(mode="after")
    def _ct_needs_statistics(self) -> ChannelNormalization:
        if self.scheme == "ct" and None in (self.clip_low, self.clip_high, self.mean, self.std):
            raise ValueError(f"channel {self.channel!r}: 'ct' needs clip_low, clip_high, mean and std")
        return self


def nonzero_mask(data: np.ndarray) -> np.ndarray:
    """Voxels nonzero in any channel of ``data`` (C, Z, Y, X), with enclosed holes filled (nnU-Net's mask)."""
    return ndimage.binary_fill_holes(np.any(data != 0, axis=0))


def normalize_channel(image: np.ndarray, spec: ChannelNormalization,
                      mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise one channel (Z, Y, X) according to ``spec``; returns a new float32 array.

    Args:
        image: the channel's voxels.
        spec: scheme and, for CT, the dataset statistics.
        mask: region for the z-score statistics, used when ``spec.use_nonzero_mask`` is true.
    """
    out = image.astype(np.float32, copy=True)
    if spec.scheme == "ct":
        if spec.std is None:  # the model's validator requires it for "ct"
            raise ValueError(f"channel {spec.channel!r}: 'ct' needs clip_low, clip_high, mean and std")
        np.clip(out, spec.clip_low, spec.clip_high, out=out)
        out -= np.float32(spec.mean)
        out /= np.float32(max(float(spec.std), _EPS))
    elif spec.scheme == "percentile":
        from monai.transforms import ScaleIntensityRangePercentiles

        scale = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
        out = np.asarray(scale(out), dtype=np.float32)
    elif spec.scheme == "zscore":
        if spec.use_nonzero_mask and mask is not None and mask.any():
            values = out[mask]
            mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
            out -= np.float32(mean)
            out /= np.float32(max(std, _EPS))
            out[~mask] = 0.0
        else:
            mean, std = float(out.mean(dtype=np.float64)), float(out.std(dtype=np.float64))
            out -= np.float32(mean)
            out /= np.float32(max(std, _EPS))
    return out


def normalize(data: np.ndarray, specs: list[ChannelNormalization],
              mask: np.ndarray | None = None) -> np.ndarray:
    """Normalise every channel of ``data`` (C, Z, Y, X) with its spec (same order); returns float32."""
    if len(specs) != data.shape[0]:
        raise ValueError(f"{data.shape[0]} channels but {len(specs)} normalisation specs")
    return np.stack([normalize_channel(data[c], spec, mask) for c, spec in enumerate(specs)])
