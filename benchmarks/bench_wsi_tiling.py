"""How long do tissue detection and tile coordinates take per slide, on a 50,000 x 50,000 px slide?

Writes (once, cached in ``.bench/wsi/``, git-ignored) a synthetic Aperio SVS of at least
50,000 x 50,000 px at 0.25 µm/px (a 12.5 x 12.5 mm section at 40x), then times, for OpenSlide and
tiffslide, ``detect_tissue`` (8 µm/px mask) and ``tile_slide`` (0.5 µm/px, 256-px tiles, tissue
fraction >= 0.5) on it, the median of ``--repeats`` runs with a fresh reader each time. A demo-sized
slide (3072 x 2048 px) is timed the same way for comparison.

Side by side, the naive alternative many scripts use: read every grid tile (0.5 µm/px, 256 px, from
the 2x level) and keep it if half its pixels are saturated. On the large slide its time is estimated
from ``--sample`` random tiles (scaled to the whole grid). Prints the tables and appends them to
``benchmarks/RESULTS.md``.

Usage: ``python benchmarks/bench_wsi_tiling.py [--size 50000] [--repeats 3] [--sample 400]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from sarcomakit.core.io.atomic import write_json
from sarcomakit.pathology.wsi.reader import open_slide
from sarcomakit.pathology.wsi.synthetic import write_synthetic_slide
from sarcomakit.pathology.wsi.tiling import tile_slide
from sarcomakit.pathology.wsi.tissue import MIN_TISSUE_SATURATION, TissueMask, detect_tissue, hsv_saturation

sys.path.insert(0, str(Path(__file__).parent))
from _machine import append_results, machine_header  # noqa: E402

CACHE = Path(__file__).resolve().parent.parent / ".bench" / "wsi"


def cached_slide(size: int, mpp: float = 0.25, *, height: int | None = None) -> tuple[Path, float | None]:
    """The synthetic slide of ``size`` x ``height`` px, written on first use.

    Returns:
        ``(path, seconds it took to write it)``; the time is kept beside the slide in a JSON file
        (None if that file is missing).
    """
    height = size if height is None else height
    path = CACHE / f"synthetic_ups_{size}x{height}_{mpp}mpp.svs"
    record = path.with_suffix(".json")
    if not path.is_file():
        start = time.perf_counter()
        write_synthetic_slide(path, subtype="ups", size=(size, height), mpp=mpp, seed=0, layout="svs",
                              tumour_fraction=0.4)
        write_json(record, {"write_seconds": time.perf_counter() - start})
    if not record.is_file():
        return path, None
    return path, float(json.loads(record.read_text())["write_seconds"])


def time_tiling(path: Path, backend: str, repeats: int) -> dict[str, float]:
    detect, tiling, tiles = [], [], 0
    for _ in range(repeats):
        with open_slide(path, backend=backend) as reader:
            start = time.perf_counter()
            tissue = detect_tissue(reader)
            middle = time.perf_counter()
            grid = tile_slide(reader, target_mpp=0.5, tile_size=256, tissue=tissue)
            end = time.perf_counter()
        detect.append(middle - start)
        tiling.append(end - middle)
        tiles = len(grid)
    return {"detect": statistics.median(detect), "tile": statistics.median(tiling), "tiles": tiles,
            "total": statistics.median(np.add(detect, tiling))}


def per_tile_check_seconds(path: Path, sample: int, seed: int = 0) -> tuple[float, int, int]:
    """The naive alternative: read every 0.5 µm/px tile and threshold its saturation (OpenSlide).

    Times reads + checks on at most ``sample`` random grid positions and scales to the whole grid.

    Returns:
        ``(estimated seconds for the whole grid, grid size, tiles actually timed)``.
    """
    with open_slide(path, backend="openslide") as reader:
        everything = TissueMask(mask=np.ones((1, 1), bool), downsample=float(reader.level_dimensions[0][0]), level=0)
        grid = tile_slide(reader, target_mpp=0.5, tile_size=256, min_tissue=0.0, tissue=everything)
        rng = np.random.default_rng(seed)
        chosen = grid.coords[rng.choice(len(grid), size=min(sample, len(grid)), replace=False)]
        start = time.perf_counter()
        for x, y in chosen:
            tile = reader.read_region((int(x), int(y)), grid.level, (grid.read_size, grid.read_size))
            _ = (hsv_saturation(tile) > MIN_TISSUE_SATURATION).mean() >= 0.5
        elapsed = time.perf_counter() - start
    return elapsed * len(grid) / len(chosen), len(grid), len(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=50_000, help="level-0 width and height in px")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sample", type=int, default=400, help="tiles timed for the per-tile-read baseline")
    args = parser.parse_args()

    large, write_seconds = cached_slide(args.size)
    small, _ = cached_slide(3072, height=2048)
    rows, baselines = [], []
    for path in (small, large):
        with open_slide(path) as reader:
            dimensions, levels = reader.level_dimensions[0], reader.level_count
        size_mb = path.stat().st_size / 2**20
        name = f"{dimensions[0]} x {dimensions[1]} ({levels} levels, {size_mb:.0f} MiB)"
        for backend in ("openslide", "tiffslide"):
            result = time_tiling(path, backend, args.repeats)
            rows.append((name, backend, result["detect"], result["tile"], result["total"], result["tiles"]))
        baseline, positions, timed = per_tile_check_seconds(path, args.sample)
        baselines.append((name, rows[-2][4], baseline, positions, timed))

    header = "| slide | backend | detect_tissue (s) | tile_slide (s) | total (s) | tiles kept |"
    lines = [header, "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {slide} | {backend} | {detect:.3f} | {tile:.3f} | {total:.3f} | {tiles} |"
              for slide, backend, detect, tile, total, tiles in rows]
    lines += ["", "| slide | mask + grid, OpenSlide (s) | read every tile and threshold it (s) | ratio |",
              "|---|---:|---:|---:|"]
    for slide, ours, baseline, positions, timed in baselines:
        estimate = "" if timed == positions else f" (estimated from {timed} of {positions} tiles)"
        lines.append(f"| {slide} | {ours:.3f} | {baseline:.1f}{estimate} | {baseline / ours:.0f}x |")
    table = "\n".join(lines)
    print(table)
    notes = (f"Synthetic Aperio SVS at 0.25 µm/px, JPEG tiles 256 px, 2x pyramid; mask at 8 µm/px, tiles "
             f"0.5 µm/px x 256 px (512 level-0 px), min tissue 0.5; median of {args.repeats} runs, fresh reader "
             f"each run, file in the OS page cache.")
    if write_seconds is not None:
        notes += (f" Writing the large slide took {write_seconds:.0f} s when it was cached (tile by tile, level 0 "
                  f"never in memory).")
    append_results("WSI tiling: tissue detection + tile coordinates per slide",
                   f"{machine_header()}\n\n{notes}\n\n{table}")


if __name__ == "__main__":
    main()
