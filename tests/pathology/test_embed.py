"""Feature extraction: HDF5 layout, worker/no-worker equality, resumable and failure-tolerant cohorts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.features.embed import EmbedOptions, embed_cohort, embed_slide
from sarcomakit.pathology.features.encoders import build_encoder
from sarcomakit.pathology.wsi.h5io import load_features, save_coords
from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.slide_manifest import SlideManifest, SlideRecord
from sarcomakit.pathology.wsi.synthetic import write_synthetic_slide
from sarcomakit.pathology.wsi.tiles import TileDataset
from sarcomakit.pathology.wsi.tiling import tile_slide


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("slides") / "s0.svs"
    write_synthetic_slide(path, subtype="ups", size=(1024, 768), mpp=0.5, seed=3)
    with open_slide(path) as reader:
        grid = tile_slide(reader, target_mpp=1.0, tile_size=48, min_tissue=0.3)
    assert len(grid) >= 4
    return path, grid.subset(np.arange(min(12, len(grid))))


def test_embed_slide_layout_and_values(tmp_path: Path, slide: tuple[Path, object]) -> None:
    path, grid = slide
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", input_size=48, embed_dim=16, base_width=8)
    out = embed_slide(path, grid, encoder, tmp_path / "f.h5", batch_size=5, num_workers=0)
    features, coords, attrs = load_features(out)
    assert features.shape == (len(grid), 16) and features.dtype == np.float32
    np.testing.assert_array_equal(coords, grid.coords)
    assert attrs["encoder"] == "small_cnn" and attrs["patch_size"] == 48
    assert attrs["size_level0"] == grid.size_level0
    # Same as encoding the dataset's tiles directly (normalise + forward).
    tiles = torch.stack([TileDataset(path, grid)[i][0] for i in range(len(grid))])
    np.testing.assert_allclose(features, encoder.embed(tiles).numpy(), atol=1e-5)
    # Resized in the workers to a smaller encoder input: close to resizing the float tiles.
    small = build_encoder("small_cnn", input_size=32, embed_dim=16, base_width=8)
    resized = load_features(embed_slide(path, grid, small, tmp_path / "r.h5", num_workers=0))[0]
    np.testing.assert_allclose(resized, small.embed(tiles).numpy(), atol=5e-2)  # uint8 rounding
    # Reading in worker processes gives the same features, in the same order.
    with_workers = embed_slide(path, grid, encoder, tmp_path / "w.h5", batch_size=4, num_workers=2)
    np.testing.assert_allclose(load_features(with_workers)[0], features, atol=1e-5)


def test_embed_from_coords_file_and_empty_grid(tmp_path: Path, slide: tuple[Path, object]) -> None:
    path, grid = slide
    save_coords(tmp_path / "c.h5", grid, slide_name="s0")
    encoder = build_encoder("small_cnn", input_size=48, embed_dim=16, base_width=8)
    out = embed_slide(path, tmp_path / "c.h5", encoder, tmp_path / "f.h5", num_workers=0)
    assert load_features(out)[0].shape == (len(grid), 16)
    with pytest.raises(UserInputError, match="empty bag"):
        embed_slide(path, grid.subset(np.arange(0)), encoder, tmp_path / "e.h5", num_workers=0)
    with pytest.raises(UserInputError, match="coordinates not found"):
        embed_slide(path, tmp_path / "nope.h5", encoder, tmp_path / "e.h5", num_workers=0)


def test_embed_cohort_resumes_and_tolerates_failures(tmp_path: Path, slide: tuple[Path, object]) -> None:
    path, grid = slide
    save_coords(tmp_path / "coords" / "good.h5", grid, slide_name="good")
    manifest = SlideManifest([SlideRecord("good", path, "ups", "p1"), SlideRecord("bad", path, "ups", "p2")])
    encoder = build_encoder("small_cnn", input_size=32, embed_dim=16, base_width=8)
    options = EmbedOptions(batch_size=8, num_workers=0)
    first = embed_cohort(manifest, tmp_path / "coords", tmp_path / "features", encoder, options,
                         show_progress=False)
    assert list(first.results) == ["good"] and "bad" in first.failures
    assert "coordinates not found" in first.failures["bad"]
    stamp = (tmp_path / "features" / "good.h5").stat().st_mtime_ns
    second = embed_cohort(manifest, tmp_path / "coords", tmp_path / "features", encoder, options,
                          show_progress=False)
    assert second.skipped == ["good"] and (tmp_path / "features" / "good.h5").stat().st_mtime_ns == stamp
