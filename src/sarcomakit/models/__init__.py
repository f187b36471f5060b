"""Networks by name: a small registry so that later tasks can add backbones and heads."""

from sarcomakit.models.registry import available_networks, build_network, register_network

__all__ = ["available_networks", "build_network", "register_network"]
