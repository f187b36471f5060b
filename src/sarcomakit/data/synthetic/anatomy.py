"""A procedural thigh: skin, subcutaneous fat, muscle compartments with fascia, femur and vessels.

Everything is a function of physical position (patient LPS, mm; the limb runs along z), so a case
looks the same on any voxel grid. Cross-sections are ellipses whose radius varies smoothly with angle
and along the limb; tissue layers are defined by depth below the skin.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np

from sarcomakit.data.synthetic.fields import Points, broadcast_shape


class Tissue(IntEnum):
    """Tissue classes of the synthetic scene (ground truth beneath every channel)."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    FASCIA = 4
    CORTEX = 5
    MARROW = 6
    ARTERY = 7
    VEIN = 8
    FLUID = 9
    NODE = 10
    TUMOUR = 11
    NECROSIS = 12


def wrap_angle(angle: np.ndarray) -> np.ndarray:
    """Angle difference wrapped into [-pi, pi] (rounding, several times faster than a float modulo)."""
    turns = np.rint(angle * np.float32(1 / (2 * np.pi)))
    return angle - turns * np.float32(2 * np.pi)


@dataclass(frozen=True)
class Tube:
    """A vessel: a circular cross-section of ``radius`` around a centreline that runs along z.

    The centreline is ``centre + slope * z + wiggle * sin(2 pi z / wavelength + phase)``; the distance of
    a point is measured in its own axial plane, accurate because vessels here run nearly along z.
    """

    centre: tuple[float, float]
    slope: tuple[float, float]
    wiggle: tuple[float, float]
    wavelength_mm: float
    phase: float
    radius_mm: float
    tissue: Tissue

    def inside(self, points: Points) -> np.ndarray:
        x, y, z = points
        bend = np.sin(np.float32(2 * np.pi / self.wavelength_mm) * z + np.float32(self.phase))
        cx = self.centre[0] + self.slope[0] * z + self.wiggle[0] * bend
        cy = self.centre[1] + self.slope[1] * z + self.wiggle[1] * bend
        return (x - cx) ** 2 + (y - cy) ** 2 <= self.radius_mm**2


@dataclass(frozen=True)
class Limb:
    """Parameters of one thigh. Angles are in the axial plane, ``atan2(y, x)`` in LPS (anterior = -pi/2).

    Attributes:
        centre: limb axis position (x, y) at z = 0; ``tilt`` is its change per mm of z.
        semi_axes: cross-section semi-axes (x, y) in mm at z = 0; ``taper`` is the relative change per mm
            of z (the thigh narrows towards the knee, at negative z).
        harmonics: rows (order m, relative amplitude, phase, phase change per mm of z) of the outline.
        skin_mm: skin thickness. fat_mm / fat_variation / fat_angle: subcutaneous fat thickness
            ``fat_mm * (1 + fat_variation * cos(angle - fat_angle))``.
        femur_centre / femur_tilt / femur_radius_mm / cortex_mm: the femoral shaft.
        septa: rows (angle, twist per mm of radius, twist per mm of z, half thickness mm) of the fascial
            planes radiating from the femur; the first three bound the main compartments.
        vessels: the artery and vein tubes.
        medial_angle: direction of the body midline from this limb.
    """

    centre: tuple[float, float]
    tilt: tuple[float, float]
    semi_axes: tuple[float, float]
    taper: float
    harmonics: np.ndarray
    skin_mm: float
    fat_mm: float
    fat_variation: float
    fat_angle: float
    femur_centre: tuple[float, float]
    femur_tilt: tuple[float, float]
    femur_radius_mm: float
    cortex_mm: float
    septa: np.ndarray
    vessels: tuple[Tube, ...]
    medial_angle: float

    # ------------------------------------------------------------------ geometry
    def polar(self, points: Points) -> tuple[np.ndarray, np.ndarray]:
        """Radius (mm) and angle of each point about the limb axis."""
        x, y, z = points
        dx = x - (self.centre[0] + self.tilt[0] * z)
        dy = y - (self.centre[1] + self.tilt[1] * z)
        return np.sqrt(dx**2 + dy**2), np.arctan2(dy, dx)

    def femur_polar(self, points: Points) -> tuple[np.ndarray, np.ndarray]:
        """Radius (mm) and angle of each point about the femoral axis."""
        x, y, z = points
        dx = x - (self.femur_centre[0] + self.femur_tilt[0] * z)
        dy = y - (self.femur_centre[1] + self.femur_tilt[1] * z)
        return np.sqrt(dx**2 + dy**2), np.arctan2(dy, dx)

    def outer_radius(self, angle: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Distance from the limb axis to the skin surface at ``angle`` and height ``z``."""
        a, b = self.semi_axes
        ellipse = a * b / np.sqrt((b * np.cos(angle)) ** 2 + (a * np.sin(angle)) ** 2)
        ripple = 1.0
        for order, amplitude, phase, drift in self.harmonics:
            ripple = ripple + amplitude * np.cos(order * angle - phase + drift * z)
        return ellipse * (1.0 + self.taper * z) * ripple

    def fat_thickness(self, angle: np.ndarray) -> np.ndarray:
        return self.fat_mm * (1.0 + self.fat_variation * np.cos(angle - self.fat_angle))

    def depth(self, points: Points) -> tuple[np.ndarray, np.ndarray]:
        """Depth below the skin surface (mm, negative outside the body) and the angle about the limb axis."""
        radius, angle = self.polar(points)
        return self.outer_radius(angle, points[2]) - radius, angle

    def muscle_reach(self, angle: float, z: float) -> float:
        """Distance from the femoral axis, along ``angle``, to the muscle/fat interface at height ``z``."""
        steps = np.arange(0.0, 130.0, 0.5)
        fx = self.femur_centre[0] + self.femur_tilt[0] * z + steps * np.cos(angle)
        fy = self.femur_centre[1] + self.femur_tilt[1] * z + steps * np.sin(angle)
        depth, limb_angle = self.depth((fx, fy, np.full_like(fx, z)))
        outside_muscle = depth < self.skin_mm + self.fat_thickness(limb_angle)
        return float(steps[np.argmax(outside_muscle)]) if outside_muscle.any() else float(steps[-1])

    def compartment(self, points: Points) -> np.ndarray:
        """Index (0, 1, 2) of the main muscle compartment between the first three septa."""
        _, angle = self.femur_polar(points)
        bounds = np.sort(self.septa[:3, 0] % (2 * np.pi))
        return np.searchsorted(bounds, angle % (2 * np.pi)) % 3

    # ------------------------------------------------------------------ tissues
    def tissues(self, points: Points) -> np.ndarray:
        """Tissue class (:class:`Tissue`) of each point, without tumour or focal findings."""
        shape = broadcast_shape(points)
        depth, angle = self.depth(points)
        tissue = np.full(shape, Tissue.MUSCLE, dtype=np.uint8)
        fat_depth = self.skin_mm + self.fat_thickness(angle)
        tissue[np.broadcast_to(depth < fat_depth, shape)] = Tissue.FAT
        tissue[np.broadcast_to(depth < self.skin_mm, shape)] = Tissue.SKIN
        tissue[np.broadcast_to(depth < 0, shape)] = Tissue.AIR

        femur_radius, femur_angle = self.femur_polar(points)
        muscle = tissue == Tissue.MUSCLE
        beyond_bone = femur_radius - self.femur_radius_mm
        for angle0, twist_r, twist_z, half_thickness in self.septa:
            septum_angle = angle0 + twist_r * beyond_bone + twist_z * points[2]
            arc = femur_radius * np.abs(wrap_angle(femur_angle - septum_angle))
            tissue[muscle & np.broadcast_to((arc < half_thickness) & (beyond_bone > 0), shape)] = Tissue.FASCIA

        body = tissue != Tissue.AIR
        for vessel in self.vessels:
            tissue[body & np.broadcast_to(vessel.inside(points), shape)] = vessel.tissue
        tissue[np.broadcast_to(femur_radius < self.femur_radius_mm, shape)] = Tissue.CORTEX
        tissue[np.broadcast_to(femur_radius < self.femur_radius_mm - self.cortex_mm, shape)] = Tissue.MARROW
        return tissue


def draw_limb(rng: np.random.Generator) -> Limb:
    """Draw one thigh: build, fat, femur position, compartments and vessels vary between cases."""
    side = rng.choice([-1.0, 1.0])  # +1: the patient's left thigh (medial towards -x)
    medial = 0.0 if side < 0 else np.pi
    anterior = -np.pi / 2
    semi_axes = (rng.uniform(56, 68), rng.uniform(50, 60))
    harmonics = np.array([[m, rng.uniform(0.0, 0.035), rng.uniform(0, 2 * np.pi), rng.uniform(-0.01, 0.01)]
                          for m in (2, 3, 4)])
    centre = (rng.uniform(-4, 4), rng.uniform(-4, 4))
    tilt = (rng.uniform(-0.04, 0.04), rng.uniform(-0.04, 0.04))
    femur_offset = (side * rng.uniform(-2, 6), rng.uniform(-12, -4))  # slightly lateral and anterior
    femur_centre = (centre[0] + femur_offset[0], centre[1] + femur_offset[1])
    femur_tilt = (tilt[0] + side * rng.uniform(0.0, 0.06), tilt[1] + rng.uniform(-0.02, 0.02))
    femur_radius = rng.uniform(12, 15)

    # Main septa (medial, lateral and posterior intermuscular) and thinner planes between muscles.
    main = [medial + rng.uniform(-0.5, -0.2) * side, medial + np.pi + rng.uniform(-0.3, 0.3),
            np.pi / 2 + side * rng.uniform(0.3, 0.7)]
    extra = rng.uniform(0, 2 * np.pi, size=rng.integers(3, 6))
    septa = np.array([[a, rng.uniform(-0.008, 0.008), rng.uniform(-0.002, 0.002), rng.uniform(0.6, 1.0)]
                      for a in main] + [[a, rng.uniform(-0.01, 0.01), rng.uniform(-0.003, 0.003),
                                         rng.uniform(0.35, 0.6)] for a in extra])

    def tube(angle: float, distance: float, radius: float, tissue: Tissue, about: tuple[float, float]) -> Tube:
        wiggle_direction = rng.normal(size=2)
        wiggle_direction /= np.linalg.norm(wiggle_direction)
        return Tube(centre=(about[0] + distance * np.cos(angle), about[1] + distance * np.sin(angle)),
                    slope=(femur_tilt[0] + rng.uniform(-0.03, 0.03), femur_tilt[1] + rng.uniform(-0.03, 0.03)),
                    wiggle=tuple(rng.uniform(1.0, 4.0) * wiggle_direction), wavelength_mm=rng.uniform(80, 200),
                    phase=rng.uniform(0, 2 * np.pi), radius_mm=radius, tissue=tissue)

    # Superficial femoral artery and vein in the anteromedial groove; deep femoral vessels behind them.
    groove = float(np.arctan2(np.sin(medial) + np.sin(anterior), np.cos(medial) + np.cos(anterior)))
    groove += rng.uniform(-0.3, 0.3)
    distance = femur_radius + rng.uniform(14, 22)
    artery = tube(groove, distance, rng.uniform(3.0, 4.0), Tissue.ARTERY, femur_centre)
    vein_offset = (rng.uniform(-2, 2), rng.uniform(6.5, 8.5))
    vein = Tube(centre=(artery.centre[0] + vein_offset[0], artery.centre[1] + vein_offset[1]), slope=artery.slope,
                wiggle=artery.wiggle, wavelength_mm=artery.wavelength_mm, phase=artery.phase,
                radius_mm=rng.uniform(4.0, 5.5), tissue=Tissue.VEIN)
    posterior = np.pi / 2
    deep_angle = float(np.arctan2(np.sin(medial) + np.sin(posterior), np.cos(medial) + np.cos(posterior)))
    deep_angle += rng.uniform(-0.4, 0.2)
    deep_distance = femur_radius + rng.uniform(5, 9)
    deep_artery = tube(deep_angle, deep_distance, rng.uniform(2.0, 2.8), Tissue.ARTERY, femur_centre)
    deep_vein = tube(deep_angle + 0.25, deep_distance + 2, rng.uniform(2.5, 3.2), Tissue.VEIN, femur_centre)

    skin_mm = rng.uniform(1.5, 2.5)
    fat_mm = rng.uniform(6, 14)
    fat_variation = rng.uniform(0.2, 0.5)
    fat_angle = medial + rng.uniform(-0.8, 0.8)
    limb = Limb(centre=centre, tilt=tilt, semi_axes=semi_axes, taper=rng.uniform(0.001, 0.0025),
                harmonics=harmonics, skin_mm=skin_mm, fat_mm=fat_mm, fat_variation=fat_variation,
                fat_angle=fat_angle, femur_centre=femur_centre, femur_tilt=femur_tilt,
                femur_radius_mm=femur_radius, cortex_mm=rng.uniform(4, 7), septa=septa,
                vessels=(artery, vein, deep_artery, deep_vein), medial_angle=medial)
    # Great saphenous vein: in the medial subcutaneous fat.
    saphenous_angle = medial + rng.uniform(-0.4, 0.4)
    reach = float(limb.outer_radius(np.array(saphenous_angle), np.array(0.0)))
    saphenous_depth = skin_mm + 0.5 * float(limb.fat_thickness(np.array(saphenous_angle)))
    saphenous = Tube(centre=(centre[0] + (reach - saphenous_depth) * np.cos(saphenous_angle),
                             centre[1] + (reach - saphenous_depth) * np.sin(saphenous_angle)),
                     slope=tilt, wiggle=(0.0, 0.0), wavelength_mm=100.0, phase=0.0,
                     radius_mm=rng.uniform(1.5, 2.3), tissue=Tissue.VEIN)
    return replace(limb, vessels=(*limb.vessels, saphenous))
