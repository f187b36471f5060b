"""How a scene is acquired: per-site protocols with per-case jitter, as in a multi-centre cohort.

Each site (``site-A``, ``site-B``, ...) has a typical protocol (orientation, in-plane spacing, slice
thickness, MRI scaling, noise, coil bias, fat-suppression quality, PET resolution, CT noise); every
case jitters around its site's protocol. Protocols depend only on (seed, site index), cases only on
(seed, case index), so a cohort's first cases are the same whatever its size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sarcomakit.data.synthetic.fields import SmoothField
from sarcomakit.data.synthetic.grid import ORIENTATIONS, Grid
from sarcomakit.data.synthetic.scene import Scene

# Default orientation by site: site-A axial, site-B axial stored flipped, site-C coronal, site-D head-to-foot.
_SITE_ORIENTATIONS = ("axial", "axial-flipped", "coronal", "axial-reversed")
_SITE_STREAM = 7  # keeps the protocol random stream apart from the case streams


def site_name(index: int) -> str:
    """``site-A``, ``site-B``, ..., ``site-Z``, ``site-AA``, ..."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(ord("A") + remainder) + letters
    return f"site-{letters}"


@dataclass(frozen=True)
class SiteProtocol:
    """A site's typical acquisition (of every three sites, one acquires thick slices, one suppresses fat poorly)."""

    name: str
    orientation: str
    inplane_mm: float
    slice_mm: float
    mri_scale: tuple[float, float]  # arbitrary-unit scale of T1 and T2FS
    noise_fraction: float  # MRI noise sd relative to muscle signal
    bias_strength: float  # sd of the log bias field
    fat_suppression_failure: float  # 0: perfect fat suppression
    pet_fwhm_mm: float
    ct_noise_hu: float


def site_protocol(seed: int, site_index: int) -> SiteProtocol:
    """The protocol of site ``site_index`` in the cohort of ``seed``."""
    rng = np.random.default_rng([seed, _SITE_STREAM, site_index])
    thick = site_index % 3 == 2
    poor_fat_suppression = site_index % 3 == 1  # e.g. an older magnet: fat suppression often fails off-centre
    return SiteProtocol(
        name=site_name(site_index),
        orientation=_SITE_ORIENTATIONS[site_index % len(_SITE_ORIENTATIONS)],
        inplane_mm=rng.uniform(1.7, 2.4),
        slice_mm=rng.uniform(5.0, 5.5) if thick else rng.uniform(3.0, 4.5),
        mri_scale=(float(np.exp(rng.uniform(np.log(100), np.log(3000)))),
                   float(np.exp(rng.uniform(np.log(100), np.log(3000))))),
        noise_fraction=rng.uniform(0.02, 0.07),
        bias_strength=rng.uniform(0.1, 0.3),
        fat_suppression_failure=rng.uniform(0.7, 1.0) if poor_fat_suppression else rng.uniform(0.0, 0.4),
        pet_fwhm_mm=rng.uniform(6.0, 8.0),
        ct_noise_hu=rng.uniform(6.0, 15.0),
    )


@dataclass(frozen=True)
class Acquisition:
    """The acquisition of one case: its grid and the scanner effects applied to each channel.

    Attributes:
        site / orientation: where and how it was acquired.
        grid: the voxel grid shared by all channels and the label (co-registered, as after resampling).
        mri_scale / mri_offset: arbitrary-unit scaling of T1 and T2FS.
        noise_fraction: Rician noise sd relative to the muscle signal.
        bias_field / bias_strength: the coil's smooth multiplicative bias, ``exp(strength * f(p))``.
        fat_suppression_field / fat_suppression_failure: where and how much fat suppression fails on T2FS.
        pet_fwhm_mm / pet_noise / pet_calibration: PET point-spread function, noise and SUV calibration.
        ct_noise_hu: CT noise sd.
    """

    site: str
    orientation: str
    grid: Grid
    mri_scale: tuple[float, float]
    mri_offset: tuple[float, float]
    noise_fraction: float
    bias_field: SmoothField
    bias_strength: float
    fat_suppression_field: SmoothField
    fat_suppression_failure: float
    fov_centre: tuple[float, float, float]
    pet_fwhm_mm: float
    pet_noise: float
    pet_calibration: float
    ct_noise_hu: float

    @property
    def inplane_mm(self) -> float:
        return float(self.grid.spacing[0])

    @property
    def slice_mm(self) -> float:
        return float(self.grid.spacing[2])


def draw_acquisition(rng: np.random.Generator, scene: Scene, *, seed: int, n_sites: int,
                     spacing_scale: float) -> Acquisition:
    """Draw a case's site and its jittered protocol; the field of view is centred on the tumour.

    Args:
        rng: the case's acquisition stream.
        scene: the patient (the field of view must cover the limb and the whole tumour).
        seed: cohort seed (selects the site protocols).
        n_sites: number of sites in the cohort.
        spacing_scale: factor on every voxel spacing (the field of view is unchanged).
    """
    site_index = int(rng.integers(n_sites))
    protocol = site_protocol(seed, site_index)
    orientation = protocol.orientation if rng.uniform() < 0.8 else str(rng.choice(list(ORIENTATIONS)))
    inplane = protocol.inplane_mm * rng.uniform(0.92, 1.08) * spacing_scale
    slice_mm = protocol.slice_mm * rng.uniform(0.92, 1.08) * spacing_scale

    limb = scene.limb
    low, high = scene.tumour.bounds_mm()
    z_extent = float(high[2] - low[2]) + 20.0
    fov_z = float(np.clip(max(rng.uniform(120, 170), z_extent), 120, 200))
    slack = max((fov_z - z_extent) / 2, 0.0)
    z_centre = float((low[2] + high[2]) / 2 + rng.uniform(-slack, slack))
    angles = np.linspace(-np.pi, np.pi, 90, endpoint=False)
    limb_width = 2 * max(float(limb.outer_radius(angles, np.array(z)).max()) for z in (z_centre - fov_z / 2,
                                                                                         z_centre + fov_z / 2))
    tilt_shift = 2 * float(np.hypot(*limb.tilt)) * fov_z / 2
    fov_xy = max(rng.uniform(140, 170), limb_width + tilt_shift + 8.0)
    axis = np.array(limb.centre) + np.array(limb.tilt) * z_centre
    centre = np.array([axis[0] + rng.uniform(-4, 4), axis[1] + rng.uniform(-4, 4), z_centre])
    extent = np.array([fov_xy, fov_xy, fov_z])
    grid = Grid.covering(centre, extent, (inplane, inplane, slice_mm), ORIENTATIONS[orientation])

    return Acquisition(
        site=protocol.name, orientation=orientation, grid=grid,
        mri_scale=(protocol.mri_scale[0] * rng.uniform(0.85, 1.15), protocol.mri_scale[1] * rng.uniform(0.85, 1.15)),
        mri_offset=(rng.uniform(0, 20), rng.uniform(0, 20)),
        noise_fraction=protocol.noise_fraction * rng.uniform(0.8, 1.25),
        bias_field=SmoothField.draw(rng, (150.0, 400.0), n_waves=6),
        bias_strength=protocol.bias_strength * rng.uniform(0.7, 1.3),
        fat_suppression_field=SmoothField.draw(rng, (80.0, 200.0), n_waves=6),
        fat_suppression_failure=protocol.fat_suppression_failure * rng.uniform(0.5, 1.5),
        fov_centre=(float(centre[0]), float(centre[1]), float(centre[2])),
        pet_fwhm_mm=protocol.pet_fwhm_mm * rng.uniform(0.95, 1.05),
        pet_noise=rng.uniform(0.08, 0.2),
        pet_calibration=rng.uniform(0.95, 1.05),
        ct_noise_hu=protocol.ct_noise_hu * rng.uniform(0.85, 1.15),
    )
