"""Synthetic H&E-like whole-slide images written as Aperio SVS or generic pyramidal TIFF.

A slide is described by a low-resolution *layout* (one class per layout cell: background, normal
stroma, tumour, pen strokes, dust) and one periodic texture per class. Any pyramid level is rendered
tile by tile from the layout and a texture pyramid (block means of the level-0 texture), so level 0
is never held in memory and slides of 50,000 x 50,000 px and more can be written. Textures are drawn
as haematoxylin and eosin concentrations and converted to RGB with the Beer-Lambert law, with a
per-slide perturbation of the stain vectors, so stain normalisation has real work to do.

Tumour textures stand for three soft-tissue sarcoma subtypes:

* ``liposarcoma``: fat-rich, large clear vacuoles separated by thin septa, scattered atypical nuclei;
* ``leiomyosarcoma``: eosinophilic spindle cells with elongated nuclei aligned in fascicles;
* ``ups`` (undifferentiated pleomorphic sarcoma): dense, pleomorphic, hyperchromatic nuclei.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage
from skimage import draw

from sarcomakit.core.io.atomic import atomic_path, write_text

SUBTYPES = ("liposarcoma", "leiomyosarcoma", "ups")
LAYOUTS = ("svs", "tiff")
_COMPRESSIONS = {"jpeg": "jpeg", "zlib": "zlib", "deflate": "zlib", "lzw": "lzw", "none": None}

# Layout classes.
BACKGROUND, STROMA, TUMOUR, PEN_BLUE, PEN_GREEN, PEN_BLACK, DUST = range(7)
_PEN_CLASSES = (PEN_BLUE, PEN_GREEN, PEN_BLACK)

# Texture period in level-0 px: a power of two (every pyramid level stays periodic), a quarter of the
# slide's longer side within these bounds, so small test slides do not pay for large textures.
_MIN_TEXTURE_PERIOD = 256
_MAX_TEXTURE_PERIOD = 1024
_FLAT_TEXTURE_PERIOD = 256  # background, pen and dust are plain colours with fine noise
_MAX_LAYOUT_SIDE = 2048
_MIN_LEVEL_SIDE = 128
_THUMBNAIL_SIDE = 1024
# Ruifrok & Johnston optical-density vectors of haematoxylin and eosin (rows: R, G, B absorption).
_HAEMATOXYLIN = np.array([0.650, 0.704, 0.286])
_EOSIN = np.array([0.072, 0.990, 0.105])
_FLAT_COLOURS = {
    BACKGROUND: (243, 242, 245),
    PEN_BLUE: (52, 84, 168),
    PEN_GREEN: (48, 138, 92),
    PEN_BLACK: (38, 38, 44),
    DUST: (112, 106, 100),
}


@dataclass(frozen=True)
class SyntheticSlideInfo:
    """What a synthetic slide contains, for checking tissue detection and heatmaps.

    Attributes:
        path: the written slide.
        subtype: one of :data:`SUBTYPES`.
        tumour_mask_lowres: ``(h, w)`` bool, tumour cells of the layout.
        tissue_mask_lowres: ``(h, w)`` bool, all tissue (stroma and tumour, pen strokes excluded).
        pen_mask_lowres: ``(h, w)`` bool, pen strokes.
        mask_downsample: level-0 pixels per mask pixel (a power of two).
        mpp: microns per pixel at level 0.
        size: ``(width, height)`` of level 0.
        layout: ``"svs"`` or ``"tiff"``.
    """

    path: Path
    subtype: str
    tumour_mask_lowres: np.ndarray
    tissue_mask_lowres: np.ndarray
    pen_mask_lowres: np.ndarray
    mask_downsample: float
    mpp: float
    size: tuple[int, int]
    layout: str


# ----------------------------------------------------------------------------- textures

def _periodic_noise(rng: np.random.Generator, period: int, sigma: float) -> np.ndarray:
    """Smooth periodic noise with zero mean and unit standard deviation (float32).

    White noise filtered by a Gaussian of ``sigma`` px with circular boundaries, computed in the
    Fourier domain (an exact circular convolution, and much faster than a spatial filter for large
    ``sigma``).
    """
    noise = rng.standard_normal((period, period))
    frequencies_y = np.fft.fftfreq(period)[:, None]
    frequencies_x = np.fft.rfftfreq(period)[None, :]
    transfer = np.exp(-2.0 * (np.pi * sigma) ** 2 * (frequencies_y**2 + frequencies_x**2))
    field = np.fft.irfft2(np.fft.rfft2(noise) * transfer, s=(period, period))
    return ((field - field.mean()) / (field.std() + 1e-12)).astype(np.float32)


def _stamp_ellipses(target: np.ndarray, rng: np.random.Generator, count: int, radii_um: np.ndarray,
                    rotations: np.ndarray | None, values: np.ndarray, mpp: float,
                    centres: np.ndarray | None = None) -> np.ndarray:
    """Draw ``count`` ellipses (wrapping around the edges) into ``target``, keeping the maximum value.

    Returns the centres used, ``(count, 2)`` as (row, col).
    """
    period = target.shape[0]
    if centres is None:
        centres = rng.uniform(0, period, size=(count, 2))
    for index in range(count):
        r_radius, c_radius = np.maximum(radii_um[index] / mpp, 1.0)
        rotation = 0.0 if rotations is None else float(rotations[index])
        rows, cols = draw.ellipse(centres[index, 0], centres[index, 1], r_radius, c_radius,
                                  rotation=rotation)
        rows %= period
        cols %= period
        np.maximum.at(target, (rows, cols), values[index])
    return centres


def _fibres(rng: np.random.Generator, period: int, wavelength_um: float, mpp: float) -> np.ndarray:
    """Wavy periodic stripes in [0, 1] (collagen fibres or fascicles)."""
    cycles = max(1, round(period * mpp / wavelength_um))
    angle = rng.uniform(0, np.pi)
    kx, ky = round(cycles * np.cos(angle)), round(cycles * np.sin(angle))
    if kx == 0 and ky == 0:
        kx = 1
    yy, xx = np.mgrid[0:period, 0:period].astype(np.float32)
    phase = 2 * np.pi * (kx * xx + ky * yy) / period + 3.0 * _periodic_noise(rng, period, period / 16)
    return 0.5 + 0.5 * np.sin(phase)


def _stroma_concentrations(rng: np.random.Generator, period: int, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    eosin = 0.30 + 0.28 * _fibres(rng, period, 14.0, mpp) + 0.05 * _periodic_noise(rng, period, 2)
    haem = np.full((period, period), 0.20, np.float32)
    count = int(period**2 * mpp**2 / 1500)
    angles = rng.uniform(-np.pi, np.pi, count)
    radii = np.stack([rng.uniform(1.2, 2.0, count), rng.uniform(4.0, 7.0, count)], axis=1)
    _stamp_ellipses(haem, rng, count, radii, angles, rng.uniform(0.7, 1.0, count), mpp)
    return haem, eosin


def _liposarcoma_concentrations(rng: np.random.Generator, period: int,
                                mpp: float) -> tuple[np.ndarray, np.ndarray]:
    eosin = 0.42 + 0.05 * _periodic_noise(rng, period, 3)
    haem = np.full((period, period), 0.20, np.float32)
    vacuoles = np.zeros((period, period), np.float32)
    area_um2 = (period * mpp) ** 2
    count = int(0.6 * area_um2 / (np.pi * 21.0**2))
    radius = rng.uniform(10.0, 32.0, count)
    radii = np.stack([radius, radius * rng.uniform(0.8, 1.0, count)], axis=1)
    _stamp_ellipses(vacuoles, rng, count, radii, rng.uniform(-np.pi, np.pi, count), np.ones(count), mpp)
    # Shrink each vacuole by a septum width so that neighbours stay separated by pink membranes.
    septum_px = max(1, round(1.5 / mpp))
    vacuoles = ndimage.binary_erosion(vacuoles > 0, iterations=septum_px, border_value=1)
    eosin = np.where(vacuoles, 0.02, eosin)
    haem = np.where(vacuoles, 0.0, haem)
    nuclei = int(area_um2 / 2500)
    nucleus = rng.uniform(3.0, 6.5, nuclei)
    radii = np.stack([nucleus, nucleus * rng.uniform(0.6, 1.0, nuclei)], axis=1)
    _stamp_ellipses(haem, rng, nuclei, radii, rng.uniform(-np.pi, np.pi, nuclei),
                    rng.uniform(1.1, 1.5, nuclei), mpp)
    return haem, eosin


def _leiomyosarcoma_concentrations(rng: np.random.Generator, period: int,
                                   mpp: float) -> tuple[np.ndarray, np.ndarray]:
    eosin = 0.62 + 0.12 * _fibres(rng, period, 9.0, mpp) + 0.05 * _periodic_noise(rng, period, 2)
    haem = np.full((period, period), 0.22, np.float32)
    orientation = rng.uniform(-np.pi, np.pi) + 1.0 * _periodic_noise(rng, period, period / 8)
    count = int(period**2 * mpp**2 / 180)
    centres = rng.uniform(0, period, size=(count, 2))
    angles = orientation[centres[:, 0].astype(int) % period, centres[:, 1].astype(int) % period]
    radii = np.stack([rng.uniform(1.6, 2.4, count), rng.uniform(7.0, 11.0, count)], axis=1)
    _stamp_ellipses(haem, rng, count, radii, angles, rng.uniform(0.9, 1.2, count), mpp, centres)
    return haem, eosin


def _ups_concentrations(rng: np.random.Generator, period: int, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    eosin = 0.40 + 0.06 * _periodic_noise(rng, period, 3)
    haem = np.full((period, period), 0.22, np.float32)
    area_um2 = (period * mpp) ** 2
    count = int(0.45 * area_um2 / (np.pi * 5.5**2))
    major = np.exp(rng.normal(np.log(5.5), 0.35, count))
    radii = np.stack([major * rng.uniform(0.5, 1.0, count), major], axis=1)
    _stamp_ellipses(haem, rng, count, radii, rng.uniform(-np.pi, np.pi, count),
                    rng.uniform(1.0, 1.6, count), mpp)
    giants = max(1, int(area_um2 / 40000))
    giant = rng.uniform(12.0, 18.0, giants)
    _stamp_ellipses(haem, rng, giants, np.stack([giant * 0.8, giant], axis=1), None,
                    rng.uniform(1.4, 1.7, giants), mpp)
    return haem, eosin


_TUMOUR_TEXTURES = {
    "liposarcoma": _liposarcoma_concentrations,
    "leiomyosarcoma": _leiomyosarcoma_concentrations,
    "ups": _ups_concentrations,
}


def _stain_to_rgb(haem: np.ndarray, eosin: np.ndarray, stains: np.ndarray, rng: np.random.Generator,
                  period: int) -> np.ndarray:
    """Beer-Lambert: I = 250 * exp(-(c_H * h + c_E * e)), with a little chromatin texture."""
    chromatin = 1.0 + 0.12 * _periodic_noise(rng, period, 1.0)
    stains = stains.astype(np.float32)
    optical_density = ((haem * chromatin).astype(np.float32)[..., None] * stains[0]
                       + eosin.astype(np.float32)[..., None] * stains[1])
    return np.float32(250.0) * np.exp(-optical_density)


def _flat_texture(colour: tuple[int, int, int], rng: np.random.Generator, period: int,
                  amplitude: float) -> np.ndarray:
    noise = amplitude * _periodic_noise(rng, period, 1.5)[..., None]
    return np.asarray(colour, np.float32) + noise


def _texture_pyramid(texture: np.ndarray) -> list[np.ndarray]:
    """Block means by 2 down to 1 px; level ``k`` is the exact 2^k x 2^k block mean of level 0."""
    levels = [texture.astype(np.float32)]
    while levels[-1].shape[0] > 1:
        previous = levels[-1]
        levels.append(0.25 * (previous[0::2, 0::2] + previous[1::2, 0::2]
                              + previous[0::2, 1::2] + previous[1::2, 1::2]))
    return [np.clip(np.rint(level), 0, 255).astype(np.uint8) for level in levels]


# ----------------------------------------------------------------------------- layout

def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], features: float) -> np.ndarray:
    """Smooth noise over ``shape`` with about ``features`` blobs across the longer side."""
    coarse_long = max(8, int(features * 4))
    scale = coarse_long / max(shape)
    coarse_shape = (max(4, math.ceil(shape[0] * scale)), max(4, math.ceil(shape[1] * scale)))
    coarse = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 2.0, mode="reflect")
    field = ndimage.zoom(coarse, (shape[0] / coarse_shape[0], shape[1] / coarse_shape[1]), order=1)
    field = field[: shape[0], : shape[1]]
    if field.shape != shape:
        field = np.pad(field, [(0, shape[0] - field.shape[0]), (0, shape[1] - field.shape[1])], mode="edge")
    return (field - field.mean()) / (field.std() + 1e-8)


def _tissue_layout(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """One to three tissue blobs with irregular outlines, away from the slide edges."""
    height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    field = np.full(shape, -np.inf, np.float32)
    n_blobs = int(rng.integers(1, 4))
    centres_x = (np.arange(n_blobs) + 0.5) / n_blobs
    for index in range(n_blobs):
        cx = width * (0.2 + 0.6 * centres_x[index] + rng.uniform(-0.05, 0.05))
        cy = height * rng.uniform(0.35, 0.65)
        rx = width * rng.uniform(0.5, 0.7) * 0.5 / n_blobs
        ry = height * rng.uniform(0.22, 0.32)
        angle = rng.uniform(-0.5, 0.5)
        dx, dy = xx - cx, yy - cy
        u = (dx * np.cos(angle) + dy * np.sin(angle)) / rx
        v = (-dx * np.sin(angle) + dy * np.cos(angle)) / ry
        field = np.maximum(field, 1.0 - np.sqrt(u**2 + v**2))
    field += 0.18 * _smooth_field(rng, shape, 12) + 0.06 * _smooth_field(rng, shape, 40)
    tissue = field > 0.0
    labels, count = ndimage.label(tissue)
    if count > 1:  # keep real blobs, drop specks the noise created
        sizes = ndimage.sum(tissue, labels, index=np.arange(1, count + 1))
        tissue = np.isin(labels, 1 + np.flatnonzero(sizes >= 0.02 * sizes.max()))
    return tissue


def _pen_strokes(rng: np.random.Generator, shape: tuple[int, int], count: int) -> list[np.ndarray]:
    """Curved marker strokes (quadratic Bezier curves stamped with disks)."""
    height, width = shape
    radius = max(2.0, 0.012 * max(shape))
    strokes = []
    for _ in range(count):
        points = np.array([[rng.uniform(0.05, 0.95) * height, rng.uniform(0.03, 0.3) * width],
                           [rng.uniform(0.0, 1.0) * height, rng.uniform(0.3, 0.7) * width],
                           [rng.uniform(0.05, 0.95) * height, rng.uniform(0.7, 0.97) * width]])
        if rng.random() < 0.5:
            points = points[:, ::-1] * np.array([height / width, width / height])
        t = np.linspace(0, 1, 400)[:, None]
        curve = (1 - t) ** 2 * points[0] + 2 * (1 - t) * t * points[1] + t**2 * points[2]
        mask = np.zeros(shape, bool)
        for row, col in curve:
            rows, cols = draw.disk((row, col), radius, shape=shape)
            mask[rows, cols] = True
        strokes.append(mask)
    return strokes


def _dust(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    for _ in range(count):
        rows, cols = draw.disk((rng.uniform(0, shape[0]), rng.uniform(0, shape[1])),
                               rng.uniform(0.8, 2.5), shape=shape)
        mask[rows, cols] = True
    return mask


# ----------------------------------------------------------------------------- rendering

class _SlideRenderer:
    """Renders any region of any power-of-two level from the layout and the texture pyramids."""

    def __init__(self, layout: np.ndarray, layout_downsample: int, textures: dict[int, list[np.ndarray]],
                 size: tuple[int, int]) -> None:
        self.layout = layout
        self.layout_downsample = layout_downsample
        self.textures = textures
        self.size = size

    def level_size(self, level: int) -> tuple[int, int]:
        return max(1, self.size[0] >> level), max(1, self.size[1] >> level)

    def render(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """Return ``(height, width, 3)`` uint8 pixels of ``level`` starting at level pixel (x0, y0)."""
        scale = 1 << level
        level_w, level_h = self.level_size(level)
        ys = np.arange(y0, y0 + height)
        xs = np.arange(x0, x0 + width)
        # Layout cell under the centre of each level pixel.
        layout_rows = np.minimum(((2 * ys + 1) * scale) // (2 * self.layout_downsample), self.layout.shape[0] - 1)
        layout_cols = np.minimum(((2 * xs + 1) * scale) // (2 * self.layout_downsample), self.layout.shape[1] - 1)
        classes = self.layout[np.ix_(layout_rows, layout_cols)]
        values = np.unique(classes)
        out = self._texture_window(int(values[0]), level, x0, y0, width, height)
        for value in values[1:]:
            where = classes == value
            out[where] = self._texture_window(int(value), level, x0, y0, width, height)[where]
        out[ys >= level_h] = 255
        out[:, xs >= level_w] = 255
        return out

    def _texture_window(self, value: int, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """A ``(height, width, 3)`` window of a periodic texture (a copy)."""
        pyramid = self.textures[value]
        texture = pyramid[min(level, len(pyramid) - 1)]
        period = texture.shape[0]
        row0, col0 = y0 % period, x0 % period
        if row0 + height <= period and col0 + width <= period:
            return texture[row0:row0 + height, col0:col0 + width].copy()
        return np.take(np.take(texture, np.arange(row0, row0 + height), axis=0, mode="wrap"),
                       np.arange(col0, col0 + width), axis=1, mode="wrap")

    def tiles(self, level: int, tile_size: int) -> Iterator[np.ndarray]:
        level_w, level_h = self.level_size(level)
        for y0 in range(0, level_h, tile_size):
            for x0 in range(0, level_w, tile_size):
                yield self.render(level, x0, y0, tile_size, tile_size)


def _layout_downsample(size: tuple[int, int]) -> int:
    return max(4, 1 << math.ceil(math.log2(max(1.0, max(size) / _MAX_LAYOUT_SIDE))))


def _aperio_description(size: tuple[int, int], level_size: tuple[int, int], tile_size: int, mpp: float,
                        compression: str) -> str:
    width, height = size
    level_w, level_h = level_size
    header = f"Aperio Image Library v12.0.16 \r\n{width}x{height} [0,0 {width}x{height}] ({tile_size}x{tile_size})"
    if level_size != size:
        header += f" -> {level_w}x{level_h}"
    codec = "JPEG/RGB Q=85" if compression == "jpeg" else compression.upper()
    app_mag = round(10.0 / mpp)
    return (f"{header} {codec}|AppMag = {app_mag}|ScanScope ID = SARCOMAKIT-SYNTHETIC"
            f"|Filename = synthetic|MPP = {mpp:.4f}")


def write_synthetic_slide(path: str | Path, *, subtype: str, size: tuple[int, int] = (4096, 3072),
                          mpp: float = 0.5, seed: int = 0, layout: str = "svs", tumour_fraction: float = 0.5,
                          tile_size: int = 256, compression: str = "jpeg",
                          write_resolution: bool = True) -> SyntheticSlideInfo:
    """Write an H&E-like pyramidal slide with a tumour region of the given subtype.

    Args:
        path: output file (written atomically).
        subtype: one of :data:`SUBTYPES`.
        size: ``(width, height)`` of level 0 in pixels.
        mpp: microns per pixel at level 0 (textures keep their physical size whatever the mpp).
        seed: random seed; the same arguments give the same file.
        layout: ``"svs"`` (Aperio: description with ``AppMag`` and ``MPP``, full-resolution tiled
            page, stripped thumbnail page, then 2x downsampled tiled pages) or ``"tiff"`` (generic
            pyramidal TIFF: resolution tags in pixels per centimetre, reduced-resolution tiled pages).
        tumour_fraction: fraction of the tissue area covered by tumour.
        tile_size: TIFF tile side in pixels.
        compression: ``"jpeg"``, ``"zlib"``, ``"lzw"`` or ``"none"``.
        write_resolution: write the resolution metadata (``False`` makes a slide without mpp,
            for testing the refusal).

    Returns:
        :class:`SyntheticSlideInfo` with the true tissue, tumour and pen masks of the layout.
    """
    if subtype not in SUBTYPES:
        raise ValueError(f"unknown subtype {subtype!r}; expected one of {SUBTYPES}")
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if compression not in _COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of {tuple(_COMPRESSIONS)}")
    if not 0.0 < tumour_fraction <= 1.0:
        raise ValueError(f"tumour_fraction must be in (0, 1], got {tumour_fraction}")
    if tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16 (TIFF rule), got {tile_size}")
    width, height = int(size[0]), int(size[1])
    path = Path(path)
    rng = np.random.default_rng([seed, SUBTYPES.index(subtype)])

    layout_downsample = _layout_downsample((width, height))
    layout_shape = (math.ceil(height / layout_downsample), math.ceil(width / layout_downsample))
    tissue = _tissue_layout(rng, layout_shape)
    tumour_field = _smooth_field(rng, layout_shape, 6)
    threshold = np.quantile(tumour_field[tissue], 1.0 - tumour_fraction) if tissue.any() else np.inf
    tumour = tissue & (tumour_field >= threshold)
    strokes = _pen_strokes(rng, layout_shape, count=int(rng.integers(1, 3)))
    dust = _dust(rng, layout_shape, count=25) & ~tissue
    classes = np.full(layout_shape, BACKGROUND, np.uint8)
    classes[tissue] = STROMA
    classes[tumour] = TUMOUR
    classes[dust] = DUST
    pen = np.zeros(layout_shape, bool)
    for index, stroke in enumerate(strokes):
        classes[stroke] = _PEN_CLASSES[index % len(_PEN_CLASSES)]
        pen |= stroke

    period = int(np.clip(1 << math.ceil(math.log2(max(width, height) / 4)), _MIN_TEXTURE_PERIOD,
                         _MAX_TEXTURE_PERIOD))
    stains = np.stack([_HAEMATOXYLIN + rng.normal(0, 0.03, 3), _EOSIN + rng.normal(0, 0.03, 3)])
    stains = np.abs(stains) / np.linalg.norm(stains, axis=1, keepdims=True)
    stains *= rng.uniform(0.85, 1.15, size=(2, 1))  # slide-to-slide staining intensity
    stroma_rgb = _stain_to_rgb(*_stroma_concentrations(rng, period, mpp), stains, rng, period)
    tumour_rgb = _stain_to_rgb(*_TUMOUR_TEXTURES[subtype](rng, period, mpp), stains, rng, period)
    textures = {STROMA: _texture_pyramid(stroma_rgb), TUMOUR: _texture_pyramid(tumour_rgb)}
    for value, colour in _FLAT_COLOURS.items():
        amplitude = 1.5 if value == BACKGROUND else 8.0
        textures[value] = _texture_pyramid(_flat_texture(colour, rng, _FLAT_TEXTURE_PERIOD, amplitude))
    renderer = _SlideRenderer(classes, layout_downsample, textures, (width, height))

    levels = [0]
    while min(width, height) >> (levels[-1] + 1) >= _MIN_LEVEL_SIDE:
        levels.append(levels[-1] + 1)
    _write_pyramid(path, renderer, levels, layout=layout, mpp=mpp, tile_size=tile_size,
                   compression=compression, write_resolution=write_resolution)
    return SyntheticSlideInfo(path=path, subtype=subtype, tumour_mask_lowres=tumour & ~pen,
                              tissue_mask_lowres=tissue & ~pen, pen_mask_lowres=pen,
                              mask_downsample=float(layout_downsample), mpp=float(mpp), size=(width, height),
                              layout=layout)


def _write_pyramid(path: Path, renderer: _SlideRenderer, levels: list[int], *, layout: str, mpp: float,
                   tile_size: int, compression: str, write_resolution: bool) -> None:
    size = renderer.size
    codec = _COMPRESSIONS[compression]
    codec_args = {"level": 85} if codec == "jpeg" else None
    bigtiff = size[0] * size[1] * 3 > 2**31
    common: dict[str, Any] = {"dtype": np.uint8, "photometric": "rgb", "compression": codec,
                              "compressionargs": codec_args, "metadata": None}
    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=bigtiff) as writer:
        for level in levels:
            level_w, level_h = renderer.level_size(level)
            options: dict[str, Any] = dict(common, shape=(level_h, level_w, 3), tile=(tile_size, tile_size))
            if layout == "svs":
                description = _aperio_description(size, (level_w, level_h), tile_size, mpp, compression)
                if not write_resolution:
                    description = description.replace(f"|MPP = {mpp:.4f}", "")
                options["description"] = description
            else:
                options["subfiletype"] = 0 if level == 0 else 1
                if write_resolution:
                    pixels_per_cm = 1e4 / (mpp * (1 << level))
                    options["resolution"] = (pixels_per_cm, pixels_per_cm)
                    options["resolutionunit"] = "CENTIMETER"
            writer.write(renderer.tiles(level, tile_size), **options)
            if layout == "svs" and level == 0:
                _write_svs_thumbnail(writer, renderer, size, tile_size, mpp, compression, common)


def _write_svs_thumbnail(writer: tifffile.TiffWriter, renderer: _SlideRenderer, size: tuple[int, int],
                         tile_size: int, mpp: float, compression: str, common: dict[str, Any]) -> None:
    """The stripped thumbnail page Aperio puts second (without it tiffslide sees a single level)."""
    level = max(0, math.ceil(math.log2(max(1.0, max(size) / _THUMBNAIL_SIDE))))
    level_w, level_h = renderer.level_size(level)
    thumbnail = renderer.render(level, 0, 0, level_w, level_h)
    writer.write(thumbnail, **dict(common, description=_aperio_description(
        size, (level_w, level_h), tile_size, mpp, compression)), rowsperstrip=16)


# ----------------------------------------------------------------------------- cohort

def make_synthetic_wsi_cohort(out_dir: str | Path, n_slides: int = 12, seed: int = 0,
                              size: tuple[int, int] = (3072, 2048), mpp: float = 0.5) -> Path:
    """Write a small cohort of synthetic slides with balanced subtypes and a ``slides.csv``.

    Each patient has one or two slides of the same subtype. Slides alternate between the SVS and the
    generic TIFF layouts (three SVS for one TIFF). The true tumour mask of each slide is saved as
    ``masks/<slide_id>_tumour.npy`` (bool, one pixel per ``mask_downsample`` level-0 pixels).

    ``slides.csv`` columns: ``slide_id, path, label, patient_id, tumour_mask, mask_downsample, mpp``;
    paths are relative to the folder of ``slides.csv``.

    Returns:
        The path of ``slides.csv``.
    """
    out_dir = Path(out_dir)
    if n_slides < len(SUBTYPES):
        raise ValueError(f"a cohort needs at least {len(SUBTYPES)} slides (one per subtype), got {n_slides}")
    rng = np.random.default_rng(seed)
    labels = [SUBTYPES[index % len(SUBTYPES)] for index in range(n_slides)]
    rows = []
    patient = 0
    index = 0
    for subtype in SUBTYPES:
        remaining = labels.count(subtype)
        while remaining > 0:
            per_patient = min(remaining, int(rng.integers(1, 3)))
            for _ in range(per_patient):
                slide_id = f"slide_{index:03d}"
                layout = "tiff" if index % 4 == 3 else "svs"
                suffix = ".tif" if layout == "tiff" else ".svs"
                info = write_synthetic_slide(out_dir / "slides" / f"{slide_id}{suffix}", subtype=subtype,
                                             size=size, mpp=mpp, seed=seed * 1000 + index, layout=layout,
                                             tumour_fraction=float(rng.uniform(0.3, 0.6)))
                mask_path = out_dir / "masks" / f"{slide_id}_tumour.npy"
                with atomic_path(mask_path) as tmp:
                    np.save(tmp, info.tumour_mask_lowres)
                rows.append({"slide_id": slide_id, "path": f"slides/{slide_id}{suffix}", "label": subtype,
                             "patient_id": f"patient_{patient:03d}",
                             "tumour_mask": f"masks/{slide_id}_tumour.npy",
                             "mask_downsample": info.mask_downsample, "mpp": mpp})
                index += 1
            patient += 1
            remaining -= per_patient
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text(out_dir / "slides.csv", buffer.getvalue())
