"""``sarcomakit export bundle``: layout, network forms, the plan as MONAI transforms, and refused inputs.

These tests use run folders with untrained weights (the export reads only the plan, the config and the
checkpoints); the end-to-end run of a trained bundle under MONAI alone is in ``test_bundle_monai_only.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from bundle_runs import SMALL_RESUNET, small_plan, untrained_run, write_exact_grid_cohort
from monai.bundle import ConfigParser
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import read_image
from sarcomakit.export.bundle import export_bundle
from sarcomakit.export.network import export_network
from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import preprocess_case
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.segmentation import SegmentationTask

runner = CliRunner()


def invoke(*args: object):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def parsed(bundle: Path, name: str):
    """An entry of the bundle's inference.json, instantiated by MONAI's own config parser after the bundle's
    ``initialize`` step (which loads the weights)."""
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    parser.get_parsed_content("initialize")
    torch.set_grad_enabled(True)  # ``initialize`` turns gradients off for the bundle's run
    return parser.get_parsed_content(name)


def assert_refused(result, message: str, out: Path) -> None:
    """Exit 2, one error line naming the problem and the fix, nothing written at ``out`` or beside it."""
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if message in line]
    assert len(lines) == 1 and "Fix:" in lines[0], result.output
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_single_fold_is_a_monai_network_with_a_state_dict(tmp_path: Path) -> None:
    run = untrained_run(tmp_path / "run", TrainConfig(network_options=SMALL_RESUNET), folds=(0, 1))
    out = tmp_path / "bundle"
    result = invoke("export", "bundle", run, out, "--fold", "1")
    assert result.exit_code == 0, result.output
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "configs/inference.json", "configs/metadata.json", "docs/README.md", "models/model.pt"]
    config = json.loads((out / "configs" / "inference.json").read_text(encoding="utf-8"))
    assert config["network_def"]["_target_"] == "monai.networks.nets.UNet"
    metadata = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["sarcomakit"]["folds"] == [1]
    assert metadata["network_data_format"]["inputs"]["image"]["channel_def"] == {"0": "T1", "1": "T2"}
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "tumour"}
    assert {"version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version", "task",
            "description", "authors", "copyright"} <= set(metadata)
    # MONAI builds the network from the config and loads the weights as the bundle does; it is fold 1's network
    network = parsed(out, "network")
    fold1 = torch.load(run / "fold_1" / "checkpoint_best.pt", weights_only=True)["model"]
    assert all(torch.equal(network.state_dict()[k], v) for k, v in fold1.items())


def test_an_ensemble_carries_every_fold_and_averages_them(tmp_path: Path) -> None:
    run = untrained_run(tmp_path / "run", TrainConfig(network_options=SMALL_RESUNET), folds=(0, 1))
    bundle = export_bundle(run, tmp_path / "bundle")
    assert bundle.folds == [0, 1]
    assert sorted(p.name for p in (tmp_path / "bundle" / "models").iterdir()) == ["fold_0.pt", "fold_1.pt"]
    config = json.loads((tmp_path / "bundle" / "configs" / "inference.json").read_text(encoding="utf-8"))
    post = [t["_target_"] for t in config["postprocessing"]["transforms"]]
    assert post[:2] == ["Activationsd", "MeanEnsembled"] and post.index("Invertd") > 1
    networks = parsed(tmp_path / "bundle", "networks")
    for fold, network in enumerate(networks):
        weights = torch.load(run / f"fold_{fold}" / "checkpoint_best.pt", weights_only=True)["model"]
        assert all(torch.equal(network.state_dict()[k], v) for k, v in weights.items())


def test_a_multitask_run_exports_its_segmentation_with_a_notice(tmp_path: Path) -> None:
    run = untrained_run(tmp_path / "run", TrainConfig(task="multitask", network_options=SMALL_RESUNET))
    out = tmp_path / "bundle"
    result = invoke("export", "bundle", run, out)
    assert result.exit_code == 0, result.output
    assert "segmentation only" in result.output
    metadata = json.loads((out / "configs" / "metadata.json").read_text(encoding="utf-8"))
    assert metadata["sarcomakit"]["segmentation_only"] is True
    assert "grade" in (out / "docs" / "README.md").read_text(encoding="utf-8")
    network = parsed(out, "network")
    checkpoint = torch.load(run / "fold_0" / "checkpoint_best.pt", weights_only=True)["model"]
    backbone = {k[len("backbone."):]: v for k, v in checkpoint.items() if k.startswith("backbone.")}
    assert all(torch.equal(network.state_dict()[k], v) for k, v in backbone.items())
    assert set(network.state_dict()) == set(backbone)


def test_a_network_monai_cannot_build_is_exported_as_torchscript(tmp_path: Path) -> None:
    config = TrainConfig(network_options={**SMALL_RESUNET, "input_layers": [{"layer": "normaliser"}]})
    run = untrained_run(tmp_path / "run", config)
    out = tmp_path / "bundle"
    assert export_bundle(run, out).network_form == "torchscript"
    assert "network_def" not in json.loads((out / "configs" / "inference.json").read_text(encoding="utf-8"))
    scripted = parsed(out, "network")
    plan = Plan.load(run / "plan.json")
    model = SegmentationTask().build_model(plan, config)
    model.load_state_dict(torch.load(run / "fold_0" / "checkpoint_best.pt", weights_only=True)["model"])
    x = torch.randn(3, 2, *plan.patch_size)  # another batch size than the trace's
    with torch.no_grad():
        assert torch.allclose(scripted(x), model.eval()(x), atol=1e-5)


class _DataDependent(torch.nn.Module):
    """A network whose output depends on a Python number taken from its input: a trace freezes it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv3d(2, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * float(x[0, 0, 0, 0, 0])


def test_a_network_that_cannot_be_traced_is_refused_and_nothing_is_written(tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(UserInputError, match="cannot be traced"):
        export_network([_DataDependent().eval()], None, in_channels=2, patch_size=[8, 16, 16], sw_batch_size=2,
                       where=tmp_path)
    run = untrained_run(tmp_path / "run", TrainConfig(network="obelisk"))
    monkeypatch.setattr(SegmentationTask, "build_model", lambda self, plan, config: _DataDependent())
    torch.save({"model": _DataDependent().state_dict()}, run / "fold_0" / "checkpoint_best.pt")
    out = tmp_path / "bundle"
    assert_refused(invoke("export", "bundle", run, out), "cannot be traced", out)


def test_a_pretraining_run_is_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    small_plan(["T1", "T2"]).save(run / "plan.json")
    TrainConfig(task="mae").save(run / "config.json")
    out = tmp_path / "bundle"
    assert_refused(invoke("export", "bundle", run, out), "has no segmentation output", out)


def test_a_missing_run_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    assert_refused(invoke("export", "bundle", tmp_path / "no-run", out), "is not a sarcomakit run folder", out)


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path: Path) -> None:
    run = untrained_run(tmp_path / "run", TrainConfig(network_options=SMALL_RESUNET))
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = invoke("export", "bundle", run, out)
    assert result.exit_code == 2 and "already exists" in result.output
    result = invoke("export", "bundle", run, out, "--overwrite")  # not a bundle: --overwrite does not replace it
    assert result.exit_code == 2 and "is not a MONAI bundle" in result.output
    assert (out / "notes.txt").read_text(encoding="utf-8") == "mine"
    (out / "notes.txt").unlink()
    out.rmdir()
    assert invoke("export", "bundle", run, out).exit_code == 0
    assert invoke("export", "bundle", run, out, "--overwrite", "--fold", "0").exit_code == 0


def test_the_preprocessing_is_the_plan_in_monai_transforms(tmp_path: Path) -> None:
    """CT clipping and dataset z-score, a per-image z-score, reorientation and resampling, against sarcomakit."""
    manifest = write_exact_grid_cohort(tmp_path / "cohort", n_cases=3)
    ct = ChannelNormalization(channel="T1", scheme="ct", clip_low=90.0, clip_high=150.0, mean=118.0, std=21.0)
    plan = small_plan(["T1", "T2"], [ct, ChannelNormalization(channel="T2", scheme="zscore")])
    run = untrained_run(tmp_path / "run", TrainConfig(network_options=SMALL_RESUNET), plan=plan)
    export_bundle(run, tmp_path / "bundle")
    preprocessing = parsed(tmp_path / "bundle", "preprocessing")
    for case in manifest.cases:
        ours = preprocess_case({ch: read_image(case.images[ch]) for ch in plan.channels}, plan).data
        theirs = preprocessing({"image": [str(case.images[ch]) for ch in plan.channels]})["image"].numpy()
        assert theirs.shape == ours.shape
        assert np.abs(theirs - ours).max() < 1e-3
        assert theirs[0].min() == pytest.approx((90 - 118) / 21, abs=1e-5)  # clipped at the plan's constants


@pytest.mark.parametrize("channels", [["CT"], ["T1", "T2"]])
def test_cases_are_read_and_named_as_sarcomakit_predict_names_them(tmp_path: Path, channels: list[str]) -> None:
    run = untrained_run(tmp_path / "run", TrainConfig(network_options=SMALL_RESUNET), plan=small_plan(channels))
    export_bundle(run, tmp_path / "bundle")
    images = tmp_path / "images"
    images.mkdir()
    names = ["a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"] if len(channels) > 1 else \
        ["a.nii.gz", "b_0000.nii.gz"]
    for name in names:
        (images / name).touch()
    parser = ConfigParser()
    parser.read_config(tmp_path / "bundle" / "configs" / "inference.json")
    parser.update({"bundle_root": str(tmp_path / "bundle"), "dataset_dir": str(images)})
    datalist = parser.get_parsed_content("datalist")
    if len(channels) > 1:
        assert datalist == [{"image": [str(images / "a_0000.nii.gz"), str(images / "a_0001.nii.gz")]},
                            {"image": [str(images / "b_0000.nii.gz"), str(images / "b_0001.nii.gz")]}]
    else:
        assert datalist == [{"image": str(images / "a.nii.gz")}, {"image": str(images / "b_0000.nii.gz")}]
    name_of = parser.get_parsed_content("output_name")
    first = [item["image"][0] if isinstance(item["image"], list) else item["image"] for item in datalist]
    assert [name_of({"filename_or_obj": f}, None)["subject"] for f in first] == ["a", "b"]
