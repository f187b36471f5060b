"""CLAM-compatible HDF5 files: layout, attributes, round trips and bad files."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.wsi.h5io import load_coords, load_features, save_coords, save_features
from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.tiling import TileGrid, tile_slide
from sarcomakit.pathology.wsi.tissue import detect_tissue


def _grid() -> TileGrid:
    return TileGrid(coords=np.array([[0, 512], [512, 512], [1024, 0]]), tile_size=256, target_mpp=0.5, level=1,
                    read_size=256, size_level0=512, tissue_fraction=np.array([0.5, 0.75, 1.0]), slide_mpp=0.25,
                    level_downsample=2.0, slide_dimensions=(2048, 1536), stride_level0=512)


def test_coords_layout_matches_clam(tmp_path: Path) -> None:
    path = save_coords(tmp_path / "patches" / "slide_a.h5", _grid(), slide_name="slide_a")
    with h5py.File(path, "r") as handle:
        coords = handle["coords"]
        assert coords.shape == (3, 2) and coords.dtype == np.int64
        attrs = dict(coords.attrs)
    assert attrs["patch_size"] == 256 and attrs["patch_level"] == 1  # size *at* patch_level, as CLAM
    np.testing.assert_array_equal(attrs["downsample"], [2.0, 2.0])
    np.testing.assert_array_equal(attrs["level_dim"], [1024, 768])
    np.testing.assert_array_equal(attrs["downsampled_level_dim"], [1024, 768])
    assert attrs["name"] == "slide_a"
    assert attrs["target_mpp"] == 0.5 and attrs["size_level0"] == 512 and attrs["slide_mpp"] == 0.25
    assert attrs["tile_size"] == 256 and attrs["read_size"] == 256
    assert not list(path.parent.glob(".*"))  # no temporary file left behind


def test_coords_round_trip(tmp_path: Path) -> None:
    grid = _grid()
    loaded = load_coords(save_coords(tmp_path / "a.h5", grid, slide_name="a"))
    np.testing.assert_array_equal(loaded.coords, grid.coords)
    np.testing.assert_allclose(loaded.tissue_fraction, grid.tissue_fraction)
    for name in ("tile_size", "target_mpp", "level", "read_size", "size_level0", "slide_mpp", "level_downsample",
                 "slide_dimensions", "stride_level0"):
        assert getattr(loaded, name) == getattr(grid, name), name


def test_reads_a_clam_file(tmp_path: Path) -> None:
    """A file as CLAM's create_patches_fp.py writes it (no resolution attributes)."""
    path = tmp_path / "clam.h5"
    with h5py.File(path, "w") as handle:
        coords = handle.create_dataset("coords", data=np.array([[0, 0], [1024, 0]], np.int64))
        coords.attrs.update({"patch_size": 256, "patch_level": 0, "downsample": np.array([1.0, 1.0]),
                             "downsampled_level_dim": np.array([4096, 3072]), "level_dim": np.array([4096, 3072]),
                             "name": "clam_slide", "save_path": "/tmp"})
    grid = load_coords(path)
    assert grid.size_level0 == 256 and grid.read_size == 256 and grid.level == 0
    assert grid.slide_dimensions == (4096, 3072)
    assert math.isnan(grid.target_mpp) and math.isnan(grid.slide_mpp)


def test_clam_style_read_gives_our_tile(tmp_path: Path, svs_slide) -> None:
    """read_region(coord, patch_level, (patch_size,)*2), as CLAM does, covers our tile exactly."""
    with open_slide(svs_slide.path) as reader:
        grid = tile_slide(reader, target_mpp=0.5, tile_size=256, tissue=detect_tissue(reader))
        path = save_coords(tmp_path / "s.h5", grid, slide_name="s")
        with h5py.File(path, "r") as handle:
            x, y = handle["coords"][0]
            level, size = handle["coords"].attrs["patch_level"], handle["coords"].attrs["patch_size"]
            downsample = handle["coords"].attrs["downsample"][0]
        region = reader.read_region((int(x), int(y)), int(level), (int(size), int(size)))
    assert size * downsample == grid.size_level0
    assert region.shape == (256, 256, 3)


def test_features_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(5, 8))
    coords = np.arange(10).reshape(5, 2)
    path = save_features(tmp_path / "features" / "a.h5", features, coords,
                         {"encoder": "resnet18", "tile_size": 224, "target_mpp": 0.5, "extra": {"k": 1},
                          "shape": (224, 224)})
    loaded, loaded_coords, attrs = load_features(path)
    assert loaded.dtype == np.float32 and loaded_coords.dtype == np.int64
    np.testing.assert_allclose(loaded, features.astype(np.float32))
    np.testing.assert_array_equal(loaded_coords, coords)
    assert attrs["encoder"] == "resnet18" and attrs["tile_size"] == 224 and attrs["extra"] == '{"k": 1}'
    assert attrs["shape"] == [224, 224]
    with h5py.File(path, "r") as handle:
        assert set(handle) == {"features", "coords"}
    with pytest.raises(ValueError, match="features"):
        save_features(tmp_path / "b.h5", features[:3], coords)


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not found"):
        load_coords(tmp_path / "absent.h5")
    broken = tmp_path / "broken.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(UserInputError, match="cannot read"):
        load_features(broken)
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w"):
        pass
    with pytest.raises(UserInputError, match="coords"):
        load_coords(empty)
    with pytest.raises(UserInputError, match="features"):
        load_features(empty)
