"""One patient's scene: the limb, its tumour and the focal findings that mislead a threshold.

Focal findings are what makes the segmentation task non-trivial: a fluid-filled bursa or cyst and
joint fluid (as bright as tumour on T2FS), an FDG-avid lymph node and a muscle compartment with
raised uptake (as hot as tumour on PET). :meth:`Scene.render` paints everything onto a voxel grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sarcomakit.data.synthetic.anatomy import Limb, Tissue
from sarcomakit.data.synthetic.grid import Grid, crop_points
from sarcomakit.data.synthetic.tumour import Lobule, Tumour, random_rotation

# Tissues a finding or the tumour may replace (never bone or skin).
_SOFT = np.array([Tissue.FAT, Tissue.MUSCLE, Tissue.FASCIA], dtype=np.uint8)
_DISPLACEABLE = np.array([Tissue.FAT, Tissue.MUSCLE, Tissue.FASCIA, Tissue.ARTERY, Tissue.VEIN, Tissue.FLUID,
                          Tissue.NODE], dtype=np.uint8)
_OEDEMATOUS = np.array([Tissue.FAT, Tissue.MUSCLE, Tissue.FASCIA], dtype=np.uint8)
_FIBROUS_LEVEL = 0.8  # fibrous (T2-dark) foci where the fibrous field exceeds 0.8 sd: about 20 % of the tumour


@dataclass(frozen=True)
class Finding:
    """A focal ellipsoidal structure: a cyst, joint fluid or a lymph node."""

    shape: Lobule
    tissue: Tissue
    name: str


@dataclass
class SceneMaps:
    """The scene on a voxel grid; every array has the grid's (z, y, x) shape.

    Attributes:
        tissue: :class:`Tissue` code per voxel; the label is ``tissue in (TUMOUR, NECROSIS)``.
        oedema: peritumoral oedema intensity in [0, 1] (outside the tumour only).
        texture: internal tumour texture (zero mean, unit variance; 0 outside the tumour).
        fibrous: fibrous (T2-dark) foci inside the tumour.
        rim: depth inside the tumour margin in [0, 1] (0 at the margin, 1 from 30 % of the radius in).
        hot_muscle: muscle with raised FDG uptake.
    """

    tissue: np.ndarray
    oedema: np.ndarray
    texture: np.ndarray
    fibrous: np.ndarray
    rim: np.ndarray
    hot_muscle: np.ndarray

    @property
    def label(self) -> np.ndarray:
        """The gross tumour including its necrotic core (uint8 0/1); oedema is not part of it."""
        return np.isin(self.tissue, (Tissue.TUMOUR, Tissue.NECROSIS)).astype(np.uint8)


@dataclass(frozen=True)
class Scene:
    """Limb, tumour, focal findings and patient-specific uptake and bone density."""

    limb: Limb
    tumour: Tumour
    findings: tuple[Finding, ...]
    node_suv: float
    hot_compartment: int | None
    hot_muscle_suv: float
    muscle_suv: float
    cortex_hu: float

    def render(self, grid: Grid) -> SceneMaps:
        """Paint the scene at the voxel centres of ``grid``."""
        points = grid.points()
        tissue = self.limb.tissues(points)
        shape = tissue.shape
        for finding in self.findings:
            low, high = _bounds(finding.shape)
            box = grid.index_box(low, high)
            if tissue[box].size == 0:
                continue
            local = tissue[box]
            inside = np.broadcast_to(finding.shape.level(crop_points(points, box)) <= 1, local.shape)
            local[inside & np.isin(local, _SOFT)] = finding.tissue

        maps = SceneMaps(tissue=tissue, oedema=np.zeros(shape, np.float32), texture=np.zeros(shape, np.float32),
                         fibrous=np.zeros(shape, bool), rim=np.zeros(shape, np.float32),
                         hot_muscle=np.zeros(shape, bool))
        self._paint_tumour(grid, points, maps)
        if self.hot_compartment is not None:
            compartment = np.broadcast_to(self.limb.compartment(points), shape)
            maps.hot_muscle = (tissue == Tissue.MUSCLE) & (compartment == self.hot_compartment)
        return maps

    def _paint_tumour(self, grid: Grid, points: tuple, maps: SceneMaps) -> None:
        tumour = self.tumour
        box = grid.index_box(*tumour.bounds_mm(margin_mm=tumour.oedema_reach_mm()))
        local = maps.tissue[box]
        if local.size == 0:
            return
        sub = crop_points(points, box)
        levels = tumour.levels(sub)
        depth, _ = self.limb.depth(sub)
        allowed = np.broadcast_to(depth >= self.limb.skin_mm + 2.0, local.shape) & np.isin(local, _DISPLACEABLE)
        inside = np.broadcast_to(levels.margin < 1, local.shape) & allowed
        necrotic = inside & np.broadcast_to(levels.necrosis < tumour.necrosis_radius, local.shape)

        distance = np.maximum(levels.shape - 1, 0) * np.float32(tumour.radius_mm)
        patchy = np.clip(0.65 + 0.35 * tumour.oedema_field(sub), 0, 1)
        oedema = np.float32(tumour.oedema_strength) * np.exp(-distance / np.float32(tumour.oedema_width_mm)) * patchy
        oedema = np.broadcast_to(oedema, local.shape) * (np.isin(local, _OEDEMATOUS) & ~inside)

        local[inside] = Tissue.TUMOUR
        local[necrotic] = Tissue.NECROSIS
        maps.oedema[box] = oedema
        maps.texture[box] = np.where(inside, np.broadcast_to(tumour.texture_field(sub), local.shape), 0)
        if tumour.grade != "low":
            maps.fibrous[box] = inside & ~necrotic & np.broadcast_to(
                tumour.fibrous_field(sub) > _FIBROUS_LEVEL, local.shape)
        maps.rim[box] = np.where(inside, np.clip((1 - np.broadcast_to(levels.margin, local.shape)) / 0.3, 0, 1), 0)

    def tumour_statistics(self, resolution_mm: float = 1.5) -> tuple[float, float]:
        """Volume (ml) and necrotic fraction of the gross tumour, on a fine reference grid.

        Independent of any acquisition grid, so that the clinical truth (the hazard) does not
        depend on how a case happens to be sampled.
        """
        low, high = self.tumour.bounds_mm()
        grid = Grid.covering((low + high) / 2, high - low, (resolution_mm,) * 3, np.eye(3))
        tissue = self.render(grid).tissue
        tumour = int(np.count_nonzero(tissue == Tissue.TUMOUR))
        necrosis = int(np.count_nonzero(tissue == Tissue.NECROSIS))
        volume = (tumour + necrosis) * grid.voxel_volume_ml
        return volume, necrosis / max(tumour + necrosis, 1)


def _bounds(shape: Lobule) -> tuple[np.ndarray, np.ndarray]:
    half = shape.half_extent()
    return shape.centre - half, shape.centre + half


def _away_from_tumour(centre: np.ndarray, radius: float, tumour: Tumour) -> bool:
    low, high = tumour.bounds_mm(margin_mm=radius + 8.0)
    return not bool(np.all((centre > low) & (centre < high)))


def draw_scene(rng: np.random.Generator, limb: Limb, tumour: Tumour) -> Scene:
    """Add focal findings and PET uptake to a limb with its tumour."""
    findings: list[Finding] = []
    z0 = float(tumour.centre[2])
    femur = np.array(limb.femur_centre)
    femur_tilt = np.array(limb.femur_tilt)
    if rng.uniform() < 0.6:  # intramuscular bursa or cyst
        for _ in range(10):
            angle, z = rng.uniform(-np.pi, np.pi), z0 + rng.uniform(-60, 60)
            reach = limb.muscle_reach(angle, z)
            radius = rng.uniform(5, 12)
            along = limb.femur_radius_mm + radius + rng.uniform() * max(reach - limb.femur_radius_mm - 2 * radius, 0)
            centre = np.array([*(femur + femur_tilt * z + along * np.array([np.cos(angle), np.sin(angle)])), z])
            if _away_from_tumour(centre, radius, tumour):
                semi = np.array([radius, radius * rng.uniform(0.6, 1.0), radius * rng.uniform(1.0, 1.6)])
                findings.append(Finding(Lobule(centre, random_rotation(rng, 0.6), semi), Tissue.FLUID, "cyst"))
                break
    if rng.uniform() < 0.6:  # suprapatellar joint fluid, distal and anterior to the femur
        z = z0 - rng.uniform(45, 70)
        anterior = np.array([0.0, -1.0])
        distance = limb.femur_radius_mm + rng.uniform(4, 8)
        centre = np.array([*(femur + femur_tilt * z + distance * anterior), z])
        semi = np.array([rng.uniform(18, 28), rng.uniform(5, 9), rng.uniform(20, 35)])
        findings.append(Finding(Lobule(centre, random_rotation(rng, 0.15), semi), Tissue.FLUID, "joint fluid"))
    node_suv = 0.0
    if rng.uniform() < 0.5:  # superficial lymph node in the medial fat, proximal to the tumour
        angle = limb.medial_angle + rng.uniform(-0.8, 0.8)
        z = z0 + rng.uniform(30, 70)
        fat_middle = limb.skin_mm + 0.5 * float(limb.fat_thickness(np.array(angle)))
        along = float(limb.outer_radius(np.array(angle), np.array(z))) - fat_middle
        axis = np.array(limb.centre) + np.array(limb.tilt) * z
        centre = np.array([*(axis + along * np.array([np.cos(angle), np.sin(angle)])), z])
        semi = np.array([rng.uniform(4, 7), rng.uniform(3.5, 6), rng.uniform(6, 11)])
        findings.append(Finding(Lobule(centre, random_rotation(rng, 0.4), semi), Tissue.NODE, "lymph node"))
        node_suv = rng.uniform(2.0, 6.0)
    hot = int(rng.integers(3)) if rng.uniform() < 0.3 else None
    return Scene(limb=limb, tumour=tumour, findings=tuple(findings), node_suv=node_suv, hot_compartment=hot,
                 hot_muscle_suv=rng.uniform(1.4, 2.5), muscle_suv=rng.uniform(0.5, 0.9),
                 cortex_hu=rng.uniform(900, 1500))
