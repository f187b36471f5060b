"""The network registry: every registered network builds and maps a patch to logits of its size; names and errors."""

from __future__ import annotations

import pytest
import torch

from sarcomakit.core.errors import UserInputError
from sarcomakit.models import registry
from sarcomakit.models.registry import available_networks, build_network, register_network

# Small options for each registered network; patches include a thick-slice one (z kept at 8).
NETWORKS = {
    "resunet": {"channels": (8, 16, 32), "num_res_units": 1},
    "dynunet": {"filters": (8, 16, 32)},
    "segresnet": {"init_filters": 8},
    "swinunetr": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (3, 3, 3, 3)},
    "unetr": {"feature_size": 8, "hidden_size": 96, "mlp_dim": 192, "num_heads": 4},
    "obelisk": {"offsets": 8, "features": 8, "hidden": 8},
    "obelisk_unet": {"channels": (4, 8), "offsets": 8, "features": 4},
}
# the transformers need patches divisible by their token grid (32 for SwinUNETR's five halvings, 16 for UNETR)
PATCHES = {name: [(16, 32, 32), (8, 32, 48)] for name in NETWORKS} | {"swinunetr": [(64, 64, 64)],
                                                                      "unetr": [(16, 32, 32)]}


def test_every_registered_network_is_covered_here() -> None:
    assert available_networks() == sorted(NETWORKS)


@pytest.mark.parametrize(("name", "patch"), [(n, p) for n in sorted(NETWORKS) for p in PATCHES[n]])
def test_network_maps_a_patch_to_logits_of_the_same_size(name: str, patch: tuple[int, int, int]) -> None:
    torch.manual_seed(0)
    net = build_network(name, in_channels=3, out_channels=2, patch_size=list(patch), **NETWORKS[name])
    assert isinstance(net, torch.nn.Module)
    with torch.no_grad():
        out = net.eval()(torch.randn(2, 3, *patch))
    assert out.shape == (2, 2, *patch)
    assert bool(torch.isfinite(out).all())


def test_options_reach_the_factory() -> None:
    narrow = build_network("resunet", in_channels=1, out_channels=2, patch_size=(16, 32, 32), channels=(4, 8, 16),
                           num_res_units=1)
    wide = build_network("resunet", in_channels=1, out_channels=2, patch_size=(16, 32, 32), channels=(8, 16, 32),
                         num_res_units=1)
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(wide) > 2 * count(narrow)
    with pytest.raises(TypeError, match="no_such_option"):
        build_network("resunet", in_channels=1, out_channels=2, patch_size=(16, 32, 32), no_such_option=1)


def test_unknown_network_is_a_user_error_listing_the_choices() -> None:
    with pytest.raises(UserInputError, match="unknown network 'vnet'") as error:
        build_network("vnet", in_channels=1, out_channels=2, patch_size=(16, 32, 32))
    assert error.value.fix is not None
    assert all(name in error.value.fix for name in NETWORKS)


def test_a_taken_network_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # The shared registry's rule (tests/core/test_registry.py), here through register_network: a plug-in
    # cannot replace a built-in, and a module imported twice may register the same factory again.
    monkeypatch.setattr(registry.NETWORKS, "_items", dict(registry.NETWORKS._items))

    def tiny(*, in_channels: int, out_channels: int, patch_size: tuple[int, ...]) -> torch.nn.Module:
        return torch.nn.Conv3d(in_channels, out_channels, 1)

    register_network("tiny")(tiny)
    register_network("tiny")(tiny)
    with pytest.raises(ValueError, match="already registered"):
        register_network("tiny")(lambda **_: torch.nn.Identity())
    with pytest.raises(ValueError, match="already registered"):
        register_network("resunet")(tiny)
    assert available_networks().count("tiny") == 1
    net = build_network("tiny", in_channels=1, out_channels=2, patch_size=[4, 4, 4])
    assert isinstance(net, torch.nn.Conv3d) and net.kernel_size == (1, 1, 1)


def test_thick_slice_axis_is_not_downsampled_below_eight_voxels() -> None:
    # Each level halves an axis only while it has at least 16 voxels: the 8-slice axis keeps stride 1.
    resunet = build_network("resunet", in_channels=1, out_channels=2, patch_size=(8, 32, 48),
                            channels=(4, 8, 16, 32), num_res_units=1)
    assert [tuple(s) for s in resunet.strides] == [(1, 2, 2), (1, 2, 2), (1, 1, 1)]
    dynunet = build_network("dynunet", in_channels=1, out_channels=2, patch_size=(8, 32, 48), filters=(4, 8, 16, 32))
    assert [tuple(s) for s in dynunet.strides] == [(1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 1, 1)]
