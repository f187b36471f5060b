"""Small synthetic volumes for the interactive tests: objects in noise, with their reference masks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ellipsoid(shape: Sequence[int], centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Boolean ellipsoid with the given centre and radii, in voxels."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1


def sphere_in_noise(seed: int = 0, shape: Sequence[int] = (28, 32, 32), radius: float = 8.0,
                    noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """A bright sphere (contrast 1) in Gaussian noise of standard deviation ``noise``: image, reference."""
    rng = np.random.default_rng(seed)
    reference = ellipsoid(shape, np.asarray(shape) / 2, (radius,) * 3)
    image = reference.astype(np.float32) + rng.normal(0, noise, shape).astype(np.float32)
    return image, reference


def elongated_with_neighbour(seed: int = 0, shape: Sequence[int] = (36, 28, 28),
                             noise: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A long ellipsoid touching a look-alike neighbour in strong noise: one round leaves errors to correct."""
    rng = np.random.default_rng(seed)
    centre = np.asarray(shape) / 2
    reference = ellipsoid(shape, centre, (13, 6, 7))
    neighbour = ellipsoid(shape, centre + np.array([5, 0, 11]), (5, 4, 4))
    image = (reference | neighbour).astype(np.float32) + rng.normal(0, noise, shape).astype(np.float32)
    return image, reference


def c_shape(shape: Sequence[int] = (12, 40, 40)) -> np.ndarray:
    """A non-convex object: a thick ring open on one side, extruded over the middle slices."""
    _, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    radius = np.hypot(y - shape[1] / 2, x - shape[2] / 2)
    ring = (radius >= 8) & (radius <= 15) & ~((x > shape[2] / 2) & (np.abs(y - shape[1] / 2) < 5))
    mask = np.zeros(shape, bool)
    mask[3:-3] = ring[3:-3]
    return mask

