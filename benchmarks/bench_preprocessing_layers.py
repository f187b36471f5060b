"""Overhead of the learnable preprocessing layers on a training step and on inference, per layer and together.

Usage: python benchmarks/bench_preprocessing_layers.py [--iterations 5] [--patch 32,64,64] [--rounds 2]

The default residual U-Net with and without input layers in front, the same random batch (4 channels:
three MR-like, one CT-like), Dice + CE and AdamW; a training step is forward, backward and the
optimiser step, inference a forward pass without gradients on the same batch (one sliding-window
step). Configurations are timed in interleaved rounds and the median kept, so drift of the shared
machine hits them alike. Goals (issue 11): overhead <= 15% of the training step, <= 10% of inference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss

sys.path.insert(0, str(Path(__file__).parent))
from _machine import append_results, machine_header  # noqa: E402

from sarcomakit.core.device import select_device  # noqa: E402
from sarcomakit.models import build_network  # noqa: E402

WINDOW = {"layer": "window", "channels": [3], "low": [-32.0], "high": [138.0], "mean": [35.0], "std": [20.0]}
MONOTONE = {"layer": "monotone", "channels": [0, 1, 2]}
CONFIGS: dict[str, list[dict[str, Any]]] = {
    "none": [], "window": [WINDOW], "monotone": [MONOTONE], "normaliser": [{"layer": "normaliser"}],
    "resizer": [{"layer": "resizer"}], "zoom": [{"layer": "zoom", "fixed_axes": [0]}], "roi": [{"layer": "roi"}],
    "all": [WINDOW, MONOTONE, {"layer": "normaliser"}, {"layer": "resizer"}, {"layer": "zoom", "fixed_axes": [0]},
            {"layer": "roi"}],
}


def _seconds(step: Any, iterations: int, device: torch.device) -> float:
    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / iterations


def time_config(layers: list[dict[str, Any]], patch: list[int], batch: int, iterations: int,
                device: torch.device) -> tuple[float, float, int]:
    """Seconds per training step and per inference forward pass, and the input layers' parameter count."""
    torch.manual_seed(0)
    options: dict[str, Any] = {"input_layers": layers} if layers else {}
    model = build_network("resunet", in_channels=4, out_channels=2, patch_size=patch, **options).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    image = torch.randn(batch, 4, *patch, device=device) * 20 + 50
    label = (torch.rand(batch, 1, *patch, device=device) > 0.9).long()

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(image), label).backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.no_grad():
            model(image)

    model.train()
    train_s = _seconds(train_step, iterations, device)
    model.eval()
    infer_s = _seconds(infer_step, iterations, device)
    front = getattr(model, "input_layers", None)
    return train_s, infer_s, sum(p.numel() for p in front.parameters()) if front is not None else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--patch", default="32,64,64")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = select_device(args.device)
    patch = [int(v) for v in args.patch.split(",")]
    timings: dict[str, list[tuple[float, float]]] = {name: [] for name in CONFIGS}
    parameters: dict[str, int] = {}
    for _ in range(args.rounds):
        for name, layers in CONFIGS.items():
            train_s, infer_s, parameters[name] = time_config(layers, patch, args.batch_size, args.iterations, device)
            timings[name].append((train_s, infer_s))
    median = {name: (statistics.median(t for t, _ in runs), statistics.median(i for _, i in runs))
              for name, runs in timings.items()}
    base_train, base_infer = median["none"]
    rows = ["| input layers | parameters | training step, s | overhead | inference, s | overhead |",
            "|---|---|---|---|---|---|"]
    for name, (train_s, infer_s) in median.items():
        rows.append(f"| {name} | {parameters[name]} | {train_s:.3f} | {100 * (train_s / base_train - 1):+.1f}% | "
                    f"{infer_s:.3f} | {100 * (infer_s / base_infer - 1):+.1f}% |")
    table = "\n".join(rows) + (f"\n\nDefault resunet (16-256 channels), patch {patch}, batch {args.batch_size}, 4 "
                               f"channels, {args.iterations} steps after one warm-up, median of {args.rounds} "
                               f"interleaved rounds, device {device}.")
    print(table)
    append_results("Learnable preprocessing layers: overhead", machine_header(device) + "\n\n" + table)


if __name__ == "__main__":
    main()
