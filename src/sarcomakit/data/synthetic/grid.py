"""The voxel grid of one synthetic acquisition: where each voxel centre lies in physical space.

A voxel with index :math:`(i, j, k)` has its centre at :math:`p = o + D \\, \\mathrm{diag}(s) \\, (i, j, k)^T`
(origin :math:`o`, direction matrix :math:`D` whose columns are the index axes in patient LPS
coordinates, spacing :math:`s`), exactly as SimpleITK and the NIfTI sform define it. The synthetic
anatomy is evaluated at these centres, so a case written on any grid keeps its physical geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sarcomakit.core.io.image import Geometry
from sarcomakit.data.synthetic.fields import Points

# Direction matrices (columns: index axes i, j, k in LPS) of the acquisition orientations we simulate.
ORIENTATIONS: dict[str, np.ndarray] = {
    # slices stacked along the limb, rows along A-P, columns along R-L
    "axial": np.eye(3),
    # the same plane stored with both in-plane axes reversed (a RAS-writing converter)
    "axial-flipped": np.diag([-1.0, -1.0, 1.0]),
    # slices stacked from head to foot
    "axial-reversed": np.diag([1.0, -1.0, -1.0]),
    # coronal acquisition: columns R-L, rows head to foot, slices anterior to posterior
    "coronal": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),
}


@dataclass(frozen=True)
class Grid:
    """A voxel grid: size and spacing per index axis (i, j, k), origin (mm) and direction (3x3)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray

    @classmethod
    def covering(cls, centre: np.ndarray, extent_mm: np.ndarray, spacing: tuple[float, float, float],
                 direction: np.ndarray) -> Grid:
        """The grid of ``spacing`` and ``direction`` whose field of view covers ``extent_mm`` around ``centre``.

        Args:
            centre: physical centre of the field of view (x, y, z) in mm.
            extent_mm: field of view along the physical axes (x, y, z) in mm.
            spacing: voxel spacing along the index axes (i, j, k) in mm.
            direction: 3x3 signed permutation matrix (columns are the index axes).
        """
        physical_axis = np.abs(direction).argmax(axis=0)  # which physical axis each index axis runs along
        size = tuple(max(2, int(np.ceil(extent_mm[a] / s))) for a, s in zip(physical_axis, spacing, strict=True))
        half_span = (np.asarray(size) - 1) / 2 * np.asarray(spacing)
        origin = np.asarray(centre, dtype=float) - direction @ half_span
        return cls(size=(size[0], size[1], size[2]), spacing=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
                   origin=(float(origin[0]), float(origin[1]), float(origin[2])),
                   direction=np.asarray(direction, dtype=float))

    @property
    def array_shape(self) -> tuple[int, int, int]:
        """Shape of arrays on this grid, (k, j, i) = (z, y, x) as from ``sitk.GetArrayFromImage``."""
        return (self.size[2], self.size[1], self.size[0])

    @property
    def geometry(self) -> Geometry:
        """The SimpleITK geometry of this grid."""
        return Geometry(size=self.size, spacing=self.spacing, origin=self.origin,
                        direction=tuple(float(d) for d in self.direction.ravel()))

    @property
    def voxel_volume_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0

    def points(self) -> Points:
        """Physical (x, y, z) of every voxel centre as arrays that broadcast to :attr:`array_shape`.

        Each index axis enters only the physical coordinates it moves along, so for the axis-aligned
        orientations each coordinate is a 1-D array laid along one array axis (cheap to store).
        """
        index = [np.arange(n, dtype=np.float32) * np.float32(s) for n, s in zip(self.size, self.spacing, strict=True)]
        shapes = [(1, 1, -1), (1, -1, 1), (-1, 1, 1)]  # i, j, k along array axes 2, 1, 0
        coordinates = []
        for axis in range(3):
            value: np.ndarray = np.full((1, 1, 1), self.origin[axis], dtype=np.float32)
            for c in range(3):
                if self.direction[axis, c] != 0:
                    value = value + np.float32(self.direction[axis, c]) * index[c].reshape(shapes[c])
            coordinates.append(value)
        return coordinates[0], coordinates[1], coordinates[2]

    def index_box(self, low_mm: np.ndarray, high_mm: np.ndarray) -> tuple[slice, slice, slice]:
        """Array slices (z, y, x order) of the voxels whose centres lie in the physical box [low, high].

        Valid for the axis-aligned orientations of :data:`ORIENTATIONS` (signed permutations).
        """
        slices = []
        for c in range(3):
            axis = int(np.abs(self.direction[:, c]).argmax())
            step = self.direction[axis, c] * self.spacing[c]
            bounds = sorted(((low_mm[axis] - self.origin[axis]) / step, (high_mm[axis] - self.origin[axis]) / step))
            first = max(0, int(np.ceil(bounds[0])))
            last = min(self.size[c] - 1, int(np.floor(bounds[1])))
            slices.append(slice(first, max(first, last + 1)))
        return slices[2], slices[1], slices[0]


def crop_points(points: Points, box: tuple[slice, slice, slice]) -> Points:
    """The part of broadcastable ``points`` inside ``box`` (singleton axes are kept as they are)."""
    cropped = []
    for p in points:
        cropped.append(p[tuple(s if n > 1 else slice(None) for s, n in zip(box, p.shape, strict=True))])
    return cropped[0], cropped[1], cropped[2]
