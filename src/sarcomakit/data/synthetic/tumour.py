"""The soft-tissue tumour: a lobulated, infiltrative mass with a necrotic core and a peritumoral oedema rim.

The tumour is an implicit shape. Each lobule :math:`k` (an ellipsoid with centre :math:`c_k`, unit
principal axes :math:`U_k` and semi-axes :math:`s_k`) has the normalised radius
:math:`g_k(p) = \\lVert U_k^T (p - c_k) / s_k \\rVert`; the mass is their union
:math:`g = \\min_k g_k`, deformed at low frequency, :math:`g_s = g \\,(1 + a_s f_s(p))`, and roughened at
high frequency at its margin, :math:`g_m = g_s + a_m f_m(p)` (smooth fields :math:`f` from
:mod:`~sarcomakit.data.synthetic.fields`). The gross tumour (the label) is :math:`g_m < 1`; the necrotic
core is :math:`g_s (1 + a_n f_n) < r_n`; oedema decays as :math:`\\exp(-d/w)` with the distance
:math:`d \\approx (g_s - 1)\\,\\bar r` outside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sarcomakit.data.synthetic.anatomy import Limb
from sarcomakit.data.synthetic.fields import Points, SmoothField

GRADES = ("low", "intermediate", "high")
_FIELD_CLIP = 2.5  # smooth fields are clipped to +-2.5 sd so that the shape stays within known bounds


@dataclass(frozen=True)
class Lobule:
    """An ellipsoid: centre (mm), principal axes (3x3, columns) and semi-axes (mm)."""

    centre: np.ndarray
    axes: np.ndarray
    semi_axes: np.ndarray

    def level(self, points: Points) -> np.ndarray:
        """Normalised radius: 1 on the surface, < 1 inside."""
        offset = [p - np.float32(c) for p, c in zip(points, self.centre, strict=True)]
        scale = [[np.float32(self.axes[a, k] / self.semi_axes[k]) for a in range(3)] for k in range(3)]
        u = [scale[k][0] * offset[0] + scale[k][1] * offset[1] + scale[k][2] * offset[2] for k in range(3)]
        return np.sqrt(u[0] ** 2 + u[1] ** 2 + u[2] ** 2)

    def half_extent(self) -> np.ndarray:
        """Half size (mm) of the lobule's axis-aligned bounding box along x, y, z."""
        return np.sqrt(((self.axes * self.semi_axes[None, :]) ** 2).sum(axis=1))


@dataclass(frozen=True)
class TumourLevels:
    """The implicit functions of a tumour at some points (see the module docstring)."""

    shape: np.ndarray  # g_s
    margin: np.ndarray  # g_m: the gross tumour is margin < 1
    necrosis: np.ndarray  # the necrotic core is necrosis < necrosis_radius


@dataclass(frozen=True)
class Tumour:
    """One tumour with the grade-dependent properties that the channels render.

    Attributes:
        grade: "low", "intermediate" or "high".
        lobules: the first is the main mass.
        radius_mm: mean radius of the main lobule, converting normalised levels to mm.
        diameter_mm: largest diameter of the main lobule.
        necrosis_radius: normalised radius of the necrotic core (0: none).
        heterogeneity: relative amplitude of the internal texture on MRI.
        oedema_width_mm / oedema_strength: decay length and peak of the oedema rim (0..1).
        suv_max: peak FDG uptake of viable tumour (SUV).
    """

    grade: str
    lobules: tuple[Lobule, ...]
    radius_mm: float
    diameter_mm: float
    shape_field: SmoothField
    shape_amplitude: float
    margin_field: SmoothField
    margin_amplitude: float
    necrosis_radius: float
    necrosis_field: SmoothField
    texture_field: SmoothField
    fibrous_field: SmoothField
    heterogeneity: float
    oedema_width_mm: float
    oedema_strength: float
    oedema_field: SmoothField
    suv_max: float

    @property
    def centre(self) -> np.ndarray:
        return self.lobules[0].centre

    def levels(self, points: Points) -> TumourLevels:
        """Evaluate the implicit shape, margin and necrotic-core functions at ``points``."""
        union = self.lobules[0].level(points)
        for lobule in self.lobules[1:]:
            union = np.minimum(union, lobule.level(points))
        shape = union * (1 + np.float32(self.shape_amplitude)
                         * np.clip(self.shape_field(points), -_FIELD_CLIP, _FIELD_CLIP))
        margin = shape + np.float32(self.margin_amplitude) * np.clip(self.margin_field(points),
                                                                     -_FIELD_CLIP, _FIELD_CLIP)
        necrosis = shape * (1 + np.float32(0.15) * np.clip(self.necrosis_field(points), -_FIELD_CLIP, _FIELD_CLIP))
        return TumourLevels(shape=shape, margin=margin, necrosis=necrosis)

    def bounds_mm(self, margin_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        """Physical box (low, high) that holds the whole tumour plus ``margin_mm``."""
        growth = (1 + _FIELD_CLIP * self.margin_amplitude) / (1 - _FIELD_CLIP * self.shape_amplitude)
        lows = [lob.centre - growth * lob.half_extent() for lob in self.lobules]
        highs = [lob.centre + growth * lob.half_extent() for lob in self.lobules]
        return np.min(lows, axis=0) - margin_mm, np.max(highs, axis=0) + margin_mm

    def oedema_reach_mm(self) -> float:
        """Distance beyond which the oedema is negligible (< 2 % of its peak)."""
        return 4.0 * self.oedema_width_mm


def random_rotation(rng: np.random.Generator, max_angle: float) -> np.ndarray:
    """A random rotation matrix by at most ``max_angle`` radians (Rodrigues' formula)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-max_angle, max_angle)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


# Grade-dependent ranges: (low, intermediate, high).
_DIAMETER_BETA = {"low": (2.0, 2.0), "intermediate": (2.5, 1.8), "high": (3.0, 1.5)}
_NECROSIS = {"low": (0.25, 0.02, 0.10), "intermediate": (0.6, 0.05, 0.30), "high": (0.9, 0.15, 0.50)}
_MARGIN = {"low": (0.02, 0.04), "intermediate": (0.03, 0.06), "high": (0.05, 0.09)}
_HETEROGENEITY = {"low": (0.08, 0.15), "intermediate": (0.15, 0.30), "high": (0.30, 0.45)}
_OEDEMA_WIDTH = {"low": (2.0, 5.0), "intermediate": (4.0, 10.0), "high": (6.0, 14.0)}
_OEDEMA_STRENGTH = {"low": (0.3, 0.7), "intermediate": (0.6, 0.9), "high": (0.7, 1.0)}
_SUV_MAX = {"low": (2.0, 4.0), "intermediate": (4.0, 8.0), "high": (7.0, 15.0)}
DIAMETER_RANGE_MM = (25.0, 90.0)


def draw_tumour(rng: np.random.Generator, limb: Limb, grade: str) -> Tumour:
    """Draw a tumour of ``grade`` placed in the muscle of ``limb``.

    The largest diameter (25-90 mm, larger with grade) lies along the limb, as sarcomas grow along
    muscle; the in-plane size is limited by the room between femur and fat, so large masses abut
    the bone or bulge into the fat.
    """
    low, high = DIAMETER_RANGE_MM
    diameter = low * (high / low) ** rng.beta(*_DIAMETER_BETA[grade])
    z_centre = rng.uniform(-20, 20)
    angle = rng.uniform(-np.pi, np.pi)
    reach = limb.muscle_reach(angle, z_centre)
    gap = max(reach - limb.femur_radius_mm, 12.0)
    in_plane = 0.5 * diameter * rng.uniform(0.6, 0.9)
    radial = min(in_plane, 0.5 * gap + rng.uniform(0, 6))
    tangential = min(in_plane * rng.uniform(0.8, 1.1), 45.0)
    distance = limb.femur_radius_mm + radial * rng.uniform(0.75, 1.0) + rng.uniform() * max(gap - 2 * radial, 0)
    femur_centre = np.array([limb.femur_centre[0] + limb.femur_tilt[0] * z_centre,
                             limb.femur_centre[1] + limb.femur_tilt[1] * z_centre, z_centre])
    radial_dir = np.array([np.cos(angle), np.sin(angle), 0.0])
    tangential_dir = np.array([-np.sin(angle), np.cos(angle), 0.0])
    frame = random_rotation(rng, 0.2) @ np.stack([radial_dir, tangential_dir, [0.0, 0.0, 1.0]], axis=1)
    main_semi = np.array([radial, tangential, 0.5 * diameter])
    main = Lobule(centre=femur_centre + distance * radial_dir, axes=frame, semi_axes=main_semi)

    lobules = [main]
    for _ in range(rng.integers(1, 4)):
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        offset = frame @ (direction * main_semi) * rng.uniform(0.45, 0.75)
        lobules.append(Lobule(centre=main.centre + offset, axes=random_rotation(rng, 0.5) @ frame,
                              semi_axes=main_semi * rng.uniform(0.35, 0.6, size=3)))

    has_necrosis, smallest, largest = _NECROSIS[grade]
    necrosis_fraction = rng.uniform(smallest, largest) if rng.uniform() < has_necrosis else 0.0
    return Tumour(
        grade=grade, lobules=tuple(lobules), radius_mm=float(np.cbrt(np.prod(main_semi))),
        diameter_mm=float(2 * main_semi.max()),
        shape_field=SmoothField.draw(rng, (15.0, 40.0)), shape_amplitude=rng.uniform(0.05, 0.12),
        margin_field=SmoothField.draw(rng, (4.0, 9.0), n_waves=10), margin_amplitude=rng.uniform(*_MARGIN[grade]),
        necrosis_radius=float(np.cbrt(necrosis_fraction)), necrosis_field=SmoothField.draw(rng, (8.0, 20.0)),
        texture_field=SmoothField.draw(rng, (5.0, 14.0), n_waves=10),
        fibrous_field=SmoothField.draw(rng, (8.0, 20.0)),
        heterogeneity=rng.uniform(*_HETEROGENEITY[grade]),
        oedema_width_mm=rng.uniform(*_OEDEMA_WIDTH[grade]), oedema_strength=rng.uniform(*_OEDEMA_STRENGTH[grade]),
        oedema_field=SmoothField.draw(rng, (10.0, 30.0)), suv_max=rng.uniform(*_SUV_MAX[grade]),
    )
