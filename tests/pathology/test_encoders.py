"""Patch encoder registry: shapes, normalisation, local checkpoints (strict and non-strict)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.features.encoders import (
    available_encoders,
    build_encoder,
    save_encoder_checkpoint,
)


def test_registry_lists_offline_architectures() -> None:
    assert {"resnet18", "resnet34", "resnet50", "densenet121", "small_cnn", "foundation"} <= set(
        available_encoders())


@pytest.mark.parametrize(("name", "dim"), [("small_cnn", 128), ("resnet18", 512), ("densenet121", 1024)])
def test_embedding_shape_and_resize(name: str, dim: int) -> None:
    torch.manual_seed(0)
    encoder = build_encoder(name, input_size=64)
    out = encoder.embed(torch.rand(2, 3, 80, 80))  # resized to the input size first
    assert out.shape == (2, dim) == (2, encoder.embed_dim)
    assert torch.isfinite(out).all()
    assert not encoder.module.training


def test_normalize_uses_mean_and_std() -> None:
    encoder = build_encoder("small_cnn")
    tiles = torch.full((1, 3, 4, 4), 0.75)
    torch.testing.assert_close(encoder.normalize(tiles), torch.ones(1, 3, 4, 4))


def test_checkpoint_roundtrip_restores_identical_embeddings(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = build_encoder("small_cnn", embed_dim=64, base_width=16)
    path = save_encoder_checkpoint(source, tmp_path / "enc.pt", options={"embed_dim": 64, "base_width": 16})
    restored = build_encoder("small_cnn", weights=path)
    tiles = torch.rand(3, 3, 96, 96)
    torch.testing.assert_close(source.embed(tiles), restored.embed(tiles))
    assert restored.weights is not None and not restored.weights.missing_keys


def test_foundation_loads_prefixed_state_dict_with_user_normalisation(tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = build_encoder("resnet18", input_size=32)
    wrapped = {"model": {f"backbone.{k}": v for k, v in reference.module.state_dict().items()}}
    torch.save(wrapped, tmp_path / "fm.pth")
    encoder = build_encoder("foundation", weights=tmp_path / "fm.pth", architecture="resnet18", input_size=32,
                            mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert encoder.mean == (0.5, 0.5, 0.5) and encoder.input_size == 32
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference.module.eval()((x - 0.5) / 0.5)
    torch.testing.assert_close(encoder.embed(x), expected)


def test_foundation_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="not found"):
        build_encoder("foundation", weights=tmp_path / "missing.pt", architecture="resnet18")
    partial = build_encoder("small_cnn").module.state_dict()
    partial.pop("project.weight")
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(UserInputError, match="missing key"):
        build_encoder("foundation", weights=tmp_path / "partial.pt", architecture="small_cnn")
    loose = build_encoder("foundation", weights=tmp_path / "partial.pt", architecture="small_cnn",
                          strict=False)
    assert loose.weights is not None and loose.weights.missing_keys == ["project.weight"]
    torch.save({"unrelated": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(UserInputError, match="no tensor"):
        build_encoder("foundation", weights=tmp_path / "other.pt", architecture="small_cnn", strict=False)
    with pytest.raises(UserInputError, match="unknown encoder"):
        build_encoder("vit_giant")
