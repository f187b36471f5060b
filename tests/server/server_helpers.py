"""Helpers of the server tests: tiny studies on an oblique, anisotropic grid, Dice, a live uvicorn server."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.io.image import write_image

SHAPE = (24, 48, 48)  # z, y, x


def study(seed: int = 0, shape: tuple[int, int, int] = SHAPE) -> tuple[sitk.Image, np.ndarray]:
    """A bright ellipsoid 'tumour' in noise on a grid with anisotropic spacing, an offset origin and a flipped axis."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = np.asarray(shape) / 2 + rng.uniform(-2, 2, 3)
    radii = np.asarray(shape) * np.array([0.25, 0.22, 0.2])
    reference = sum(((g - c) / r) ** 2 for g, c, r in zip((z, y, x), centre, radii, strict=True)) <= 1
    array = (100 + 60 * reference + rng.normal(0, 12, shape)).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 0.8, 2.5))
    image.SetOrigin((-20.0 + seed, 11.5, -7.25))
    image.SetDirection((-1, 0, 0, 0, 1, 0, 0, 0, 1))
    return image, reference


def write_study(folder: Path, name: str, seed: int = 0) -> tuple[Path, np.ndarray]:
    image, reference = study(seed)
    return write_image(image, folder / f"{name}.nii.gz"), reference


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = a.sum() + b.sum()
    return float(2 * np.logical_and(a, b).sum() / total) if total else 1.0


def scribble_points(reference: np.ndarray) -> tuple[list[list[int]], list[list[int]]]:
    """Foreground points along the object's middle row on its central slice and background points on a border row,
    as ITK indices [i, j, k] (x, y, z)."""
    zc = int(np.argmax(reference.sum(axis=(1, 2))))
    ys, xs = np.nonzero(reference[zc])
    yc = int(np.median(ys))
    row = xs[ys == yc]
    foreground = [[int(x), yc, zc] for x in range(int(row.min()) + 3, int(row.max()) - 2)]
    background = [[int(x), 2, zc] for x in range(2, reference.shape[2] - 2)]
    background += [[int(x), reference.shape[1] - 3, zc] for x in range(2, reference.shape[2] - 2)]
    return foreground, background


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(app: Any, timeout: float = 20.0) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free localhost port in a thread; always shut down."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    try:
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the server did not start in time")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)


def write_dicom_zip(image: sitk.Image, path: Path) -> Path:
    """``image`` (int16 voxels) as a zipped series of single-slice DICOM files, as a scanner export would be."""
    import zipfile

    int_image = sitk.Cast(image, sitk.sitkInt16)
    series_uid = "1.2.826.0.1.3680043.2.1125.1." + str(abs(hash(path.name)) % 10**12)
    direction = int_image.GetDirection()
    orientation = "\\".join(str(v) for v in (*direction[0:7:3], *direction[1:8:3]))
    with zipfile.ZipFile(path, "w") as archive:
        for k in range(int_image.GetDepth()):
            plane = int_image[:, :, k]
            for tag, value in (("0008|0060", "CT"), ("0020|000e", series_uid), ("0020|0037", orientation),
                               ("0020|0013", str(k + 1)), ("0028|0030", "\\".join(map(str, image.GetSpacing()[1::-1]))),
                               ("0018|0050", str(image.GetSpacing()[2])),
                               ("0020|0032", "\\".join(map(str, int_image.TransformIndexToPhysicalPoint((0, 0, k)))))):
                plane.SetMetaData(tag, value)
            slice_path = path.parent / f"slice{k:03d}.dcm"
            writer = sitk.ImageFileWriter()
            writer.KeepOriginalImageUIDOn()
            writer.SetFileName(str(slice_path))
            writer.Execute(plane)
            archive.write(slice_path, f"series/slice{k:03d}.dcm")
            slice_path.unlink()
    return path
