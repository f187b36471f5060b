"""The one registry behind networks, tasks, patch encoders and MIL models."""

from __future__ import annotations

import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.registry import Registry
from sarcomakit.models import NETWORKS
from sarcomakit.pathology.features.encoders import ENCODERS
from sarcomakit.pathology.mil.models import MIL_MODELS
from sarcomakit.tasks import TASKS


def test_register_get_and_list_sorted() -> None:
    registry: Registry[int] = Registry("thing", option="--thing")
    registry.add("b", 2)

    @registry.register("a")
    def one() -> int:
        return 1

    assert registry.names() == ["a", "b"] and list(registry) == ["a", "b"] and len(registry) == 2
    assert registry.get("a") is one and registry.get("b") == 2 and "a" in registry and "c" not in registry


def test_a_taken_name_is_refused_but_the_same_object_may_register_again() -> None:
    registry: Registry[object] = Registry("thing")
    marker = object()
    registry.add("x", marker)
    registry.add("x", marker)  # a module imported twice registers the same object again
    with pytest.raises(ValueError, match="already registered"):
        registry.add("x", object())
    assert registry.get("x") is marker


def test_unknown_name_is_a_user_error_listing_the_choices() -> None:
    registry: Registry[int] = Registry("network", option="--network")
    registry.add("resunet", 1)
    registry.add("dynunet", 2)
    with pytest.raises(UserInputError) as info:
        registry.get("unet")
    assert "unknown network 'unet'" in str(info.value) and "--network" in str(info.value)
    assert "dynunet, resunet" in str(info.value)


@pytest.mark.parametrize("bad", ["", "has space", "../x"])
def test_invalid_names_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        Registry("thing").add(bad, 1)


@pytest.mark.parametrize(("registry", "expected"), [
    (NETWORKS, {"resunet", "dynunet", "segresnet"}),
    (TASKS, {"segmentation", "multitask"}),
    (MIL_MODELS, {"abmil", "clam_sb", "transmil"}),
    (ENCODERS, {"resnet18", "small_cnn", "foundation"}),
])
def test_every_kind_uses_the_same_registry_with_its_built_ins(registry: Registry, expected: set[str]) -> None:
    assert isinstance(registry, Registry) and expected <= set(registry.names())
    with pytest.raises(ValueError, match="already registered"):
        registry.add(sorted(expected)[0], object())
