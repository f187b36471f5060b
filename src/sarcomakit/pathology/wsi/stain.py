"""Stain normalisation (Macenko et al., 2009) and stain augmentation for H&E tiles.

Written here in numpy (about sixty lines) rather than depending on ``torchstain``, whose optional
torch backend pulls torchvision, which sarcomakit keeps out of its runtime dependencies.

Macenko's method, for an RGB image ``I`` with background intensity ``I0``:

1. optical density ``OD = -ln((I + 1) / I0)`` per channel;
2. drop transparent pixels: any channel with ``OD < beta`` (``beta = 0.15``);
3. the plane of the two largest eigenvectors of the OD covariance holds both stain vectors;
4. project the OD onto that plane, take the angle of each pixel, and the ``alpha`` and
   ``100 - alpha`` percentiles of the angle (``alpha = 1``) give the two extreme directions: the
   stain vectors, haematoxylin first (the one with the larger red OD);
5. stain concentrations ``C`` solve ``OD = C @ S`` in the least-squares sense; each stain's
   99th percentile ``max C`` measures its intensity.

Normalising an image to a reference keeps its concentrations, rescaled by ``max C_ref / max C``,
and recombines them with the reference's stain vectors: ``I = I0 * exp(-C' @ S_ref)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, overload

import numpy as np
import torch

from sarcomakit.core.errors import UserInputError

BACKGROUND_INTENSITY = 240.0
# Reference of Macenko et al. as used by most implementations (rows: haematoxylin, eosin; RGB OD).
STANDARD_STAIN_MATRIX = np.array([[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]])
STANDARD_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])
# Ruifrok & Johnston's haematoxylin, eosin and DAB optical-density vectors (unit rows), as in
# scikit-image's ``rgb_from_hed``.
HED_STAIN_MATRIX = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_STAIN_MATRIX = HED_STAIN_MATRIX / np.linalg.norm(HED_STAIN_MATRIX, axis=1, keepdims=True)
_MIN_STAINED_PIXELS = 50


def rgb_to_od(rgb: np.ndarray, background: float = BACKGROUND_INTENSITY) -> np.ndarray:
    """Optical density ``-ln((I + 1) / I0)``, clipped at 0, for ``uint8``-range RGB."""
    return np.maximum(-np.log((rgb.astype(np.float64) + 1.0) / background), 0.0)


def od_to_rgb(od: np.ndarray, background: float = BACKGROUND_INTENSITY) -> np.ndarray:
    """Inverse of :func:`rgb_to_od`, rounded and clipped to ``uint8``."""
    return np.clip(np.rint(background * np.exp(-od) - 1.0), 0, 255).astype(np.uint8)


def macenko_stain_matrix(rgb: np.ndarray, *, beta: float = 0.15, alpha: float = 1.0,
                         background: float = BACKGROUND_INTENSITY) -> np.ndarray:
    """Estimate the H&E stain vectors of an image (Macenko et al., 2009).

    Args:
        rgb: ``(..., 3)`` uint8 image.
        beta: OD threshold below which a pixel is background.
        alpha: percentile of the extreme angles (robust minimum and maximum).
        background: background intensity ``I0``.

    Returns:
        ``(2, 3)`` unit rows: haematoxylin, eosin OD vectors.

    Raises:
        ValueError: fewer than 50 stained pixels.
    """
    od = rgb_to_od(rgb, background).reshape(-1, 3)
    stained = od[np.all(od >= beta, axis=1)]
    if len(stained) < _MIN_STAINED_PIXELS:
        raise ValueError(f"only {len(stained)} stained pixels: cannot estimate stain vectors")
    _, eigenvectors = np.linalg.eigh(np.cov(stained, rowvar=False))
    plane = eigenvectors[:, [2, 1]]  # largest two, largest first
    plane *= np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # orient both axes into the positive octant
    projected = stained @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angles, [alpha, 100.0 - alpha])
    vectors = [plane @ np.array([np.cos(angle), np.sin(angle)]) for angle in (low, high)]
    vectors = [vector * (-1.0 if vector.sum() < 0 else 1.0) for vector in vectors]
    haematoxylin, eosin = sorted(vectors, key=lambda vector: -vector[0])
    matrix = np.stack([haematoxylin, eosin])
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def stain_concentrations(rgb: np.ndarray, stain_matrix: np.ndarray,
                         background: float = BACKGROUND_INTENSITY) -> np.ndarray:
    """Least-squares concentrations ``C`` with ``OD = C @ stain_matrix``; shape ``(N, n_stains)``."""
    od = rgb_to_od(rgb, background).reshape(-1, 3)
    concentrations, *_ = np.linalg.lstsq(stain_matrix.T, od.T, rcond=None)
    return concentrations.T


class MacenkoNormalizer:
    """Map the H&E colours of an image onto those of a reference (Macenko et al., 2009).

    Args:
        beta: OD threshold of background pixels.
        alpha: angle percentile.
        background: background intensity ``I0``.

    Attributes (after :meth:`fit`):
        stain_matrix_: ``(2, 3)`` reference stain vectors (haematoxylin, eosin).
        max_concentrations_: ``(2,)`` reference 99th-percentile concentrations.

    Example:
        >>> normalizer = MacenkoNormalizer().fit(reference_tile)  # doctest: +SKIP
        >>> normalised = normalizer.transform(tile)  # doctest: +SKIP
    """

    def __init__(self, *, beta: float = 0.15, alpha: float = 1.0,
                 background: float = BACKGROUND_INTENSITY) -> None:
        self.beta = beta
        self.alpha = alpha
        self.background = background

    @classmethod
    def standard(cls, **kwargs: Any) -> MacenkoNormalizer:
        """A normaliser to the reference stains published with the method (no fitting needed)."""
        normalizer = cls(**kwargs)
        normalizer.stain_matrix_ = STANDARD_STAIN_MATRIX / np.linalg.norm(STANDARD_STAIN_MATRIX, axis=1,
                                                                          keepdims=True)
        normalizer.max_concentrations_ = STANDARD_MAX_CONCENTRATIONS.copy()
        return normalizer

    def _stains(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        matrix = macenko_stain_matrix(rgb, beta=self.beta, alpha=self.alpha, background=self.background)
        concentrations = stain_concentrations(rgb, matrix, self.background)
        return matrix, concentrations, np.percentile(concentrations, 99, axis=0)

    def fit(self, rgb: np.ndarray) -> MacenkoNormalizer:
        """Learn the reference stains from an RGB ``uint8`` image with enough stained tissue."""
        try:
            self.stain_matrix_, _, self.max_concentrations_ = self._stains(np.asarray(rgb))
        except ValueError as error:
            raise UserInputError(f"the stain reference image has too little stained tissue ({error}).",
                                 fix="choose a reference tile well covered by H&E-stained tissue.") from error
        return self

    def transform(self, rgb: np.ndarray) -> np.ndarray:
        """Normalise an RGB ``uint8`` image ``(..., 3)``; an image without stained tissue is returned as is."""
        if not hasattr(self, "stain_matrix_"):
            raise RuntimeError("MacenkoNormalizer is not fitted: call fit(reference) or use standard()")
        rgb = np.asarray(rgb)
        try:
            _, concentrations, max_concentrations = self._stains(rgb)
        except ValueError:
            return rgb.copy()
        scale = self.max_concentrations_ / np.maximum(max_concentrations, 1e-6)
        od = (concentrations * scale) @ self.stain_matrix_
        return od_to_rgb(od, self.background).reshape(rgb.shape)

    def fit_transform(self, rgb: np.ndarray) -> np.ndarray:
        return self.fit(rgb).transform(rgb)

    @overload
    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...

    @overload
    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """:meth:`transform` for arrays, or for tensors ``(3, H, W)``/``(B, 3, H, W)`` (uint8 or [0, 1]).

        So a fitted normaliser can be a :class:`~sarcomakit.pathology.wsi.tiles.TileDataset` transform.
        """
        if isinstance(image, torch.Tensor):
            return _apply_to_tensor(image, self.transform)
        return self.transform(image)


class StainAugment:
    """Random jitter of stain concentrations (Tellez et al., 2018), on RGB uint8 arrays or tensors.

    Each stain's concentration ``c`` becomes ``c * a + b`` with ``a ~ U(1 - sigma1, 1 + sigma1)``
    and ``b ~ U(-sigma2, sigma2)``, drawn per image and per stain, then the image is recomposed.
    Stains come from a fixed H&E-DAB matrix (``method="hed"``, fast, exact inverse) or from each
    image's Macenko estimate completed by their cross product (``method="macenko"``, falling back to
    H&E-DAB on images without enough stain). With both sigmas 0 the image is returned unchanged (up
    to rounding).

    Args:
        sigma1: multiplicative jitter range.
        sigma2: additive jitter range (optical density units).
        method: ``"hed"`` or ``"macenko"``.
        seed: seed of the random generator; inside DataLoader workers the worker id is mixed in, so
            workers draw different jitters and runs are reproducible.

    Accepts ``uint8`` arrays ``(H, W, 3)`` (returns ``uint8``) and float tensors in ``[0, 1]`` shaped
    ``(3, H, W)`` or ``(B, 3, H, W)`` (returns the same shape and dtype).
    """

    def __init__(self, sigma1: float = 0.2, sigma2: float = 0.05, *, method: str = "hed",
                 seed: int | None = None) -> None:
        if method not in ("hed", "macenko"):
            raise ValueError(f"method must be 'hed' or 'macenko', got {method!r}")
        if sigma1 < 0 or sigma2 < 0:
            raise ValueError("sigma1 and sigma2 must be non-negative")
        self.sigma1 = sigma1
        self.sigma2 = sigma2
        self.method = method
        self.seed = seed
        self._rng: np.random.Generator | None = None
        self._rng_worker: int | None = None

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        worker = -1 if info is None else info.id
        if self._rng is None or self._rng_worker != worker:
            entropy = None if self.seed is None else [self.seed, worker + 1]
            self._rng = np.random.default_rng(entropy)
            self._rng_worker = worker
        return self._rng

    def _matrix(self, rgb: np.ndarray) -> np.ndarray:
        if self.method == "hed":
            return HED_STAIN_MATRIX
        try:
            two = macenko_stain_matrix(rgb)
        except ValueError:
            return HED_STAIN_MATRIX
        third = np.cross(two[0], two[1])
        third = np.abs(third) / max(np.linalg.norm(third), 1e-8)
        matrix = np.vstack([two, third])
        return matrix if abs(np.linalg.det(matrix)) > 1e-3 else HED_STAIN_MATRIX

    def augment_array(self, rgb: np.ndarray) -> np.ndarray:
        """Jitter one ``uint8`` RGB image ``(H, W, 3)``."""
        rng = self._generator()
        matrix = self._matrix(rgb)
        od = rgb_to_od(rgb, 255.0).reshape(-1, 3)
        concentrations = od @ np.linalg.inv(matrix)
        scale = rng.uniform(1.0 - self.sigma1, 1.0 + self.sigma1, size=3)
        shift = rng.uniform(-self.sigma2, self.sigma2, size=3)
        od = (concentrations * scale + shift) @ matrix
        return od_to_rgb(od, 255.0).reshape(rgb.shape)

    @overload
    def __call__(self, image: torch.Tensor) -> torch.Tensor: ...

    @overload
    def __call__(self, image: np.ndarray) -> np.ndarray: ...

    def __call__(self, image: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if isinstance(image, torch.Tensor):
            return _apply_to_tensor(image, self.augment_array)
        return self.augment_array(np.asarray(image))


def _apply_to_tensor(tensor: torch.Tensor, function: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Apply an RGB uint8 function to a ``(3, H, W)`` or ``(B, 3, H, W)`` tensor in [0, 1] or uint8."""
    batched = tensor.ndim == 4
    images = tensor if batched else tensor.unsqueeze(0)
    as_uint8 = images.dtype == torch.uint8
    arrays = images.detach().cpu()
    if not as_uint8:
        arrays = (arrays.float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    outputs = [torch.from_numpy(function(array.permute(1, 2, 0).numpy())).permute(2, 0, 1) for array in arrays]
    result = torch.stack(outputs)
    if not as_uint8:
        result = result.to(tensor.dtype) / 255.0
    result = result.to(tensor.device)
    return result if batched else result[0]
