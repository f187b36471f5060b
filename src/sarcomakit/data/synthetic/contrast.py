"""Channel physics: how each tissue appears on T1, fat-suppressed T2 (T2FS), FDG-PET and CT.

Every channel starts from a tissue lookup table, adds the tumour's internal texture, fibrous foci,
necrosis and the oedema rim, then passes through its scanner:

- MRI (T1, T2FS): relative signal (muscle = 1) blurred by the slice profile (partial volume),
  times the coil bias :math:`e^{b f(p)}`, times an arbitrary-unit scale, with Rician noise
  :math:`|s + n_1 + i n_2|`, plus an offset. On T2FS, fat suppression fails smoothly away from the
  isocentre, so fat can look as bright as tumour.
- PET: SUV, blurred by the scanner's Gaussian point-spread function (FWHM 6-8 mm), with spatially
  correlated noise of variance proportional to the uptake.
- CT: Hounsfield units with Gaussian noise, stored as int16.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from sarcomakit.data.synthetic.acquisition import Acquisition
from sarcomakit.data.synthetic.anatomy import Tissue
from sarcomakit.data.synthetic.scene import Scene, SceneMaps

CHANNELS: tuple[str, ...] = ("T1", "T2FS", "PET", "CT")

T1_SIGNAL = {Tissue.AIR: 0.0, Tissue.SKIN: 0.9, Tissue.FAT: 2.4, Tissue.MUSCLE: 1.0, Tissue.FASCIA: 1.5,
             Tissue.CORTEX: 0.08, Tissue.MARROW: 2.1, Tissue.ARTERY: 0.3, Tissue.VEIN: 0.6, Tissue.FLUID: 0.45,
             Tissue.NODE: 0.95, Tissue.TUMOUR: 0.78, Tissue.NECROSIS: 0.5}
T2FS_SIGNAL = {Tissue.AIR: 0.0, Tissue.SKIN: 1.3, Tissue.FAT: 0.3, Tissue.MUSCLE: 1.0, Tissue.FASCIA: 0.45,
               Tissue.CORTEX: 0.08, Tissue.MARROW: 0.35, Tissue.ARTERY: 1.8, Tissue.VEIN: 2.6, Tissue.FLUID: 3.6,
               Tissue.NODE: 2.0, Tissue.TUMOUR: 2.3, Tissue.NECROSIS: 3.1}
PET_SUV = {Tissue.AIR: 0.0, Tissue.SKIN: 0.6, Tissue.FAT: 0.3, Tissue.MUSCLE: 0.7, Tissue.FASCIA: 0.4,
           Tissue.CORTEX: 0.25, Tissue.MARROW: 1.1, Tissue.ARTERY: 1.7, Tissue.VEIN: 1.7, Tissue.FLUID: 0.3,
           Tissue.NODE: 0.7, Tissue.TUMOUR: 1.0, Tissue.NECROSIS: 0.45}
CT_HU = {Tissue.AIR: -1000.0, Tissue.SKIN: 20.0, Tissue.FAT: -100.0, Tissue.MUSCLE: 48.0, Tissue.FASCIA: -30.0,
         Tissue.CORTEX: 1100.0, Tissue.MARROW: -40.0, Tissue.ARTERY: 40.0, Tissue.VEIN: 38.0, Tissue.FLUID: 8.0,
         Tissue.NODE: 32.0, Tissue.TUMOUR: 38.0, Tissue.NECROSIS: 15.0}
# Tumour T2 signal by grade: myxoid low-grade tumours are the brightest and most homogeneous.
TUMOUR_T2 = {"low": 2.6, "intermediate": 2.4, "high": 2.2}
OEDEMA_T2 = 1.0  # added T2FS signal at full oedema: near the margin almost as bright as tumour
CT_RANGE_HU = (-1024, 3071)
_PARTIAL_VOLUME_SIGMA = (0.45, 0.35, 0.35)  # voxels (slice, row, column): the slice profile and in-plane PSF


def _lookup(table: dict[Tissue, float], tissue: np.ndarray) -> np.ndarray:
    values = np.zeros(max(Tissue) + 1, dtype=np.float32)
    for code, value in table.items():
        values[code] = value
    return values[tissue]


def render_channel(channel: str, scene: Scene, maps: SceneMaps, acquisition: Acquisition,
                   rng: np.random.Generator) -> np.ndarray:
    """The image of ``channel`` (one of :data:`CHANNELS`) as a (z, y, x) array: float32, CT int16 in HU."""
    renderers = {"T1": _t1, "T2FS": _t2fs, "PET": _pet, "CT": _ct}
    return renderers[channel](scene, maps, acquisition, rng)


def _tumour_mask(maps: SceneMaps) -> tuple[np.ndarray, np.ndarray]:
    return maps.tissue == Tissue.TUMOUR, maps.tissue == Tissue.NECROSIS


def _t1(scene: Scene, maps: SceneMaps, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    signal = _lookup(T1_SIGNAL, maps.tissue)
    tumour, necrosis = _tumour_mask(maps)
    heterogeneity = np.float32(scene.tumour.heterogeneity)
    signal[tumour] *= 1 + 0.4 * heterogeneity * maps.texture[tumour]
    signal[maps.fibrous] = 0.95
    signal[necrosis] *= 1 + 0.1 * maps.texture[necrosis]
    signal *= 1 - np.float32(0.12) * maps.oedema
    return _mri(signal, acquisition, rng, channel_index=0)


def _t2fs(scene: Scene, maps: SceneMaps, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    signal = _lookup(T2FS_SIGNAL, maps.tissue)
    points = acquisition.grid.points()
    x, y, _ = points
    cx, cy, _ = acquisition.fov_centre
    off_centre = ((x - np.float32(cx)) ** 2 + (y - np.float32(cy)) ** 2) / np.float32(80.0**2)
    failure = np.clip(np.float32(acquisition.fat_suppression_failure)
                      * (acquisition.fat_suppression_field(points) + 1.5 * off_centre - 0.5), 0, 1)
    fatty = np.isin(maps.tissue, (Tissue.FAT, Tissue.MARROW))
    signal[fatty] += np.float32(1.4) * np.broadcast_to(failure, signal.shape)[fatty]

    tumour, necrosis = _tumour_mask(maps)
    heterogeneity = np.float32(scene.tumour.heterogeneity)
    signal[tumour] = TUMOUR_T2[scene.tumour.grade] * (1 + heterogeneity * maps.texture[tumour])
    signal[maps.fibrous] *= 0.6
    signal[necrosis] *= 1 + 0.1 * maps.texture[necrosis]
    signal += np.float32(OEDEMA_T2) * maps.oedema
    return _mri(signal, acquisition, rng, channel_index=1)


def _mri(signal: np.ndarray, acquisition: Acquisition, rng: np.random.Generator, channel_index: int) -> np.ndarray:
    signal = ndimage.gaussian_filter(signal, _PARTIAL_VOLUME_SIGMA, mode="nearest")
    bias = np.exp(np.float32(acquisition.bias_strength) * acquisition.bias_field(acquisition.grid.points()))
    scale = np.float32(acquisition.mri_scale[channel_index])
    signal = signal * bias * scale
    sigma = np.float32(acquisition.noise_fraction) * scale
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return (np.sqrt(real**2 + imaginary**2) + np.float32(acquisition.mri_offset[channel_index])).astype(np.float32)


def _pet(scene: Scene, maps: SceneMaps, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    table = dict(PET_SUV)
    table[Tissue.MUSCLE] = scene.muscle_suv
    table[Tissue.NODE] = scene.node_suv
    suv = _lookup(table, maps.tissue)
    suv[maps.hot_muscle] = scene.hot_muscle_suv
    tumour, _ = _tumour_mask(maps)
    viable = np.clip(0.75 + 0.2 * maps.texture[tumour], 0.4, 1.0) * (0.55 + 0.45 * maps.rim[tumour])
    suv[tumour] = np.float32(scene.tumour.suv_max) * viable
    suv *= 1 + np.float32(0.3) * maps.oedema

    sigma_mm = acquisition.pet_fwhm_mm / (2 * np.sqrt(2 * np.log(2)))
    sigma_voxels = [sigma_mm / s for s in reversed(acquisition.grid.spacing)]
    suv = ndimage.gaussian_filter(suv, sigma_voxels, mode="constant")
    noise = ndimage.gaussian_filter(rng.standard_normal(suv.shape, dtype=np.float32), 1.0)
    noise /= max(float(noise.std()), 1e-6)
    suv = suv + np.float32(acquisition.pet_noise) * np.sqrt(suv) * noise
    return np.clip(suv * np.float32(acquisition.pet_calibration), 0, None).astype(np.float32)


def _ct(scene: Scene, maps: SceneMaps, acquisition: Acquisition, rng: np.random.Generator) -> np.ndarray:
    table = dict(CT_HU)
    table[Tissue.CORTEX] = scene.cortex_hu
    hu = _lookup(table, maps.tissue)
    tumour, _ = _tumour_mask(maps)
    hu[tumour] += 6 * maps.texture[tumour]
    hu -= np.float32(12.0) * maps.oedema
    hu = ndimage.gaussian_filter(hu, _PARTIAL_VOLUME_SIGMA, mode="nearest")
    hu += np.float32(acquisition.ct_noise_hu) * rng.standard_normal(hu.shape, dtype=np.float32)
    return np.clip(np.rint(hu), *CT_RANGE_HU).astype(np.int16)
