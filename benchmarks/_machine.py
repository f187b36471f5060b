"""Shared by the benchmark scripts: a header describing the machine, and appending to RESULTS.md."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def _ram_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("nan")


def machine_header(device: object | None = None) -> str:
    """Date, CPU cores, RAM, GPU (or none) and library versions, as one Markdown line."""
    versions = []
    for module in ("numpy", "torch", "monai", "SimpleITK", "openslide", "tiffslide"):
        try:
            mod = __import__(module)
            versions.append(f"{module} {getattr(mod, '__version__', '?')}")
        except Exception:  # an optional library missing is not an error here
            continue
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"*{when}; {os.cpu_count()} cores, {_ram_gib():.0f} GiB RAM, GPU: {gpu}; "
            f"Python {platform.python_version()}; {', '.join(versions)}*")
    if device is not None:
        text += f" (ran on: {device})"
    return text


def append_results(title: str, body: str) -> None:
    """Append one section to RESULTS.md in a single write."""
    with RESULTS.open("a", encoding="utf-8") as handle:
        handle.write(f"\n## {title}\n\n{body.strip()}\n")
