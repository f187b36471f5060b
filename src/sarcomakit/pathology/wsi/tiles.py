"""A torch Dataset of the tiles of one slide, read and resized on demand (DataLoader workers overlap I/O).

Each worker process opens its own slide reader the first time it needs one (OpenSlide and tiffslide
handles must not cross a ``fork``), so the dataset can be used with any ``num_workers``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from sarcomakit.pathology.wsi.reader import SlideReader, open_slide
from sarcomakit.pathology.wsi.tiling import TileGrid


class TileDataset(Dataset):
    """Tiles of one slide at the grid's resolution.

    Item ``i`` is ``(tile, i)`` where ``tile`` is a ``(3, tile_size, tile_size)`` tensor: float32 in
    ``[0, 1]`` by default, or the raw ``uint8`` values with ``dtype=torch.uint8`` (four times less
    data to pass between processes; convert on the consumer side). The region
    ``grid.read_size`` px wide is read at ``grid.level`` and resized (bilinear, antialiased when
    shrinking) to ``grid.tile_size``. ``transform`` is applied to the tensor.

    Args:
        slide_path: the slide file.
        grid: tile positions and geometry (from :func:`~sarcomakit.pathology.wsi.tiling.tile_slide` or
            :func:`~sarcomakit.pathology.wsi.h5io.load_coords`).
        mpp: µm/px override passed to :func:`open_slide`.
        transform: callable on the tile tensor.
        backend: slide backend for :func:`open_slide`.
        dtype: ``torch.float32`` (scaled to [0, 1]) or ``torch.uint8``.

    Raises:
        UserInputError: when the slide cannot be opened (checked once at construction).

    Example:
        >>> loader = DataLoader(TileDataset(path, grid), batch_size=64, num_workers=4)  # doctest: +SKIP
    """

    def __init__(self, slide_path: str | Path, grid: TileGrid, *, mpp: float | None = None,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None, backend: str = "auto",
                 dtype: torch.dtype = torch.float32) -> None:
        if dtype not in (torch.float32, torch.uint8):
            raise ValueError(f"dtype must be torch.float32 or torch.uint8, got {dtype}")
        self.slide_path = Path(slide_path)
        self.grid = grid
        self.mpp = mpp
        self.transform = transform
        self.backend = backend
        self.dtype = dtype
        with open_slide(self.slide_path, mpp=mpp, backend=backend) as reader:
            if grid.level >= reader.level_count:
                raise ValueError(f"grid level {grid.level} but {self.slide_path} has {reader.level_count} levels")
        self._reader: SlideReader | None = None
        self._reader_pid: int | None = None

    def __len__(self) -> int:
        return len(self.grid)

    def _slide(self) -> SlideReader:
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = open_slide(self.slide_path, mpp=self.mpp, backend=self.backend)
            self._reader_pid = os.getpid()
        return self._reader

    def read_tile(self, index: int) -> np.ndarray:
        """Tile ``index`` as ``uint8`` RGB ``(tile_size, tile_size, 3)``."""
        x, y = self.grid.coords[index]
        size = self.grid.read_size
        region = self._slide().read_region((int(x), int(y)), self.grid.level, (size, size))
        if size != self.grid.tile_size:
            region = np.array(Image.fromarray(region).resize((self.grid.tile_size, self.grid.tile_size),
                                                               Image.Resampling.BILINEAR))
        return region

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        tile = torch.from_numpy(self.read_tile(index)).permute(2, 0, 1)
        if self.dtype == torch.float32:
            tile = tile.to(torch.float32).div_(255.0)
        if self.transform is not None:
            tile = self.transform(tile)
        return tile, index

    def close(self) -> None:
        """Close this process's reader (it reopens on the next access)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_reader"] = None  # never pickle an open slide handle into a worker
        state["_reader_pid"] = None
        return state
