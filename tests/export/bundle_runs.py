"""Small cohorts and run folders for the bundle export tests.

The cohort's grids are chosen so that each case's extent is a whole number of target voxels: the resampled grid
is then the same for sarcomakit (which keeps the field of view) and MONAI's ``Spacingd`` (which keeps the
spacing), and the two pipelines can be compared voxel for voxel, resampling included.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from sarcomakit.core.io.image import write_image
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.plan import Plan
from sarcomakit.runs.checkpoint import save_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks import build_task

TARGET_SPACING_ZYX = [2.5, 1.0, 1.0]
#: (size x, y, z), (spacing x, y, z): extents 24 x 24 x 30 mm, i.e. 24 x 24 x 12 voxels of the target
GRIDS = [((20, 32, 15), (1.2, 0.75, 2.0)), ((24, 24, 12), (1.0, 1.0, 2.5))]
DIRECTIONS = [(1, 0, 0, 0, 1, 0, 0, 0, 1), (-1, 0, 0, 0, 1, 0, 0, 0, 1), (1, 0, 0, 0, -1, 0, 0, 0, 1)]


def write_exact_grid_cohort(root: Path, n_cases: int = 4, seed: int = 0) -> Manifest:
    """Two-channel (T1, T2) cases with an ellipsoid tumour placed in physical space; grids and directions vary."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(n_cases):
        size, spacing = GRIDS[i % len(GRIDS)]
        reference = sitk.Image(list(size), sitk.sitkFloat32)
        reference.SetSpacing(spacing)
        reference.SetDirection(DIRECTIONS[i % len(DIRECTIONS)])
        reference.SetOrigin((0.0, 0.0, 0.0))
        corner = np.array(reference.TransformContinuousIndexToPhysicalPoint([s - 1 for s in size]))
        reference.SetOrigin(tuple(float(v) for v in -corner / 2 + rng.uniform(-20, 20, size=3)))
        index = np.stack(np.meshgrid(*[np.arange(n) for n in size], indexing="ij"), -1).reshape(-1, 3)
        direction = np.array(reference.GetDirection()).reshape(3, 3)
        points = np.array(reference.GetOrigin()) + (index * np.array(spacing)) @ direction.T
        centre = np.array(reference.TransformContinuousIndexToPhysicalPoint([(s - 1) / 2 for s in size]))
        centre += rng.uniform(-2, 2, size=3)
        radii = rng.uniform(5, 7, size=3) * np.array([1.0, 1.0, 1.6])
        inside = (((points - centre) / radii) ** 2).sum(1) <= 1
        tumour = inside.reshape(size).transpose(2, 1, 0)  # (x, y, z) -> SimpleITK's (z, y, x)
        shape = tumour.shape
        arrays = {"T1": 100 + 15 * rng.normal(size=shape) + 60 * tumour,
                  "T2": 50 + 8 * rng.normal(size=shape) - 25 * tumour, "label": tumour}
        paths = {}
        for name, array in arrays.items():
            image = sitk.GetImageFromArray(array.astype(np.uint8 if name == "label" else np.float32))
            image.CopyInformation(reference)
            folder = root / ("labels" if name == "label" else "images")
            paths[name] = write_image(image, folder / f"case{i:02d}{'' if name == 'label' else '_' + name}.nii.gz")
        cases.append(Case(f"case{i:02d}", {"T1": paths["T1"], "T2": paths["T2"]}, label=paths["label"]))
    manifest = Manifest(channels=["T1", "T2"], cases=cases)
    manifest.save(root / "manifest.csv")
    return Manifest.load(root / "manifest.csv")


def small_plan(channels: list[str], normalization: list[ChannelNormalization] | None = None) -> Plan:
    """A plan for untrained run folders (the export reads only the plan and the weights)."""
    normalization = normalization or [ChannelNormalization(channel=c, scheme="zscore") for c in channels]
    return Plan(channels=channels, labels={"background": 0, "tumour": 1}, target_spacing=TARGET_SPACING_ZYX,
                anisotropic=False, low_res_axis=None, normalization=normalization, median_shape=[12, 24, 24],
                patch_size=[8, 16, 16], batch_size=2, memory_budget_mb=100.0)


def untrained_run(root: Path, config: TrainConfig, plan: Plan | None = None, folds: tuple[int, ...] = (0,)) -> Path:
    """A run folder whose fold checkpoints hold freshly initialised weights (no training: the export's view)."""
    plan = plan or small_plan(["T1", "T2"])
    root.mkdir(parents=True)
    plan.save(root / "plan.json")
    config.save(root / "config.json")
    for fold in folds:
        torch.manual_seed(fold)
        model = build_task(config).build_model(plan, config)
        save_checkpoint(root / f"fold_{fold}" / "checkpoint_best.pt", {"model": model.state_dict()})
    return root


SMALL_RESUNET = {"channels": [8, 16, 32], "num_res_units": 1}
