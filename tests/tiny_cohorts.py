"""A tiny labelled NIfTI cohort with varied geometry (importable by tests that need one outside a fixture)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.io.image import write_image
from sarcomakit.data.manifest import Case, Manifest


def write_tiny_cohort(root: Path, n_cases: int = 6, seed: int = 0, shape=(16, 32, 32)) -> Manifest:
    """Cases with a bright ellipsoid 'tumour' in two channels; spacing and orientation vary per case."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_cases):
        z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
        centre = np.array(shape) / 2 + rng.uniform(-3, 3, size=3) * np.array([0.5, 1, 1])
        radii = rng.uniform(0.2, 0.3, size=3) * np.array(shape)
        tumour = (((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
                  + ((x - centre[2]) / radii[2]) ** 2) <= 1
        body = np.ones(shape, bool)
        grade = ("low", "intermediate", "high")[i % 3]
        t1 = 100 + 20 * rng.normal(size=shape) + (40 + 20 * (i % 3)) * tumour * body
        t2 = 50 + 10 * rng.normal(size=shape) - 30 * tumour
        spacing = (float(rng.uniform(0.9, 1.3)), float(rng.uniform(0.9, 1.3)), float(rng.choice([2.0, 3.0])))
        direction = (1, 0, 0, 0, 1, 0, 0, 0, 1) if i % 2 == 0 else (-1, 0, 0, 0, 1, 0, 0, 0, 1)
        origin = (float(rng.uniform(-50, 50)), 10.0, -5.0)
        paths = {}
        for name, array in (("T1", t1), ("T2", t2), ("label", tumour)):
            image = sitk.GetImageFromArray(array.astype(np.uint8 if name == "label" else np.float32))
            image.SetSpacing(spacing)
            image.SetOrigin(origin)
            image.SetDirection(direction)
            paths[name] = write_image(image, root / ("labels" if name == "label" else "images") /
                                      f"case{i:02d}{'' if name == 'label' else '_' + name}.nii.gz")
        cases.append(Case(f"case{i:02d}", {"T1": paths["T1"], "T2": paths["T2"]}, label=paths["label"],
                          site=f"site{i % 2}", grade=grade, survival_time=float(3000 - 800 * (i % 3) + 10 * i),
                          event=int(i % 2 == 0 or i % 3 == 2)))
    manifest = Manifest(channels=["T1", "T2"], cases=cases)
    manifest.save(root / "manifest.csv")
    return Manifest.load(root / "manifest.csv")
