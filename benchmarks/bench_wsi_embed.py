"""Is patch embedding bound by the encoder or by slide I/O?

For each encoder, the same tiles of a synthetic SVS slide are embedded two ways, with the same batch size:

* **forward only**: the tiles are read into memory first (uint8, as the loader delivers them); the timed loop
  only normalises and runs the encoder, i.e. the encoder's own throughput;
* **end to end**: :func:`sarcomakit.pathology.features.embed.encode_tiles` over the DataLoader of
  :class:`~sarcomakit.pathology.wsi.tiles.TileDataset` with ``--workers`` reader processes (read, resize,
  encode), i.e. what ``sarcomakit wsi embed`` does.

The ratio end-to-end / forward-only is the share of the encoder's speed kept when I/O is included
(goal: >= 90%, I/O hidden behind compute). Prints a table and appends it to ``benchmarks/RESULTS.md``.

Usage: ``python benchmarks/bench_wsi_embed.py [--device cpu|cuda] [--workers 2] [--tiles 512]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sarcomakit.pathology.features.embed import ResizeForEncoder, encode_tiles, tile_loader
from sarcomakit.pathology.features.encoders import build_encoder
from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.synthetic import write_synthetic_slide
from sarcomakit.pathology.wsi.tiles import TileDataset
from sarcomakit.pathology.wsi.tiling import tile_slide

sys.path.insert(0, str(Path(__file__).parent))
from _machine import append_results, machine_header  # noqa: E402

# (encoder, input size = tile size at 0.5 um/px, level-0 read size is the same on a 0.5 um/px slide)
CASES = {"cpu": [("small_cnn", 128), ("resnet18", 224)],
         "cuda": [("small_cnn", 128), ("resnet18", 224), ("resnet50", 224), ("densenet121", 224)]}


def forward_only(encoder: object, tiles: torch.Tensor, batch_size: int, device: str) -> float:
    """Tiles/s of normalise + forward on preloaded uint8 tiles (copied to the device per batch)."""
    def run() -> None:
        with torch.inference_mode():
            for start in range(0, len(tiles), batch_size):
                batch = tiles[start:start + batch_size].to(device).float().div_(255.0)
                encoder.module(encoder.normalize(batch))
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run_warm = tiles[:batch_size]
    with torch.inference_mode():
        encoder.module(encoder.normalize(run_warm.to(device).float() / 255))
    start = time.perf_counter()
    run()
    return len(tiles) / (time.perf_counter() - start)


def end_to_end(encoder: object, slide: Path, grid: object, batch_size: int, workers: int, device: str) -> float:
    """Tiles/s of read + resize (workers) + encode over the DataLoader."""
    loader = tile_loader(slide, grid, ResizeForEncoder(encoder.input_size), batch_size, workers,
                         pin_memory=device.startswith("cuda"))
    start = time.perf_counter()
    encode_tiles(loader, encoder, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(grid) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tiles", type=int, default=512, help="tiles per measurement (fewer for slow encoders)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the encoder")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kind = "cuda" if args.device.startswith("cuda") else "cpu"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        slide = Path(tmp) / "bench.svs"
        write_synthetic_slide(slide, subtype="leiomyosarcoma", size=(8192, 6144), mpp=0.5, seed=0,
                              tumour_fraction=0.6)
        for name, size in CASES[kind]:
            torch.manual_seed(0)
            encoder = build_encoder(name, input_size=size).to(args.device)
            with open_slide(slide) as reader:
                grid = tile_slide(reader, target_mpp=0.5, tile_size=size, min_tissue=0.5)
            n_tiles = min(args.tiles if kind == "cuda" or name == "small_cnn" else args.tiles // 4, len(grid))
            grid = grid.subset(np.arange(n_tiles))
            dataset = TileDataset(slide, grid, dtype=torch.uint8)
            preloaded = torch.stack([dataset[i][0] for i in range(len(dataset))])
            fwd = forward_only(encoder, preloaded, args.batch_size, args.device)
            e2e = end_to_end(encoder, slide, grid, args.batch_size, args.workers, args.device)
            rows.append((name, size, n_tiles, fwd, e2e, e2e / fwd))
    header = (f"| encoder | tile px | tiles | forward only (tiles/s) | end to end, {args.workers} workers "
              f"(tiles/s) | ratio |\n|---|---|---|---|---|---|")
    lines = [f"| {n} | {s} | {t} | {f:.1f} | {e:.1f} | {r:.0%} |" for n, s, t, f, e, r in rows]
    table = "\n".join([header, *lines])
    print(table)
    body = (f"{machine_header(args.device)}\n\nDevice {args.device}, batch {args.batch_size}, torch threads "
            f"{torch.get_num_threads()}; synthetic SVS 8192 x 6144 px at 0.5 um/px, tiles at 0.5 um/px. "
            "Goal: end to end >= 90% of forward only.\n\n" + table)
    append_results("Patch embedding: end-to-end vs encoder forward throughput (bench_wsi_embed.py)", body)


if __name__ == "__main__":
    main()
