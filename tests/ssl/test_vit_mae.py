"""Token masking of UNETR's ViT (MAE, SimMIM): token order, loss on masked tokens only, pretrain -> UNETR."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sarcomakit.models import build_network
from sarcomakit.models.pretrained import load_pretrained
from sarcomakit.models.simmim import SimMIMViT
from sarcomakit.planning.plan import plan_cohort
from sarcomakit.runs.checkpoint import load_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.pretraining.vit_mae import TOKEN, masked_token_mse, patchify
from sarcomakit.training.api import train

VIT = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4, "feature_size": 8}


def test_patchify_follows_the_order_of_the_transformer_tokens() -> None:
    grid = (2, 3, 2)
    index = torch.arange(grid[0] * grid[1] * grid[2], dtype=torch.float32).reshape(grid)
    image = index.repeat_interleave(TOKEN, 0).repeat_interleave(TOKEN, 1).repeat_interleave(TOKEN, 2)
    image = torch.stack([image, -image])[None]  # (1, 2, 32, 48, 32)
    tokens = patchify(image)
    assert tokens.shape == (1, 12, 2 * TOKEN**3)
    for n in range(12):
        assert torch.all(tokens[0, n, :TOKEN**3] == n) and torch.all(tokens[0, n, TOKEN**3:] == -n)
    # MONAI's patch embedding (a strided convolution, flattened) numbers its tokens the same way
    conv = torch.nn.Conv3d(1, 1, TOKEN, stride=TOKEN, bias=False)
    torch.nn.init.constant_(conv.weight, 1.0 / TOKEN**3)
    embedded = conv(image[:, :1]).flatten(2).transpose(1, 2)[0, :, 0]
    torch.testing.assert_close(embedded, torch.arange(12, dtype=torch.float32))


def test_the_loss_counts_masked_tokens_only() -> None:
    torch.manual_seed(0)
    prediction, target = torch.randn(2, 6, 10), torch.randn(2, 6, 10)
    mask = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]], dtype=torch.float32)
    loss = masked_token_mse(prediction, target, mask)
    torch.testing.assert_close(loss, ((prediction - target) ** 2)[mask.bool()].mean())
    changed = prediction.clone()
    changed[~mask.bool()] += 10.0
    torch.testing.assert_close(masked_token_mse(changed, target, mask), loss)


def test_simmim_hides_the_masked_tokens_content_and_masks_the_asked_fraction() -> None:
    torch.manual_seed(0)
    unetr = build_network("unetr", in_channels=2, out_channels=1, patch_size=[32, 32, 32], **VIT)
    model = SimMIMViT(unetr.vit, in_channels=2, mask_ratio=0.5).eval()
    image = torch.randn(1, 2, 32, 32, 32)
    mask = torch.zeros(1, 8, dtype=torch.bool)
    mask[0, [0, 5]] = True
    changed = image.clone()
    changed[:, :, :16, :16, :16] += 3.0  # token 0: masked, its voxels are never seen
    with torch.no_grad():
        before, _ = model(image, mask)
        after, _ = model(changed, mask)
        torch.testing.assert_close(before, after)
        changed[:, :, :16, :16, 16:] += 3.0  # token 1: visible
        assert not torch.allclose(model(changed, mask)[0], before)
    assert int(model.random_mask(3, 8, torch.device("cpu")).sum(1).unique()) == 4
    assert before.shape == (1, 8, 2 * TOKEN**3)


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options"), [("vit_mae", {"decoder_hidden_size": 24, "decoder_layers": 1}),
                                                 ("simmim", {})])
def test_pretraining_fits_every_tensor_of_unetrs_vision_transformer(tiny_cohort, tmp_path: Path, method: str,
                                                                    options: dict) -> None:
    plan = plan_cohort(tiny_cohort, tmp_path / "plan.json")
    config = TrainConfig(task=method, network="unetr", network_options=VIT, patch_size=[16, 32, 32],
                         epochs=4, iterations_per_epoch=5, batch_size=2, optimizer="adamw", learning_rate=3e-3,
                         augmentation="none", num_workers=0, n_folds=3, device="cpu", task_options=options)
    result = train(tiny_cohort, plan, tmp_path / "pre", folds=(0,), config=config).folds[0]
    # the error on fixed validation patches and token masks falls
    assert result.history[-1]["val_masked_error"] < 0.9 * result.history[0]["val_masked_error"]

    unetr = build_network("unetr", in_channels=len(plan.channels), out_channels=2, patch_size=[16, 32, 32], **VIT)
    report = load_pretrained(unetr, "unetr", tmp_path / "pre", parts="encoder")
    vit_keys = [k for k in unetr.state_dict() if k.startswith("vit.")]
    assert sorted(report.loaded) == sorted(vit_keys) and report.expected == len(vit_keys)
    pretrained = load_checkpoint(tmp_path / "pre" / "fold_0" / "checkpoint_best.pt")["model"]
    prefix = "" if method == "vit_mae" else "vit."
    torch.testing.assert_close(unetr.state_dict()["vit.blocks.11.attn.qkv.weight"],
                               pretrained[f"{prefix}blocks.11.attn.qkv.weight"])
    assert any(k.startswith("decoder") for k in report.unused)  # the pretraining decoder stays behind
