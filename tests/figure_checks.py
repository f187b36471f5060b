"""Read written figures back, so that figure tests check what is drawn and not only that a file exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def read_png(path: str | Path) -> np.ndarray:
    """The (height, width, 3) uint8 RGB pixels of a PNG file; fails unless the file decodes as a PNG."""
    with Image.open(path) as image:
        assert image.format == "PNG", f"{path} is {image.format}, not PNG"
        return np.asarray(image.convert("RGB"))


def near_colour(pixels: np.ndarray, colour: str, tolerance: int = 40) -> np.ndarray:
    """Boolean map of the pixels within ``tolerance`` (per channel, 0-255) of ``colour`` ("#rrggbb")."""
    target = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
    return (np.abs(pixels.astype(int) - target) <= tolerance).all(axis=-1)


def figure_shape(width_in: float, height_in: float, dpi: float) -> tuple[int, int]:
    """The (height, width) in pixels of a figure of that size saved at ``dpi`` without a tight bounding box."""
    return int(round(height_in * dpi)), int(round(width_in * dpi))


def centroid(mask: np.ndarray) -> np.ndarray:
    """Mean (row, column) of the true pixels."""
    assert mask.any(), "no pixel of that colour"
    return np.argwhere(mask).mean(axis=0)
