"""Small synthetic volumes and cohorts for the planning tests, written with SimpleITK (a helper module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sarcomakit.data.manifest import Case, Manifest


def ellipsoid(shape: tuple[int, int, int], centre: tuple[float, float, float],
              radii: tuple[float, float, float]) -> np.ndarray:
    """Boolean (z, y, x) ellipsoid with centre and radii in voxels."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def make_image(array: np.ndarray, spacing_xyz=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
               direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing([float(s) for s in spacing_xyz])
    image.SetOrigin([float(o) for o in origin])
    image.SetDirection([float(d) for d in direction])
    return image


def body_case(shape=(12, 40, 44), seed=0, tumour_offset=(0, 0, 0)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A body (ellipsoid in a zero background) with a tumour: (MR, CT, label) arrays (z, y, x)."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    body = ellipsoid(shape, (z / 2, y / 2, x / 2), (z, y * 0.35, x * 0.35))
    centre = (z / 2 + tumour_offset[0], y / 2 + tumour_offset[1], x / 2 + tumour_offset[2])
    tumour = ellipsoid(shape, centre, (max(2.0, z / 4), y / 8, x / 8)) & body
    mr = np.where(body, 100.0 + 10 * rng.standard_normal(shape), 0.0)
    mr[tumour] += 80.0
    ct = np.full(shape, -1000.0)
    ct[body] = 40.0 + 5 * rng.standard_normal(int(body.sum()))
    ct[tumour] = 80.0 + 5 * rng.standard_normal(int(tumour.sum()))
    return mr.astype(np.float32), ct.astype(np.float32), tumour.astype(np.uint8)


def write_cohort(folder: Path, n_cases: int = 3, shape=(12, 40, 44), spacing_xyz=(0.9, 0.9, 4.0),
                 direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), channels=("MR", "CT")) -> Manifest:
    """Write a tiny NIfTI cohort and its CSV manifest into ``folder``; returns the loaded manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for i in range(n_cases):
        mr, ct, label = body_case(shape, seed=i, tumour_offset=(0, i - 1, 1 - i))
        arrays = {"MR": mr, "CT": ct}
        images = {}
        for ch in channels:
            path = folder / f"case{i}_{ch}.nii.gz"
            sitk.WriteImage(make_image(arrays[ch], spacing_xyz, (5.0 * i, -3.0, 2.0), direction), str(path))
            images[ch] = path
        label_path = folder / f"case{i}_label.nii.gz"
        sitk.WriteImage(make_image(label, spacing_xyz, (5.0 * i, -3.0, 2.0), direction), str(label_path))
        cases.append(Case(case_id=f"case{i}", images=images, label=label_path))
    manifest = Manifest(channels=list(channels), cases=cases)
    manifest.save(folder / "manifest.csv")
    return Manifest.load(folder / "manifest.csv")

