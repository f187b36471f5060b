"""How many tiles per second do OpenSlide and tiffslide read, aligned and unaligned, at level 0 and below?

Uses the cached synthetic 50,000 x 50,000 px Aperio SVS of ``bench_wsi_tiling.py`` (0.25 µm/px,
JPEG tiles of 256 px; written on first use). For each backend and each case, ``--tiles`` distinct
256 x 256 reads at random tissue positions, each case with a fresh reader and its own positions (so
neither OpenSlide's tile cache nor a previous case helps; the file itself is in the OS page cache):

* level 0, aligned: positions on the file's 256-px tile grid (one JPEG tile decoded per read);
* level 0, unaligned: the same grid shifted by 128 px (four tiles decoded per read);
* level 1, aligned / unaligned: 0.5 µm/px tiles read from the 2x level (positions on the level-1
  tile grid, or shifted by half a tile);
* level 1 + resize: 0.75 µm/px tiles of 256 px, i.e. 384-px regions of level 1 resized to 256 px,
  the path :class:`~sarcomakit.pathology.wsi.tiles.TileDataset` takes when no level matches.

Prints a table (tiles/s and the tiffslide / OpenSlide ratio) and appends it to
``benchmarks/RESULTS.md``.

Usage: ``python benchmarks/bench_wsi_read.py [--tiles 300]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.tissue import detect_tissue

sys.path.insert(0, str(Path(__file__).parent))
from _machine import append_results, machine_header  # noqa: E402
from bench_wsi_tiling import cached_slide  # noqa: E402

FILE_TILE = 256


def tissue_positions(path: Path, step_level0: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct grid positions (multiples of ``step_level0``) whose tile lies on tissue."""
    with open_slide(path) as reader:
        tissue = detect_tissue(reader)
        width, height = reader.level_dimensions[0]
    xs = np.arange(0, width - 2 * step_level0, step_level0)
    ys = np.arange(0, height - 2 * step_level0, step_level0)
    grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    rows = np.minimum(((grid[:, 1] + step_level0 // 2) / tissue.downsample).astype(int), tissue.mask.shape[0] - 1)
    cols = np.minimum(((grid[:, 0] + step_level0 // 2) / tissue.downsample).astype(int), tissue.mask.shape[1] - 1)
    on_tissue = grid[tissue.mask[rows, cols]]
    rng = np.random.default_rng(seed)
    return on_tissue[rng.choice(len(on_tissue), size=min(count, len(on_tissue)), replace=False)]


def read_rate(path: Path, backend: str, positions: np.ndarray, level: int, read_size: int,
              out_size: int) -> float:
    """Tiles per second for reads of ``read_size`` px at ``level`` (resized to ``out_size``)."""
    with open_slide(path, backend=backend) as reader:
        start = time.perf_counter()
        for x, y in positions:
            region = reader.read_region((int(x), int(y)), level, (read_size, read_size))
            if read_size != out_size:
                region = np.asarray(Image.fromarray(region).resize((out_size, out_size), Image.Resampling.BILINEAR))
        elapsed = time.perf_counter() - start
    return len(positions) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000, help="level-0 width and height of the cached slide")
    parser.add_argument("--tiles", type=int, default=300, help="reads per backend and case")
    args = parser.parse_args()
    path, _ = cached_slide(args.size)

    # (name, level, level-0 grid step, level-0 shift, read size at the level, output size)
    cases = [
        ("level 0, aligned", 0, FILE_TILE, 0, 256, 256),
        ("level 0, unaligned (+128 px)", 0, FILE_TILE, 128, 256, 256),
        ("level 1, aligned", 1, 2 * FILE_TILE, 0, 256, 256),
        ("level 1, unaligned (+128 level-1 px)", 1, 2 * FILE_TILE, 256, 256, 256),
        ("level 1, 384 px resized to 256 (0.75 µm/px)", 1, 768, 0, 384, 256),
    ]
    rows = []
    for index, (name, level, step, shift, read_size, out_size) in enumerate(cases):
        rates = {}
        for offset, backend in enumerate(("openslide", "tiffslide")):
            positions = tissue_positions(path, step, args.tiles, seed=10 * index + offset) + shift
            rates[backend] = read_rate(path, backend, positions, level, read_size, out_size)
        rows.append((name, rates["openslide"], rates["tiffslide"]))

    lines = ["| read | OpenSlide (tiles/s) | tiffslide (tiles/s) | tiffslide / OpenSlide |",
             "|---|---:|---:|---:|"]
    lines += [f"| {name} | {openslide_rate:.0f} | {tiffslide_rate:.0f} | {tiffslide_rate / openslide_rate:.2f} |"
              for name, openslide_rate, tiffslide_rate in rows]
    table = "\n".join(lines)
    print(table)
    with open_slide(path) as reader:
        dimensions = reader.level_dimensions[0]
    notes = (f"Synthetic Aperio SVS {dimensions[0]} x {dimensions[1]} px, 0.25 µm/px, JPEG tiles of 256 px; "
             f"{args.tiles} distinct random tissue positions per backend and case, one process, fresh reader per "
             f"case, file in the OS page cache. Aligned reads decode one file tile, unaligned reads four.")
    append_results("WSI tile reads: OpenSlide vs tiffslide", f"{machine_header()}\n\n{notes}\n\n{table}")


if __name__ == "__main__":
    main()
