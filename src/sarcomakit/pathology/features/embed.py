"""Patch feature extraction: tiles of a slide -> encoder -> ``features`` + ``coords`` HDF5 per slide.

Reading and resizing run in DataLoader worker processes (each with its own slide handle) with pinned
memory and prefetching, so that they overlap the encoder's forward pass on the main process: the
encoder, not I/O, sets the pace (``benchmarks/bench_wsi_embed.py`` measures it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from sarcomakit.core.cohort_runner import CohortResult, run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.provenance import array_digest, json_digest
from sarcomakit.core.step_record import StepRecord
from sarcomakit.pathology.features.encoders import PatchEncoder
from sarcomakit.pathology.wsi.slide_manifest import SlideManifest, SlideRecord

log = logging.getLogger("sarcomakit")


class ResizeForEncoder:
    """Tile transform run in the workers: resize a uint8 (3, H, W) tile to the encoder's input size.

    Tiles stay uint8 between processes (four times less data than float32); the consumer scales them.
    """

    def __init__(self, input_size: int) -> None:
        self.input_size = input_size

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        if tile.shape[-1] == self.input_size and tile.shape[-2] == self.input_size:
            return tile
        resized = torch.nn.functional.interpolate(tile[None].float(), size=(self.input_size, self.input_size),
                                                  mode="bilinear", align_corners=False,
                                                  antialias=tile.shape[-1] > self.input_size)[0]
        return resized.round_().clamp_(0, 255).to(torch.uint8)


def _worker_init(_: int) -> None:
    # Workers only read and resize: one thread each keeps them from competing with the encoder.
    torch.set_num_threads(1)


def load_grid(coords_h5: str | Path) -> Any:
    """The :class:`~sarcomakit.pathology.wsi.tiling.TileGrid` stored in a coordinates HDF5 file."""
    from sarcomakit.pathology.wsi import h5io
    path = Path(coords_h5)
    if not path.is_file():
        raise UserInputError("tile coordinates not found.", path=path, fix="run `sarcomakit wsi tile` first.")
    return h5io.load_coords(path)


def tile_loader(slide_path: str | Path, grid: Any, transform: Callable[[torch.Tensor], torch.Tensor] | None,
                batch_size: int = 64, num_workers: int = 2, pin_memory: bool = False,
                prefetch_factor: int = 4, mpp: float | None = None) -> DataLoader:
    """A DataLoader of uint8 tile batches (B, 3, H, W) of ``grid`` read from ``slide_path``, in order."""
    from sarcomakit.pathology.wsi.tiles import TileDataset

    dataset = TileDataset(slide_path, grid, mpp=mpp, transform=transform, dtype=torch.uint8)
    options: dict[str, Any] = {}
    if num_workers > 0:
        options = {"prefetch_factor": prefetch_factor, "worker_init_fn": _worker_init, "persistent_workers": False}
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      pin_memory=pin_memory, **options)


def encode_tiles(loader: DataLoader, encoder: PatchEncoder, device: str | torch.device = "cpu") -> np.ndarray:
    """Embeddings (N, D) float32 of every tile the loader yields (uint8 or [0, 1] float), in order."""
    encoder.module.to(device).eval()
    chunks: list[np.ndarray] = []
    non_blocking = torch.device(device).type == "cuda"
    with torch.inference_mode():
        for tiles, _ in loader:
            batch = tiles.to(device, non_blocking=non_blocking).float()
            if tiles.dtype == torch.uint8:
                batch = batch.div_(255.0)
            batch = encoder.normalize(batch)
            chunks.append(encoder.module(encoder.resize(batch)).float().cpu().numpy())
    if not chunks:
        return np.zeros((0, encoder.embed_dim), dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32)


def embed_slide(slide_path: str | Path, tiles: Any, encoder: PatchEncoder, out_h5: str | Path,
                batch_size: int = 64, num_workers: int = 2, device: str | torch.device = "cpu",
                mpp: float | None = None, prefetch_factor: int = 4) -> Path:
    """Embed every tile of a slide and write ``features`` (N, D) and ``coords`` (N, 2) to ``out_h5``.

    Args:
        slide_path: the slide file.
        tiles: a :class:`~sarcomakit.pathology.wsi.tiling.TileGrid` or the coordinates HDF5 written by tiling.
        encoder: the :class:`PatchEncoder`; tiles are resized to its input size in the workers and normalised
            on ``device``.
        out_h5: output HDF5 (written atomically through :func:`sarcomakit.pathology.wsi.h5io.save_features`).
        batch_size: tiles per forward pass.
        num_workers: reader processes (0: read in the main process).
        device: where the encoder runs.
        mpp: microns per pixel for slides without resolution metadata.
        prefetch_factor: batches each worker prepares ahead.

    Returns:
        ``out_h5``.

    Raises:
        UserInputError: missing coordinates, or a slide without any tile (empty bag).
    """
    from sarcomakit.pathology.wsi import h5io
    grid = load_grid(tiles) if isinstance(tiles, str | Path) else tiles
    coords = np.asarray(grid.coords)
    if coords.shape[0] == 0:
        raise UserInputError("no tissue tiles to embed (empty bag).", path=slide_path,
                             fix="check the tissue detection thumbnail, or lower --min-tissue.")
    pin = torch.device(device).type == "cuda"
    loader = tile_loader(slide_path, grid, ResizeForEncoder(encoder.input_size), batch_size, num_workers, pin,
                         prefetch_factor, mpp)
    features = encode_tiles(loader, encoder, device)
    attrs = {"encoder": encoder.name, "embed_dim": encoder.embed_dim, "input_size": encoder.input_size,
             "patch_size": int(grid.tile_size), "patch_level": int(grid.level),
             "target_mpp": float(grid.target_mpp), "size_level0": int(grid.size_level0),
             "slide_path": str(slide_path)}
    return h5io.save_features(out_h5, features, coords, attrs)  # written atomically


def encoder_digest(encoder: PatchEncoder) -> str:
    """SHA-256 of what makes an encoder's embeddings: its architecture name, weights, input size and normalisation."""
    weights = {name: array_digest(value) for name, value in encoder.module.state_dict().items()}
    return json_digest({"name": encoder.name, "weights": weights, "input_size": encoder.input_size,
                        "mean": list(encoder.mean), "std": list(encoder.std)})


@dataclass
class EmbedOptions:
    """Options of a cohort embedding run."""

    batch_size: int = 64
    num_workers: int = 2
    device: str = "cpu"
    overwrite: bool = False
    mpp: float | None = None


def embed_cohort(manifest: SlideManifest, coords_dir: str | Path, out_dir: str | Path, encoder: PatchEncoder,
                 options: EmbedOptions | None = None, show_progress: bool = True) -> CohortResult[Path]:
    """Embed every slide of the manifest; resumable and failure-tolerant.

    A slide whose ``out_dir/<slide_id>.h5`` exists is skipped unless ``options.overwrite``, if it was made from
    the same slide and coordinates by the same encoder (weights and input handling); otherwise it is redone.
    A failing slide is recorded and the others go on.

    Args:
        manifest: the slides.
        coords_dir: folder of ``<slide_id>.h5`` coordinate files from tiling.
        out_dir: folder for ``<slide_id>.h5`` feature files.
        encoder: the patch encoder.
        options: batch size, workers, device, overwrite, mpp.

    Returns:
        The :class:`~sarcomakit.core.cohort_runner.CohortResult` (feature file per slide).
    """
    options = options or EmbedOptions()
    out_dir = Path(out_dir)
    record = StepRecord(out_dir, "features")
    # what changes the features: the encoder's weights and input handling, and the resolution read
    settings = {"encoder": encoder_digest(encoder), "mpp": options.mpp}

    def inputs(slide: SlideRecord) -> dict[str, Path]:
        return {"slide": slide.path, "coords": Path(coords_dir) / f"{slide.slide_id}.h5"}

    def run(slide: SlideRecord) -> Path:
        written = embed_slide(slide.path, Path(coords_dir) / f"{slide.slide_id}.h5", encoder,
                              out_dir / f"{slide.slide_id}.h5", options.batch_size, options.num_workers,
                              options.device, options.mpp)
        record.save(slide.slide_id, inputs(slide), settings)
        return written

    def done(slide: SlideRecord) -> bool:
        return not options.overwrite and record.is_current(slide.slide_id, inputs(slide), settings,
                                                           outputs=[out_dir / f"{slide.slide_id}.h5"])

    return run_per_case(manifest.slides, run, name=lambda s: s.slide_id, description="embed", is_done=done,
                        show_progress=show_progress)
