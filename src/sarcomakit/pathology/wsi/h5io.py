"""Per-slide HDF5 files in the layout CLAM users know: ``coords`` (and ``features``).

Coordinates file (``<slide>.h5``), as written by CLAM's ``create_patches_fp.py``:

* dataset ``coords``: ``(N, 2)`` int64, level-0 ``(x, y)`` of each tile's top-left corner;
* ``coords`` attributes read by CLAM: ``patch_size`` (tile side *at* ``patch_level``, i.e. what to
  pass to ``read_region`` as the size), ``patch_level``, ``downsample`` (``(dx, dy)`` of that level),
  ``downsampled_level_dim`` and ``level_dim`` (``(w, h)`` of that level), ``name``;
* our own attributes beside them: ``target_mpp``, ``tile_size`` (side after resizing),
  ``size_level0``, ``stride_level0``, ``slide_mpp``, ``read_size``, ``level_downsample``,
  ``slide_dimensions``, ``format`` and ``format_version``;
* dataset ``tissue_fraction``: ``(N,)`` float32.

So CLAM's ``Whole_Slide_Bag_FP`` reads the same regions we read (``read_region(coord, patch_level,
(patch_size, patch_size))``, then resizes them). Features file: datasets ``features`` ``(N, D)``
float32 and ``coords`` ``(N, 2)`` int64, as CLAM's ``extract_features_fp.py`` writes, plus any
attributes on the root. Every file is written atomically.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path
from sarcomakit.pathology.wsi.tiling import TileGrid

FORMAT = "sarcomakit-tiles"
FORMAT_VERSION = 1


def coords_attributes(grid: TileGrid, slide_name: str) -> dict[str, Any]:
    """The attributes stored on the ``coords`` dataset (CLAM's names first, then ours)."""
    level_w = max(1, round(grid.slide_dimensions[0] / grid.level_downsample))
    level_h = max(1, round(grid.slide_dimensions[1] / grid.level_downsample))
    return {
        "patch_size": int(grid.read_size),
        "patch_level": int(grid.level),
        "downsample": np.array([grid.level_downsample, grid.level_downsample], np.float64),
        "downsampled_level_dim": np.array([level_w, level_h], np.int64),
        "level_dim": np.array([level_w, level_h], np.int64),
        "name": str(slide_name),
        "target_mpp": float(grid.target_mpp),
        "tile_size": int(grid.tile_size),
        "size_level0": int(grid.size_level0),
        "stride_level0": int(grid.stride_level0),
        "slide_mpp": float(grid.slide_mpp),
        "read_size": int(grid.read_size),
        "level_downsample": float(grid.level_downsample),
        "slide_dimensions": np.array(grid.slide_dimensions, np.int64),
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
    }


def save_coords(path: str | Path, grid: TileGrid, *, slide_name: str) -> Path:
    """Write a tile grid as a CLAM-compatible coordinates file.

    Args:
        path: output ``.h5`` file.
        grid: the tiles.
        slide_name: slide identifier stored as the ``name`` attribute.

    Returns:
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        coords = handle.create_dataset("coords", data=grid.coords.astype(np.int64).reshape(-1, 2))
        for key, value in coords_attributes(grid, slide_name).items():
            coords.attrs[key] = value
        handle.create_dataset("tissue_fraction", data=grid.tissue_fraction.astype(np.float32))
    return path


def _open(path: Path) -> h5py.File:
    if not path.is_file():
        raise UserInputError("HDF5 file not found.", path=path)
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise UserInputError(f"cannot read the HDF5 file ({error}).", path=path,
                             fix="delete it and run the step that writes it again.") from error


def _scalar(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def load_coords(path: str | Path) -> TileGrid:
    """Read a coordinates file written by :func:`save_coords` or by CLAM.

    CLAM's files carry no resolution: ``target_mpp`` and ``slide_mpp`` are then NaN, the tile size
    is CLAM's ``patch_size`` and the level-0 side is ``patch_size * downsample``.

    Raises:
        UserInputError: missing or unreadable file, or no ``coords`` dataset.
    """
    path = Path(path)
    with _open(path) as handle:
        if "coords" not in handle:
            raise UserInputError("the HDF5 file has no 'coords' dataset.", path=path,
                                 fix="give a coordinates file written by `sarcomakit wsi tile` or CLAM.")
        dataset = handle["coords"]
        coords = np.asarray(dataset[:], dtype=np.int64).reshape(-1, 2)
        attrs = {key: _scalar(value) for key, value in dataset.attrs.items()}
        fractions = (np.asarray(handle["tissue_fraction"][:], np.float32) if "tissue_fraction" in handle
                     else np.ones(len(coords), np.float32))
    try:
        patch_size = int(attrs["patch_size"])
        level = int(attrs["patch_level"])
    except KeyError as error:
        raise UserInputError(f"the 'coords' dataset lacks the {error.args[0]!r} attribute.", path=path) from error
    downsample = attrs.get("downsample", 1.0)
    fallback: float = downsample[0] if isinstance(downsample, list) else downsample  # CLAM: per-axis list
    level_downsample = float(attrs.get("level_downsample", fallback))
    slide_dimensions = attrs.get("slide_dimensions")
    if slide_dimensions is None:
        level_dim = attrs.get("level_dim", [0, 0])
        slide_dimensions = [round(level_dim[0] * level_downsample), round(level_dim[1] * level_downsample)]
    size_level0 = int(attrs.get("size_level0", round(patch_size * level_downsample)))
    return TileGrid(coords=coords, tile_size=int(attrs.get("tile_size", patch_size)),
                    target_mpp=float(attrs.get("target_mpp", math.nan)), level=level,
                    read_size=int(attrs.get("read_size", patch_size)), size_level0=size_level0,
                    tissue_fraction=fractions, slide_mpp=float(attrs.get("slide_mpp", math.nan)),
                    level_downsample=level_downsample,
                    slide_dimensions=(int(slide_dimensions[0]), int(slide_dimensions[1])),
                    stride_level0=int(attrs.get("stride_level0", size_level0)))


def _attribute_value(value: Any) -> Any:
    """HDF5 stores numbers, strings and arrays; anything else is stored as JSON text."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str | int | float | bool | np.generic | np.ndarray):
        return value
    if isinstance(value, list | tuple) and all(isinstance(item, int | float) for item in value):
        return np.asarray(value)
    return json.dumps(value)


def save_features(path: str | Path, features: np.ndarray, coords: np.ndarray,
                  attrs: Mapping[str, Any] | None = None) -> Path:
    """Write a bag of tile features with their coordinates (CLAM's features layout).

    Args:
        path: output ``.h5`` file.
        features: ``(N, D)`` features, stored as float32.
        coords: ``(N, 2)`` level-0 ``(x, y)`` of the tiles, stored as int64.
        attrs: attributes for the file root (encoder name, tile geometry, ...).

    Returns:
        ``path``.
    """
    features = np.asarray(features, dtype=np.float32)
    coords = np.asarray(coords, dtype=np.int64).reshape(-1, 2)
    if features.ndim != 2 or len(features) != len(coords):
        raise ValueError(f"features must be (N, D) with N = {len(coords)} coords, got {features.shape}")
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        handle.create_dataset("features", data=features)
        handle.create_dataset("coords", data=coords)
        for key, value in (attrs or {}).items():
            handle.attrs[key] = _attribute_value(value)
    return path


def load_features(path: str | Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read a features file: ``(features (N, D) float32, coords (N, 2) int64, root attributes)``."""
    path = Path(path)
    with _open(path) as handle:
        missing = [name for name in ("features", "coords") if name not in handle]
        if missing:
            raise UserInputError(f"the HDF5 file has no {' or '.join(repr(m) for m in missing)} dataset.",
                                 path=path, fix="run `sarcomakit wsi embed` for this slide again.")
        features = np.asarray(handle["features"][:], dtype=np.float32)
        coords = np.asarray(handle["coords"][:], dtype=np.int64).reshape(-1, 2)
        attrs = {key: _scalar(value) for key, value in handle.attrs.items()}
    return features, coords, attrs
