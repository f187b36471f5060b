"""Pretrained weights land where they should: every supported pair of networks, channel adaptation, MONAI's three
published layouts (built here with MONAI's own classes), and a loud refusal on any mismatch."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.models import build_network
from sarcomakit.models.multitask import build_multitask_network
from sarcomakit.models.pretrained import detect_layout, load_pretrained, network_part

PATCH = (16, 32, 32)
OPTIONS = {"resunet": {"channels": [8, 16, 32], "num_res_units": 1}, "dynunet": {"filters": [8, 16, 32]},
           "segresnet": {"init_filters": 8}}
needs_einops = pytest.mark.skipif(importlib.util.find_spec("einops") is None,
                                  reason="MONAI's ViT needs einops (pip install einops)")


def _save_pretraining_checkpoint(path: Path, network: str, in_channels: int, options: dict, seed: int = 1) -> nn.Module:
    """A checkpoint as 'sarcomakit pretrain' writes it: the bare network mapping C channels to C channels."""
    torch.manual_seed(seed)
    net = build_network(network, in_channels=in_channels, out_channels=in_channels, patch_size=PATCH, **options)
    torch.save({"model": net.state_dict(), "task": "mae", "config": {"task": "mae", "network": network,
                                                                     "network_options": options}}, path)
    return net


def _parts(network: str, state: dict, parts: set[str]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if network_part(network, k) in parts}


@pytest.mark.parametrize("network", ["resunet", "dynunet", "segresnet"])
@pytest.mark.parametrize("parts", ["encoder", "encoder+decoder"])
def test_pretraining_network_into_segmentation_network(tmp_path: Path, network: str, parts: str) -> None:
    source = _save_pretraining_checkpoint(tmp_path / "ckpt.pt", network, 2, OPTIONS[network])
    torch.manual_seed(7)
    target = build_network(network, in_channels=2, out_channels=3, patch_size=PATCH, **OPTIONS[network])
    before = {k: v.clone() for k, v in target.state_dict().items()}
    report = load_pretrained(target, network, tmp_path / "ckpt.pt", parts)
    wanted = {"encoder"} if parts == "encoder" else {"encoder", "decoder"}
    after, pretrained = target.state_dict(), source.state_dict()
    expected = _parts(network, after, wanted)
    assert expected and report.expected == len(report.loaded)
    assert report.summary().startswith(f"loaded {len(report.loaded)}/{len(report.loaded)} ")
    assert ", 0 skipped" in report.summary()
    for key in expected:
        assert torch.equal(after[key], pretrained[key]), key
    for key in _parts(network, after, {"output"} | ({"decoder"} - wanted)):
        assert torch.equal(after[key], before[key]), f"{key} should keep its initialisation"
    assert any(network_part(network, k) == "output" for k in report.unused)


@pytest.mark.parametrize("network", ["resunet", "dynunet"])
def test_pretraining_network_into_multitask_backbone(tmp_path: Path, network: str) -> None:
    source = _save_pretraining_checkpoint(tmp_path / "ckpt.pt", network, 2, OPTIONS[network])
    target = build_multitask_network(network, in_channels=2, out_channels=2, patch_size=PATCH, **OPTIONS[network])
    heads = {k: v.clone() for k, v in target.state_dict().items() if not k.startswith("backbone.")}
    report = load_pretrained(target, network, tmp_path / "ckpt.pt", "encoder+decoder")
    assert report.loaded and report.expected == len(report.loaded)
    state = target.state_dict()
    for key in report.loaded:
        assert torch.equal(state["backbone." + key], source.state_dict()[key])
    assert all(torch.equal(state[k], v) for k, v in heads.items())


def test_a_multitask_checkpoint_initialises_a_segmentation_network(tmp_path: Path) -> None:
    trained = build_multitask_network("resunet", in_channels=2, out_channels=2, patch_size=PATCH, **OPTIONS["resunet"])
    torch.save({"model": trained.state_dict(), "task": "multitask",
                "config": {"network": "resunet", "network_options": OPTIONS["resunet"]}}, tmp_path / "mt.pt")
    target = build_network("resunet", in_channels=2, out_channels=2, patch_size=PATCH, **OPTIONS["resunet"])
    report = load_pretrained(target, "resunet", tmp_path / "mt.pt")
    assert report.loaded and all(torch.equal(target.state_dict()[k], trained.state_dict()["backbone." + k])
                                 for k in report.loaded)
    assert any(k.startswith("grade_head") for k in report.unused)


def test_one_channel_stem_is_copied_to_every_channel_and_scaled(tmp_path: Path) -> None:
    source = _save_pretraining_checkpoint(tmp_path / "ckpt.pt", "resunet", 1, OPTIONS["resunet"])
    target = build_network("resunet", in_channels=3, out_channels=2, patch_size=PATCH, **OPTIONS["resunet"])
    report = load_pretrained(target, "resunet", tmp_path / "ckpt.pt")
    assert sorted(report.adapted) == ["model.0.conv.unit0.conv.weight", "model.0.residual.weight"]
    stem = target.state_dict()["model.0.conv.unit0.conv.weight"]
    assert stem.shape[1] == 3
    torch.testing.assert_close(stem, source.state_dict()["model.0.conv.unit0.conv.weight"].repeat(1, 3, 1, 1, 1) / 3)
    x = torch.randn(1, 1, *PATCH)
    first_source = source.model[0].conv.unit0.conv(x)
    first_target = target.model[0].conv.unit0.conv(x.repeat(1, 3, 1, 1, 1))
    torch.testing.assert_close(first_target, first_source, atol=1e-5, rtol=1e-5)


def test_mismatches_fail_loudly_and_load_nothing(tmp_path: Path) -> None:
    _save_pretraining_checkpoint(tmp_path / "ckpt.pt", "resunet", 2, OPTIONS["resunet"])
    wider = build_network("resunet", in_channels=2, out_channels=2, patch_size=PATCH, channels=[8, 16, 64],
                          num_res_units=1)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(UserInputError, match=r"does not fit: \d+ encoder tensor\(s\) unmatched, nothing loaded"):
        load_pretrained(wider, "resunet", tmp_path / "ckpt.pt")
    assert all(torch.equal(wider.state_dict()[k], v) for k, v in before.items())
    deeper = build_network("resunet", in_channels=2, out_channels=2, patch_size=PATCH, channels=[8, 16, 32, 64],
                           num_res_units=1)
    with pytest.raises(UserInputError, match="not in the checkpoint"):
        load_pretrained(deeper, "resunet", tmp_path / "ckpt.pt")
    three = build_network("resunet", in_channels=3, out_channels=2, patch_size=PATCH, **OPTIONS["resunet"])
    with pytest.raises(UserInputError, match="has shape"):
        load_pretrained(three, "resunet", tmp_path / "ckpt.pt")
    other = build_network("dynunet", in_channels=2, out_channels=2, patch_size=PATCH, **OPTIONS["dynunet"])
    with pytest.raises(UserInputError, match="holds a resunet"):
        load_pretrained(other, "dynunet", tmp_path / "ckpt.pt")
    with pytest.raises(UserInputError, match="no checkpoint"):
        load_pretrained(other, "dynunet", tmp_path / "missing")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(UserInputError, match="layout"):
        load_pretrained(other, "dynunet", tmp_path / "foreign.pt")


def test_a_pretraining_run_folder_stands_for_its_best_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "run" / "fold_0").mkdir(parents=True)
    source = _save_pretraining_checkpoint(tmp_path / "run" / "fold_0" / "checkpoint_best.pt", "segresnet", 2,
                                          OPTIONS["segresnet"])
    target = build_network("segresnet", in_channels=2, out_channels=2, patch_size=PATCH, **OPTIONS["segresnet"])
    report = load_pretrained(target, "segresnet", tmp_path / "run")
    assert torch.equal(target.state_dict()["convInit.conv.weight"], source.state_dict()["convInit.conv.weight"])
    assert report.source.startswith("sarcomakit checkpoint, mae on segresnet")


# ---------------------------------------------------------------------- MONAI's published layouts
SWIN = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (3, 3, 3, 3)}


def _swin(in_channels: int = 1, out_channels: int = 1, seed: int = 0) -> nn.Module:
    from monai.networks.nets import SwinUNETR

    torch.manual_seed(seed)
    return SwinUNETR(in_channels=in_channels, out_channels=out_channels, **SWIN)


def test_monai_model_swinvit_layout_loads_every_swin_tensor(tmp_path: Path) -> None:
    source = _swin(seed=1)
    state = {}
    for key, value in source.swinViT.state_dict().items():
        state["module." + key.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")] = value
    state.update({"module.rotation_head.weight": torch.zeros(4, 96), "module.contrastive_head.weight":
                  torch.zeros(512, 96), "module.conv.0.weight": torch.zeros(48, 96, 3, 3, 3)})
    torch.save({"state_dict": state, "epoch": 100}, tmp_path / "model_swinvit.pt")
    assert detect_layout(torch.load(tmp_path / "model_swinvit.pt", weights_only=True)) == "monai-swinvit"

    reference = _swin(out_channels=3, seed=5)
    reference.load_from(torch.load(tmp_path / "model_swinvit.pt", weights_only=True))  # MONAI's own loader
    target = build_network("swinunetr", in_channels=1, out_channels=3, patch_size=(32, 32, 32), **SWIN)
    report = load_pretrained(target, "swinunetr", tmp_path / "model_swinvit.pt")
    swin_keys = [k for k in target.state_dict() if k.startswith("swinViT.")]
    assert len(report.loaded) == report.expected == len(swin_keys)
    for key in swin_keys:
        assert torch.equal(target.state_dict()[key], reference.state_dict()[key]), key
        assert torch.equal(target.state_dict()[key], source.state_dict()[key]), key
    assert {"module.rotation_head.weight", "module.contrastive_head.weight"} <= set(report.unused)
    with pytest.raises(UserInputError, match=r"31 encoder\+decoder tensor"):
        load_pretrained(target, "swinunetr", tmp_path / "model_swinvit.pt", "encoder+decoder")


def _ssl_layout(source: nn.Module) -> dict[str, torch.Tensor]:
    """MONAI's ssl_pretrained_weights.pth: the Swin encoder as ``encoder.*`` with a doubled layer index, its mask
    token and final norm, and SwinUNETR's decoder blocks under their own names."""
    state: dict[str, torch.Tensor] = {}
    for key, value in source.state_dict().items():
        if key.startswith("swinViT.patch_embed"):
            state["encoder." + key[len("swinViT."):]] = value
        elif key.startswith("swinViT.layers"):
            name = key[len("swinViT."):]
            state["encoder." + name[:10] + "0." + name[10:]] = value
        else:
            state[key] = value
    state.update({"encoder.mask_token": torch.zeros(1, 1, 12), "encoder.norm.weight": torch.ones(192),
                  "encoder.norm.bias": torch.zeros(192)})
    return state


def test_monai_ssl_pretrained_weights_layout_loads_encoder_and_decoder(tmp_path: Path) -> None:
    from monai.networks.nets.swin_unetr import filter_swinunetr
    from monai.networks.utils import copy_model_state

    source = _swin(seed=2)
    torch.save({"model": _ssl_layout(source)}, tmp_path / "ssl_pretrained_weights.pth")
    checkpoint = torch.load(tmp_path / "ssl_pretrained_weights.pth", weights_only=True)
    assert detect_layout(checkpoint) == "monai-ssl"
    target = build_network("swinunetr", in_channels=2, out_channels=3, patch_size=(32, 32, 32), **SWIN)
    output_layer = target.state_dict()["out.conv.conv.weight"].clone()
    report = load_pretrained(target, "swinunetr", tmp_path / "ssl_pretrained_weights.pth", "encoder+decoder")
    assert len(report.loaded) == report.expected
    assert sorted(report.adapted) == ["encoder1.layer.conv1.conv.weight", "encoder1.layer.conv3.conv.weight",
                                      "swinViT.patch_embed.proj.weight"]  # one-channel stems copied to two
    reference_one = _swin(out_channels=3, seed=6)
    _, updated, _ = copy_model_state(reference_one, checkpoint["model"], filter_func=filter_swinunetr, inplace=True)
    assert len(set(updated)) == len(report.loaded)  # MONAI's way loads the same tensors (all but the output layer)
    expected = reference_one.state_dict()
    for key in report.loaded:
        if key in report.adapted:
            torch.testing.assert_close(target.state_dict()[key], expected[key].repeat(1, 2, 1, 1, 1) / 2)
        else:
            assert torch.equal(target.state_dict()[key], expected[key]), key
    assert not any(k.startswith("out.") for k in report.loaded)
    assert torch.equal(target.state_dict()["out.conv.conv.weight"], output_layer)
    assert {"encoder.mask_token", "encoder.norm.weight"} <= set(report.unused)


def test_public_weights_refuse_a_network_of_another_kind(tmp_path: Path) -> None:
    torch.save({"model": _ssl_layout(_swin())}, tmp_path / "ssl.pth")
    resunet = build_network("resunet", in_channels=1, out_channels=2, patch_size=PATCH, **OPTIONS["resunet"])
    with pytest.raises(UserInputError, match="holds a swinunetr"):
        load_pretrained(resunet, "resunet", tmp_path / "ssl.pth")
    wider = build_network("swinunetr", in_channels=1, out_channels=2, patch_size=(32, 32, 32), feature_size=24,
                          depths=(1, 1, 1, 1), num_heads=(3, 3, 3, 3))
    with pytest.raises(UserInputError, match="does not fit"):
        load_pretrained(wider, "swinunetr", tmp_path / "ssl.pth")


@needs_einops
def test_vitautoenc_checkpoint_loads_into_unetr(tmp_path: Path) -> None:
    from monai.networks.nets import UNETR, ViTAutoEnc

    vit = {"hidden_size": 48, "mlp_dim": 96, "num_heads": 4}
    torch.manual_seed(3)
    autoencoder = ViTAutoEnc(in_channels=1, img_size=(32, 32, 32), patch_size=(16, 16, 16), num_layers=12, **vit)
    torch.save({"state_dict": autoencoder.state_dict()}, tmp_path / "vitautoenc.pt")
    target = build_network("unetr", in_channels=1, out_channels=2, patch_size=(32, 32, 32), feature_size=8, **vit)
    report = load_pretrained(target, "unetr", tmp_path / "vitautoenc.pt")
    reference = UNETR(in_channels=1, out_channels=2, img_size=(32, 32, 32), feature_size=8, norm_name="instance",
                      **vit)
    weights = autoencoder.state_dict()  # the MONAI tutorial's way: keep the keys UNETR's ViT has
    reference.vit.load_state_dict({**reference.vit.state_dict(),
                                   **{k: v for k, v in weights.items() if k in reference.vit.state_dict()}})
    vit_keys = [k for k in target.state_dict() if k.startswith("vit.")]
    assert len(report.loaded) == report.expected == len(vit_keys)
    for key in vit_keys:
        assert torch.equal(target.state_dict()[key], reference.state_dict()[key]), key
    assert {"conv3d_transpose.weight", "conv3d_transpose_1.weight"} <= set(report.unused)
    torch.save(autoencoder.state_dict(), tmp_path / "bare.pt")  # also accepted without the state_dict wrapper
    assert len(load_pretrained(target, "unetr", tmp_path / "bare.pt").loaded) == len(vit_keys)
    other = build_network("unetr", in_channels=1, out_channels=2, patch_size=(48, 32, 32), feature_size=8, **vit)
    with pytest.raises(UserInputError, match="position_embeddings has shape"):
        load_pretrained(other, "unetr", tmp_path / "vitautoenc.pt")
