"""What does refusing damaged images cost? read_image (whole-file read, length and NaN/Inf checks) vs SimpleITK.

``sitk.ReadImage`` is what ``read_image`` did before: it pads a truncated NIfTI with zeros and reads
NaN/Inf as 0. Both read the same files, alternately, best of several runs (the machine is shared).

Usage: python benchmarks/bench_image_read.py [--repeats 7] [--no-append]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.io.image import read_image

SHAPE = (128, 256, 256)  # z, y, x


def _volume(dtype: type) -> sitk.Image:
    """A smooth blob plus noise: compresses like a real scan (not like zeros, not like white noise)."""
    rng = np.random.default_rng(0)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in SHAPE], indexing="ij")
    array = 1000 * np.exp(-3 * (x**2 + y**2 + z**2)) + 20 * rng.standard_normal(SHAPE, dtype=np.float32)
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing((0.8, 0.8, 3.0))
    return image


def _best_pair(first: Callable[[], object], second: Callable[[], object],
               repeats: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """Best (wall, CPU) seconds of each, measured alternately so that a busy moment hits both alike.

    CPU time (``process_time``, all threads) is the steadier figure on a shared machine."""
    times: tuple[list[tuple[float, float]], list[tuple[float, float]]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, times[0]), (second, times[1])):
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            out.append((time.perf_counter() - wall, time.process_time() - cpu))
    return tuple(tuple(min(t[i] for t in series) for i in (0, 1)) for series in times)  # type: ignore[return-value]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-append", action="store_true", help="Print only; do not append to RESULTS.md.")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).parent))
    from _machine import append_results, machine_header

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for dtype in (np.float32, np.int16):
            image = _volume(dtype)
            for suffix in (".nii.gz", ".nii", ".nrrd"):
                path = Path(folder) / f"volume_{np.dtype(dtype).name}{suffix}"
                sitk.WriteImage(image, str(path), useCompression=suffix != ".nii")
                read_image(path)  # warm the page cache for both
                itk, ours = _best_pair(lambda p=path: sitk.ReadImage(str(p)), lambda p=path: read_image(p),
                                       args.repeats)
                rows.append((np.dtype(dtype).name, suffix, path.stat().st_size / 2**20, itk, ours))
    lines = ["| voxels | file | MiB on disk | sitk.ReadImage CPU ms | read_image CPU ms | CPU ratio | wall ms "
             "(sitk / ours) |", "|---|---|---|---|---|---|---|"]
    for dtype_name, suffix, mib, itk, ours in rows:
        lines.append(f"| {dtype_name} | {suffix} | {mib:.1f} | {1000 * itk[1]:.0f} | {1000 * ours[1]:.0f} | "
                     f"{ours[1] / itk[1]:.2f} | {1000 * itk[0]:.0f} / {1000 * ours[0]:.0f} |")
    body = "\n".join([machine_header(), "", *lines, "",
                      f"Volume {SHAPE} (z, y, x); best of {args.repeats} alternating reads each. read_image reads "
                      "NIfTI voxels itself (libdeflate for .nii.gz) to check the length and keep NaN/Inf; NRRD goes "
                      "through ITK plus the NaN/Inf check."])
    print(body)
    if not args.no_append:
        append_results("Image reading with damage checks", body)


if __name__ == "__main__":
    main()
