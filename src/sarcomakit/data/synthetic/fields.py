"""Smooth random fields defined at every physical point: the procedural noise behind shapes, textures and bias.

A field is a sum of random plane waves (random Fourier features),

.. math:: f(p) = \\sqrt{2/K} \\sum_{k=1}^{K} \\cos(\\omega_k \\cdot p + \\varphi_k),

with directions uniform on the sphere, wavelengths :math:`2\\pi/|\\omega_k|` log-uniform in a range and
phases uniform in :math:`[0, 2\\pi)`; each term has variance 1/2, so :math:`f` has zero mean and unit
variance. Written by hand rather than filtering white noise on the voxel grid (scipy, MONAI) because a
grid-based field changes with the voxel spacing, whereas this one is a function of position in
millimetres: the same case rendered on two grids shows the same anatomy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Points = tuple[np.ndarray, np.ndarray, np.ndarray]
"""Physical coordinates (x, y, z) in mm of the points to evaluate; arrays that broadcast together."""


def broadcast_shape(points: Points) -> tuple[int, ...]:
    """Shape of the arrays that ``points`` broadcast to."""
    return np.broadcast_shapes(*(p.shape for p in points))


@dataclass(frozen=True)
class SmoothField:
    """A zero-mean, unit-variance random field :math:`f(p)` made of ``K`` plane waves.

    Attributes:
        wavevectors: (K, 3) angular wave vectors in rad/mm, physical (x, y, z) order.
        phases: (K,) phases in radians.
    """

    wavevectors: np.ndarray
    phases: np.ndarray

    @classmethod
    def draw(cls, rng: np.random.Generator, wavelength_mm: tuple[float, float], n_waves: int = 8,
             stretch: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> SmoothField:
        """Draw a field whose wavelengths lie in ``wavelength_mm`` (log-uniform).

        Args:
            rng: the random generator (the only source of randomness).
            wavelength_mm: (shortest, longest) wavelength in mm.
            n_waves: number of plane waves K; 6-12 gives a natural-looking field.
            stretch: per-axis factor on the wavelength, e.g. (1, 1, 3) for structures elongated along z.
        """
        directions = rng.normal(size=(n_waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        wavelengths = np.exp(rng.uniform(np.log(wavelength_mm[0]), np.log(wavelength_mm[1]), size=n_waves))
        wavevectors = 2 * np.pi * directions / wavelengths[:, None] / np.asarray(stretch)[None, :]
        return cls(wavevectors=wavevectors, phases=rng.uniform(0, 2 * np.pi, size=n_waves))

    def __call__(self, points: Points) -> np.ndarray:
        """Evaluate the field at ``points``; returns float32 of the broadcast shape."""
        x, y, z = (np.asarray(p, dtype=np.float32) for p in points)
        out = np.zeros(broadcast_shape((x, y, z)), dtype=np.float32)
        for (kx, ky, kz), phase in zip(self.wavevectors, self.phases, strict=True):
            argument = np.float32(kx) * x + np.float32(ky) * y + np.float32(kz) * z + np.float32(phase)
            out += np.cos(argument)
        out *= np.float32(np.sqrt(2.0 / len(self.phases)))
        return out
