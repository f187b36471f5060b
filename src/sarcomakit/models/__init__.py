"""Networks by name (a registry later tasks add backbones to), and networks composed from parts."""

from sarcomakit.models.compose import ComposedNetwork
from sarcomakit.models.registry import NETWORKS, available_networks, build_network, register_network

__all__ = ["NETWORKS", "ComposedNetwork", "available_networks", "build_network", "register_network"]
