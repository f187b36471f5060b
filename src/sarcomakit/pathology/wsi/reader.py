"""Whole-slide image readers: one small interface over OpenSlide and tiffslide.

Every reader returns RGB ``uint8`` regions ``(h, w, 3)``, level geometry in ``(width, height)`` order
(as OpenSlide does) and the resolution at level 0 in microns per pixel. Regions that extend past the
slide edge are white, whatever the backend.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from PIL import Image

from sarcomakit.core.errors import UserInputError

BACKENDS = ("auto", "openslide", "tiffslide")

_MPP_FIX = "pass --mpp with the microns per pixel of the full-resolution level (e.g. 0.25 at 40x, 0.5 at 20x)."
_CM_PER_UNIT = {"centimeter": 1.0, "inch": 2.54, "3": 1.0, "2": 2.54}
# A level whose downsample is within this relative tolerance of the request counts as equal to it,
# so that a level stored at 3999 px instead of 4000 px (downsample 2.0005) is still chosen for 2.0.
_DOWNSAMPLE_TOLERANCE = 1e-3
# Largest block (level pixels per side) read at once by SlideReader.read_whole_slide.
WHOLE_SLIDE_BLOCK = 4096


class SlideReader:
    """A whole-slide image opened for reading.

    Attributes:
        path: the slide file.
        backend: ``"openslide"`` or ``"tiffslide"``.
        level_count: number of pyramid levels.
        level_dimensions: ``(width, height)`` of each level, level 0 first.
        level_downsamples: level-0 pixels per level pixel for each level.
        mpp: ``(x, y)`` microns per pixel at level 0.

    Use it as a context manager, or call :meth:`close`.
    """

    path: Path
    backend: str
    level_count: int
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: tuple[float, float]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read an RGB region.

        Args:
            location: ``(x, y)`` of the top-left corner in level-0 pixels.
            level: pyramid level to read from.
            size: ``(width, height)`` in pixels of that level.

        Returns:
            ``uint8`` array ``(height, width, 3)``; pixels outside the slide are white.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range: {self.path} has {self.level_count} levels")
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        try:
            return self._read_region((int(location[0]), int(location[1])), level, (width, height))
        except Exception as error:  # decoder errors of a damaged file become one message naming the slide
            raise UserInputError(
                f"cannot read the slide at level {level}, location {tuple(location)} "
                f"(corrupt or truncated file; {self.backend}: {type(error).__name__}: {error}).",
                path=self.path, fix="check that the file is a complete whole-slide image.") from error

    def _read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        raise NotImplementedError

    def best_level_for_downsample(self, downsample: float) -> int:
        """Return the level with the largest downsample not above ``downsample`` (level 0 if none)."""
        best = 0
        for level, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * (1.0 + _DOWNSAMPLE_TOLERANCE):
                best = level
        return best

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        """Return an RGB image of the whole slide whose longer side is ``max_size`` pixels (or less)."""
        width0, height0 = self.level_dimensions[0]
        return self.read_whole_slide(max(width0, height0) / max_size)

    def read_whole_slide(self, downsample: float) -> np.ndarray:
        """The whole slide at ``downsample`` level-0 pixels per output pixel (at least 1).

        The level just finer than requested is read and resized (bilinear, antialiased), in blocks of
        at most ``WHOLE_SLIDE_BLOCK`` x ``WHOLE_SLIDE_BLOCK`` level pixels so that a slide without a
        useful pyramid (a flat TIFF) never has to be held whole in memory.

        Returns:
            ``uint8`` RGB ``(round(h0 / downsample), round(w0 / downsample), 3)``.
        """
        width0, height0 = self.level_dimensions[0]
        downsample = max(float(downsample), 1.0)
        out_w, out_h = max(1, round(width0 / downsample)), max(1, round(height0 / downsample))
        level = self.best_level_for_downsample(downsample)
        level_w, level_h = self.level_dimensions[level]
        level_downsample = self.level_downsamples[level]
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        scale_x, scale_y = out_w / level_w, out_h / level_h
        block = WHOLE_SLIDE_BLOCK
        for y0 in range(0, level_h, block):
            y1 = min(y0 + block, level_h)
            out_y0, out_y1 = round(y0 * scale_y), round(y1 * scale_y)
            for x0 in range(0, level_w, block):
                x1 = min(x0 + block, level_w)
                out_x0, out_x1 = round(x0 * scale_x), round(x1 * scale_x)
                if out_x1 <= out_x0 or out_y1 <= out_y0:
                    continue
                region = self.read_region((round(x0 * level_downsample), round(y0 * level_downsample)), level,
                                          (x1 - x0, y1 - y0))
                if region.shape[:2] != (out_y1 - out_y0, out_x1 - out_x0):
                    region = np.asarray(Image.fromarray(region).resize((out_x1 - out_x0, out_y1 - out_y0),
                                                                       Image.Resampling.BILINEAR))
                out[out_y0:out_y1, out_x0:out_x1] = region
        return out

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(width, height)`` of level 0."""
        return self.level_dimensions[0]

    def close(self) -> None:
        """Release the file handle."""

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, levels={self.level_dimensions}, "
                f"mpp=({self.mpp[0]:.4g}, {self.mpp[1]:.4g}))")


def _float_or_none(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _mpp_from_properties(properties: Any, prefix: str) -> tuple[float, float] | None:
    """Read microns per pixel from backend properties, falling back to the TIFF resolution tags."""
    mpp_x = _float_or_none(properties.get(f"{prefix}.mpp-x"))
    mpp_y = _float_or_none(properties.get(f"{prefix}.mpp-y"))
    if mpp_x is not None:
        return mpp_x, mpp_y if mpp_y is not None else mpp_x
    unit = str(properties.get("tiff.ResolutionUnit", "")).lower()
    x_res = _float_or_none(properties.get("tiff.XResolution"))
    y_res = _float_or_none(properties.get("tiff.YResolution"))
    if unit in _CM_PER_UNIT and x_res is not None:
        microns_per_unit = _CM_PER_UNIT[unit] * 1e4
        y_res = y_res if y_res is not None else x_res
        return microns_per_unit / x_res, microns_per_unit / y_res
    return None


def _white_canvas(location: tuple[int, int], size: tuple[int, int], level_shape: tuple[int, int],
                  downsample: float) -> tuple[np.ndarray, slice, slice]:
    """Return a white canvas of ``size`` and the (rows, cols) slices of it that lie inside the level."""
    width, height = size
    level_w, level_h = level_shape
    x0 = math.floor(location[0] / downsample)
    y0 = math.floor(location[1] / downsample)
    canvas = np.full((height, width, 3), 255, dtype=np.uint8)
    cols = slice(max(0, -x0), max(0, min(width, level_w - x0)))
    rows = slice(max(0, -y0), max(0, min(height, level_h - y0)))
    return canvas, rows, cols


class OpenSlideReader(SlideReader):
    """Reader backed by OpenSlide (``openslide-python`` with the ``openslide-bin`` library)."""

    backend = "openslide"

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        import openslide

        self.path = path
        self._slide = openslide.OpenSlide(str(path))
        self.level_count = self._slide.level_count
        self.level_dimensions = [(int(d[0]), int(d[1])) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        self.properties = dict(self._slide.properties)
        self.mpp = _resolve_mpp(path, mpp, _mpp_from_properties(self.properties, "openslide"))

    def _read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        rgba = np.asarray(self._slide.read_region(location, level, size))
        return _composite_on_white(rgba)

    def close(self) -> None:
        self._slide.close()


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Drop the alpha channel, compositing (non-premultiplied) transparent pixels on white."""
    # Channel-by-channel copy: several times faster than copying the strided ``rgba[..., :3]`` view at once.
    rgb = np.empty(rgba.shape[:2] + (3,), dtype=np.uint8)
    for channel in range(3):
        rgb[..., channel] = rgba[..., channel]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgb
    weight = alpha[..., None].astype(np.float32) / 255.0
    composited = rgb.astype(np.float32) * weight + 255.0 * (1.0 - weight)
    return np.clip(np.rint(composited), 0, 255).astype(np.uint8)


class TiffSlideReader(SlideReader):
    """Reader backed by tiffslide (pure Python, tifffile + imagecodecs)."""

    backend = "tiffslide"

    def __init__(self, path: Path, mpp: float | None = None) -> None:
        import tiffslide

        self.path = path
        self._slide = tiffslide.TiffSlide(str(path))
        self.level_count = self._slide.level_count
        self.level_dimensions = [(int(d[0]), int(d[1])) for d in self._slide.level_dimensions]
        self.level_downsamples = [float(d) for d in self._slide.level_downsamples]
        self.properties = dict(self._slide.properties)
        self.mpp = _resolve_mpp(path, mpp, _mpp_from_properties(self.properties, "tiffslide"))

    def _read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        # tiffslide pads out-of-slide pixels with black; clip to the level and paste on white instead.
        downsample = self.level_downsamples[level]
        canvas, rows, cols = _white_canvas(location, size, self.level_dimensions[level], downsample)
        inner_w, inner_h = cols.stop - cols.start, rows.stop - rows.start
        if (inner_w, inner_h) == size:  # wholly inside the slide: no canvas needed
            region = self._slide.read_region(location, level, size, as_array=True)
            if region.shape[2] == 3 and region.flags.writeable and region.flags.c_contiguous:
                return region
            canvas[:] = region[..., :3]
        elif inner_w > 0 and inner_h > 0:
            inner_location = (location[0] + round(cols.start * downsample),
                              location[1] + round(rows.start * downsample))
            inner = self._slide.read_region(inner_location, level, (inner_w, inner_h), as_array=True)
            canvas[rows, cols] = inner[..., :3]
        return canvas

    def close(self) -> None:
        self._slide.close()


def _resolve_mpp(path: Path, mpp: float | None, from_file: tuple[float, float] | None) -> tuple[float, float]:
    if mpp is not None:
        if not (math.isfinite(mpp) and mpp > 0):
            raise UserInputError(f"--mpp must be a positive number of microns per pixel, got {mpp}.",
                                 path=path)
        return float(mpp), float(mpp)
    if from_file is None:
        raise UserInputError("the slide has no resolution metadata (microns per pixel).", path=path,
                             fix=_MPP_FIX)
    return from_file


def open_slide(path: str | Path, *, mpp: float | None = None, backend: str = "auto") -> SlideReader:
    """Open a whole-slide image.

    Args:
        path: slide file (SVS, generic pyramidal TIFF, NDPI, MRXS, ... whatever the backend reads).
        mpp: microns per pixel at level 0; overrides the file's metadata, and is required when the file
            has none.
        backend: ``"openslide"``, ``"tiffslide"`` or ``"auto"`` (OpenSlide first, then tiffslide).

    Returns:
        An open :class:`SlideReader`.

    Raises:
        UserInputError: missing, corrupt or unsupported file, unknown backend, or no resolution.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise UserInputError(f"unknown slide backend {backend!r}.", fix=f"use one of {', '.join(BACKENDS)}.")
    if not path.is_file():
        raise UserInputError("slide file not found.", path=path)
    choices: dict[str, list[type[OpenSlideReader] | type[TiffSlideReader]]] = {
        "auto": [OpenSlideReader, TiffSlideReader],
        "openslide": [OpenSlideReader],
        "tiffslide": [TiffSlideReader],
    }
    classes = choices[backend]
    errors: list[str] = []
    for reader_class in classes:
        try:
            return reader_class(path, mpp)
        except UserInputError:
            raise
        except Exception as error:  # noqa: BLE001 - every backend failure becomes one user-facing message
            errors.append(f"{reader_class.backend}: {type(error).__name__}: {error}".strip())
    raise UserInputError(f"cannot read the slide (corrupt or unsupported format; {'; '.join(errors)}).",
                         path=path, fix="check that the file is a complete whole-slide image.")
