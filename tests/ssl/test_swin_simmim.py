"""SimMIM on SwinUNETR's Swin transformer: mask geometry, loss on masked voxels only, the mask token in use,
every swinViT tensor into SwinUNETR, and pretrain -> fine-tune from the command line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from sarcomakit.cli.main import app
from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import Manifest
from sarcomakit.models import build_network
from sarcomakit.models.pretrained import load_pretrained
from sarcomakit.models.simmim import patchify
from sarcomakit.models.swin_simmim import SimMIMSwin
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.pretraining.vit_mae import SimMIMTask, TokenMaskingObjective

SWIN = {"feature_size": 12}  # the smallest SwinUNETR (feature_size is a multiple of 12)


def _model(block: int = 16, channels: int = 2, seed: int = 0) -> SimMIMSwin:
    torch.manual_seed(seed)
    swin = build_network("swinunetr", in_channels=channels, out_channels=1, patch_size=[32, 32, 32], **SWIN)
    return SimMIMSwin(swin.swinViT, channels, block=block, mask_ratio=0.6).eval()


def _voxel_mask(mask: torch.Tensor, grid: tuple[int, int, int], block: int) -> torch.Tensor:
    """(B, N) block mask -> (B, 1, Z, Y, X) voxels, blocks in z, y, x order."""
    voxels = mask.reshape(mask.shape[0], 1, *grid).bool()
    for axis in (2, 3, 4):
        voxels = voxels.repeat_interleave(block, dim=axis)
    return voxels


@pytest.mark.parametrize("block", [8, 16])
def test_blocks_of_patch_embeddings_are_masked_at_the_asked_ratio(block: int) -> None:
    model = _model(block)
    seen: list[torch.Tensor] = []
    model.swinViT.patch_embed.register_forward_hook(lambda m, a, out: seen.append(out.detach()))
    image = torch.randn(2, 2, 32, 32, 32)
    with torch.no_grad():
        prediction, mask = model(image)
    n_blocks = (32 // block) ** 3
    assert mask.shape == (2, n_blocks) and prediction.shape == (2, n_blocks, 2 * block**3)
    assert mask.sum(1).tolist() == [round(0.6 * n_blocks)] * 2
    # the embeddings replaced by the mask token, at the 2-voxel patch-embedding resolution
    is_token = (seen[0] == model.mask_token).all(dim=1)  # (B, 16, 16, 16)
    assert is_token.float().mean().item() == pytest.approx(round(0.6 * n_blocks) / n_blocks)
    voxels = is_token.repeat_interleave(2, 1).repeat_interleave(2, 2).repeat_interleave(2, 3)[:, None].float()
    per_block = patchify(voxels, block)  # every embedding of a block shares its state, as the returned mask says
    assert torch.equal(per_block.amin(-1), per_block.amax(-1))
    assert torch.equal(per_block[..., 0], mask)


def test_the_loss_counts_masked_voxels_only() -> None:
    model = _model()
    image = torch.randn(1, 2, 32, 32, 32)
    mask = torch.tensor([[1, 0, 1, 1, 0, 1, 0, 1]], dtype=torch.float32)
    masked = _voxel_mask(mask, (2, 2, 2), 16)
    objective = TokenMaskingObjective(power=1, token=16)

    def loss(shift_visible: float = 0.0, shift_masked: float = 0.0) -> float:
        hook = model.decoder.register_forward_hook(
            lambda m, a, out: out + shift_visible * (~masked) + shift_masked * masked)
        try:
            return float(objective.forward(lambda x: model(x, mask), {"image": image}, torch.device("cpu")).total)
        finally:
            hook.remove()

    with torch.no_grad():
        reference = loss()
        assert loss(shift_visible=10.0) == pytest.approx(reference, rel=1e-6)
        assert loss(shift_masked=10.0) > reference + 5.0
        prediction, _ = model(image, mask)
    expected = (patchify(image, 16) - prediction).abs().mean(-1)[mask.bool()].mean()
    assert reference == pytest.approx(float(expected), rel=1e-5)


def test_the_mask_token_replaces_the_masked_content_and_learns() -> None:
    model = _model()
    image = torch.randn(1, 2, 32, 32, 32)
    mask = torch.zeros(1, 8)
    mask[0, [0, 5]] = 1.0
    with torch.no_grad():
        masked, _ = model(image, mask)
        unmasked, _ = model(image, torch.zeros(1, 8))
        assert not torch.allclose(masked, unmasked)  # the masked path differs from the unmasked one
        changed = image.clone()
        changed[:, :, :16, :16, :16] += 3.0  # block 0 is masked: its voxels are never seen
        torch.testing.assert_close(model(changed, mask)[0], masked)
        changed[:, :, :16, :16, 16:] += 3.0  # block 1 is visible
        assert not torch.allclose(model(changed, mask)[0], masked)
    model.train()
    prediction, used = model(image, mask)
    (prediction * used[..., None]).abs().mean().backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0
    model.zero_grad()
    model(image, torch.zeros(1, 8))[0].abs().mean().backward()
    assert model.mask_token.grad is None or not model.mask_token.grad.any()
    # a plain call of the transformer (as inside SwinUNETR) is not masked
    with torch.no_grad():
        plain = model.swinViT(image)[0]
        model.mask_token.data.fill_(100.0)
        torch.testing.assert_close(model.swinViT(image)[0], plain)


def test_every_swin_tensor_of_a_simmim_checkpoint_lands_in_swinunetr(tiny_cohort: Manifest, tmp_path: Path) -> None:
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json")
    config = TrainConfig(task="simmim", network="swinunetr", network_options=SWIN, patch_size=[32, 32, 32])
    torch.manual_seed(3)
    pretrained = SimMIMTask().build_model(plan, config)
    state = pretrained.state_dict()
    torch.save({"model": state, "task": "simmim", "config": config.model_dump()}, tmp_path / "simmim.pt")

    target = build_network("swinunetr", in_channels=len(plan.channels), out_channels=2, patch_size=[32, 64, 64],
                           **SWIN)
    report = load_pretrained(target, "swinunetr", tmp_path / "simmim.pt", parts="encoder")
    swin_keys = [k for k in target.state_dict() if k.startswith("swinViT.")]
    assert len(report.loaded) == report.expected == len(swin_keys) == len([k for k in state if k.startswith("swin")])
    assert report.summary().startswith(f"loaded {len(swin_keys)}/{len(swin_keys)} encoder tensors, 0 skipped")
    for key in swin_keys:
        assert torch.equal(target.state_dict()[key], state[key]), key
    assert "mask_token" in report.unused and any(k.startswith("decoder.") for k in report.unused)

    deeper = build_network("swinunetr", in_channels=2, out_channels=2, patch_size=[32, 32, 32],
                           depths=(2, 2, 4, 2), **SWIN)
    before = {k: v.clone() for k, v in deeper.state_dict().items()}
    with pytest.raises(UserInputError, match="unmatched, nothing loaded"):
        load_pretrained(deeper, "swinunetr", tmp_path / "simmim.pt", parts="encoder")
    assert all(torch.equal(before[k], v) for k, v in deeper.state_dict().items())


def test_swin_simmim_checks_its_options(tiny_cohort: Manifest, tmp_path: Path) -> None:
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json")
    swin = TrainConfig(task="simmim", network="swinunetr", network_options=SWIN, patch_size=[32, 32, 64])
    with pytest.raises(UserInputError, match="multiple of the 24-voxel mask blocks"):
        SimMIMTask(block_size=24).build_model(plan, swin)
    with pytest.raises(UserInputError, match="even number"):
        SimMIMTask(block_size=5)
    with pytest.raises(UserInputError, match="UNETR or SwinUNETR"):
        SimMIMTask().build_model(plan, swin.updated(network="resunet", network_options={}))
    assert SimMIMTask(block_size=32).token(swin) == 32 and SimMIMTask().token(swin.updated(network="unetr")) == 16


@pytest.mark.slow
def test_swin_simmim_pretrain_then_finetune_swinunetr_from_the_command_line(tiny_cohort: Manifest,
                                                                            tmp_path: Path) -> None:
    runner = CliRunner()
    cases = [dataclasses.replace(case, label=None, grade=None) for case in tiny_cohort.cases]
    Manifest(channels=tiny_cohort.channels, cases=cases).save(tmp_path / "unlabelled.csv")
    planned = runner.invoke(app, ["plan", str(tmp_path / "unlabelled.csv"), "--out", str(tmp_path / "plan.json")])
    assert planned.exit_code == 0, planned.output
    common = ["--plan", str(tmp_path / "plan.json"), "--folds", "3", "--device", "cpu", "--workers", "0",
              "--optimizer", "adamw", "--lr", "0.001", "--network", "swinunetr", "--epochs", "1"]
    # SwinUNETR's instance norm needs two voxels at its stride-32 bottleneck in training: 32 x 32 x 64 to fine-tune;
    # the Swin transformer has no absolute position embeddings, so pretraining may use a smaller patch
    small = tmp_path / "small.json"
    TrainConfig(network_options=SWIN, patch_size=[32, 32, 32], augmentation="none",
                task_options={"val_patches": 1}).save(small)
    pretrained = runner.invoke(app, ["pretrain", str(tmp_path / "unlabelled.csv"), "--method", "simmim",
                                     "--out", str(tmp_path / "pre"), "--config", str(small), "--iterations", "2",
                                     "--batch-size", "2", *common])
    assert pretrained.exit_code == 0, pretrained.output
    source = load_checkpoint(tmp_path / "pre" / "fold_0" / "checkpoint_best.pt")
    assert source["task"] == "simmim" and "mask_token" in source["model"]

    tuned_config = tmp_path / "tune.json"
    TrainConfig(network_options=SWIN, patch_size=[32, 32, 64], augmentation="none").save(tuned_config)
    tuned = runner.invoke(app, ["train", str(tiny_cohort.source), "--out", str(tmp_path / "tuned"),
                                "--config", str(tuned_config), "--iterations", "1", "--batch-size", "1",
                                "--init", str(tmp_path / "pre"), "--init-parts", "encoder", "--freeze-epochs", "1",
                                *common])
    assert tuned.exit_code == 0, tuned.output
    report = json.loads((tmp_path / "tuned" / "fold_0" / "init_report.json").read_text(encoding="utf-8"))
    swin_keys = sorted(k for k in source["model"] if k.startswith("swinViT."))
    assert report["loaded"] == swin_keys and report["expected"] == len(swin_keys) > 100
    assert f"loaded {len(swin_keys)}/{len(swin_keys)} encoder tensors, 0 skipped" in tuned.output
    weights = load_checkpoint(tmp_path / "tuned" / "fold_0" / "checkpoint_best.pt")["model"]
    for key in swin_keys:  # frozen for the only epoch: exactly the pretrained tensors
        assert torch.equal(weights[key], source["model"][key]), key
