"""An exported bundle segments under MONAI alone, in a fresh environment without sarcomakit, and its masks agree
with ``sarcomakit predict`` (Dice >= 0.99 per case, same grid)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from bundle_runs import SMALL_RESUNET, TARGET_SPACING_ZYX, write_exact_grid_cohort
from monai_only_env import clean_environ, make_monai_only_env, run_bundle

from sarcomakit.evaluation.metrics import dice
from sarcomakit.export.bundle import export_bundle
from sarcomakit.inference.predictor import predict
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.config import TrainConfig
from sarcomakit.training.api import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A two-fold run trained a little (confident masks), its cases as a predict folder, and its predictions."""
    root = tmp_path_factory.mktemp("bundle_e2e")
    manifest = write_exact_grid_cohort(root / "cohort", n_cases=4)
    plan = plan_cohort(manifest, root / "plan.json", show_progress=False, target_spacing=TARGET_SPACING_ZYX,
                       patch_size=[8, 16, 16])
    config = TrainConfig(epochs=6, iterations_per_epoch=10, batch_size=2, n_folds=2, num_workers=0,
                         augmentation="none", optimizer="adamw", learning_rate=3e-3, device="cpu",
                         network_options=SMALL_RESUNET)
    train(manifest, plan, root / "run", folds=(0, 1), config=config)
    images = root / "images"
    images.mkdir()
    for case in manifest.cases:
        for index, channel in enumerate(manifest.channels):
            shutil.copy(case.images[channel], images / f"{case.case_id}_{index:04d}.nii.gz")
    predict(root / "run", images, root / "predicted", device="cpu")
    predict(root / "run", images, root / "predicted-fold0-largest", folds=[0], largest_component=True, device="cpu")
    return {"root": root, "run": root / "run", "images": images, "predicted": root / "predicted",
            "predicted-fold0-largest": root / "predicted-fold0-largest"}


def compare_masks(predicted: Path, exported: Path) -> dict[str, float]:
    """Dice per case of the bundle's masks against sarcomakit's, after checking names and grids."""
    names = sorted(p.name for p in predicted.glob("*.nii.gz"))
    assert sorted(p.name for p in exported.glob("*.nii.gz")) == names == [f"case{i:02d}.nii.gz" for i in range(4)]
    scores = {}
    for name in names:
        ours, theirs = (sitk.ReadImage(str(folder / name)) for folder in (predicted, exported))
        assert theirs.GetSize() == ours.GetSize()
        assert np.allclose(theirs.GetOrigin(), ours.GetOrigin(), atol=1e-4)
        assert np.allclose(theirs.GetSpacing(), ours.GetSpacing(), atol=1e-5)
        assert np.allclose(theirs.GetDirection(), ours.GetDirection(), atol=1e-6)
        a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(theirs)
        assert a.any(), f"{name}: the trained run found no tumour, the comparison would be empty"
        assert set(np.unique(b)) <= {0, 1}
        scores[name] = dice(a > 0, b > 0)
    return scores


@pytest.mark.slow
def test_the_bundle_runs_without_sarcomakit_and_agrees_with_predict(trained: dict[str, Path]) -> None:
    root = trained["root"]
    bundle = export_bundle(trained["run"], root / "bundle")
    assert bundle.folds == [0, 1]
    # one fold, the single-network layout, with the largest-component postprocessing (which needs scikit-image)
    single = export_bundle(trained["run"], root / "bundle-fold0", folds=[0], largest_component=True)
    assert sorted(p.name for p in (single.path / "models").iterdir()) == ["model.pt"]
    # the environment holds what the bundles declare they need, nothing of sarcomakit
    metadata = [json.loads((b.path / "configs" / "metadata.json").read_text(encoding="utf-8"))
                for b in (bundle, single)]
    required = {name for m in metadata for name in m["required_packages_version"]}
    assert required == {"nibabel", "scikit-image"}
    python = make_monai_only_env(root / "monai-env", tuple(sorted(required)))
    env = clean_environ()
    assert subprocess.run([str(python), "-c", "import sarcomakit"], env=env, capture_output=True).returncode != 0
    assert subprocess.run([str(python), "-c", "import monai, nibabel"], env=env, capture_output=True).returncode == 0

    result = run_bundle(python, bundle.path, trained["images"], root / "bundle-masks")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = compare_masks(trained["predicted"], root / "bundle-masks")
    print("Dice, bundle (folds averaged) vs sarcomakit predict:", {k: round(v, 4) for k, v in scores.items()})
    assert min(scores.values()) >= 0.99, scores

    result = run_bundle(python, single.path, trained["images"], root / "bundle-fold0-masks")
    assert result.returncode == 0, result.stderr[-3000:]
    scores = compare_masks(trained["predicted-fold0-largest"], root / "bundle-fold0-masks")
    print("Dice, bundle (fold 0, largest component) vs sarcomakit predict:",
          {k: round(v, 4) for k, v in scores.items()})
    assert min(scores.values()) >= 0.99, scores
