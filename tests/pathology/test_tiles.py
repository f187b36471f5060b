"""TileDataset: tile content, sizes, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.synthetic import SyntheticSlideInfo
from sarcomakit.pathology.wsi.tiles import TileDataset
from sarcomakit.pathology.wsi.tiling import tile_slide
from sarcomakit.pathology.wsi.tissue import TissueMask, detect_tissue


def _grid(info: SyntheticSlideInfo, target_mpp: float, tile_size: int):
    with open_slide(info.path) as reader:
        return tile_slide(reader, target_mpp=target_mpp, tile_size=tile_size, tissue=detect_tissue(reader))


def test_items_are_the_tiles(tiff_slide: SyntheticSlideInfo) -> None:
    grid = _grid(tiff_slide, 1.5, 128)  # 384 level-0 px: read 192 px at level 1, resize to 128
    assert grid.read_size == 192 and grid.level == 1
    dataset = TileDataset(tiff_slide.path, grid)
    tile, index = dataset[3]
    assert index == 3 and tile.shape == (3, 128, 128) and tile.dtype == torch.float32
    assert float(tile.min()) >= 0.0 and float(tile.max()) <= 1.0
    with open_slide(tiff_slide.path) as reader:
        x, y = grid.coords[3]
        region = reader.read_region((int(x), int(y)), 1, (192, 192))
    expected = np.asarray(Image.fromarray(region).resize((128, 128), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(tile.permute(1, 2, 0).numpy() * 255, expected, atol=1e-3)


def test_dataloader_with_two_workers(svs_slide: SyntheticSlideInfo) -> None:
    with open_slide(svs_slide.path) as reader:
        full = TissueMask(mask=np.ones((48, 64), bool), downsample=32.0, level=0)
        grid = tile_slide(reader, target_mpp=1.0, tile_size=64, tissue=full)  # 256 level-0 px -> level 2, 64 px
    dataset = TileDataset(svs_slide.path, grid, transform=lambda tile: tile * 2.0)
    dataset[0]  # a reader opened in the parent must not be shared with the workers
    loader = DataLoader(dataset, batch_size=16, num_workers=2, shuffle=False)
    seen = []
    for tiles, indices in loader:
        assert tiles.shape[1:] == (3, 64, 64)
        assert float(tiles.max()) <= 2.0
        seen.extend(indices.tolist())
    assert seen == list(range(len(grid))) == list(range(48))
    reference, _ = dataset[10]
    tiles, _ = next(iter(DataLoader(torch.utils.data.Subset(dataset, [10]), num_workers=1)))
    torch.testing.assert_close(tiles[0], reference)


def test_uint8_output_and_validation(tiff_slide: SyntheticSlideInfo) -> None:
    grid = _grid(tiff_slide, 0.5, 96)
    tile, _ = TileDataset(tiff_slide.path, grid, dtype=torch.uint8)[0]
    assert tile.dtype == torch.uint8 and tile.shape == (3, 96, 96)
    with pytest.raises(ValueError, match="dtype"):
        TileDataset(tiff_slide.path, grid, dtype=torch.float16)
