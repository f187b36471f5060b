"""Sliding-window inference throughput (voxels/s) of the default network on a 256x256x128 volume.

Usage: python benchmarks/bench_sliding_window.py [--patch 64,128,128] [--device auto] [--mirror]
Compares our ``predict_volume`` (Gaussian windows, softmax) with a bare MONAI
``sliding_window_inference`` call on the same input, and appends the table to RESULTS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

sys.path.insert(0, str(Path(__file__).parent))
from _machine import append_results, machine_header  # noqa: E402

from sarcomakit.core.device import select_device  # noqa: E402
from sarcomakit.inference.sliding_window import predict_volume  # noqa: E402
from sarcomakit.models import build_network  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--patch", default="48,128,128")
    parser.add_argument("--shape", default="128,256,256", help="volume (z,y,x)")
    parser.add_argument("--channels", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    device = select_device(args.device)
    patch = tuple(int(v) for v in args.patch.split(","))
    shape = tuple(int(v) for v in args.shape.split(","))
    torch.manual_seed(0)
    model = build_network("resunet", in_channels=args.channels, out_channels=2, patch_size=patch).to(device).eval()
    volume = torch.randn(args.channels, *shape, device=device)
    voxels = volume[0].numel()

    def ours() -> None:
        predict_volume(model, volume, patch, overlap=0.5, sw_batch_size=2)

    @torch.no_grad()
    def bare() -> None:
        torch.softmax(sliding_window_inference(volume[None], patch, 2, model, overlap=0.5, mode="gaussian"), 1)

    rows = []
    for name, fn in (("bare MONAI sliding_window_inference", bare), ("sarcomakit predict_volume", ours)):
        fn()  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / args.repeats
        rows.append((name, seconds, voxels / seconds))
    ratio = rows[1][2] / rows[0][2]
    lines = ["| implementation | seconds / volume | voxels / s |", "|---|---|---|"]
    lines += [f"| {n} | {s:.2f} | {v:,.0f} |" for n, s, v in rows]
    lines.append(f"\nVolume {shape} (z,y,x), {args.channels} channels, patch {patch}, overlap 0.5, "
                 f"Gaussian weighting, device {device}; throughput ratio ours/bare = {ratio:.2f}.")
    table = "\n".join(lines)
    print(table)
    append_results("Sliding-window inference throughput", machine_header(device) + "\n\n" + table)


if __name__ == "__main__":
    main()
