"""A run's segmentation network in a form a MONAI-only environment can load.

Two forms, tried in this order:

1. **A MONAI class and a plain state dict.** The registry's ``resunet``, ``dynunet`` and ``segresnet`` are
   MONAI's ``UNet``, ``DynUNet`` and ``SegResNet`` built with fixed arguments; :func:`monai_definition`
   writes those arguments as a bundle ``network_def`` (``_target_`` plus keyword arguments). This is the
   form MONAI Label and MONAI Deploy expect, and the weights stay an ordinary state dict.
2. **TorchScript.** Anything else (learnable input layers in a ``ComposedNetwork``, OBELISK, a network
   whose options the table below does not know) is traced with ``torch.jit.trace`` on windows of the
   sliding-window size, since a MONAI environment cannot import sarcomakit's own modules.

Either form is checked before it is written: the MONAI definition is instantiated through MONAI's own
``ConfigParser`` with the weights loaded strictly, the trace is run on a batch size other than the one
it was traced with, and both must reproduce the run's network's logits. A network that fails both is a
:class:`~sarcomakit.core.errors.UserInputError` (nothing is exported).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.models.registry import _strides_for

_TOLERANCE = 1e-4
"""Largest absolute logit difference accepted between the exported network and the run's."""


@dataclass
class ExportedNetwork:
    """How the bundle builds the network: a ``network_def`` (MONAI class) or TorchScript modules.

    Attributes:
        definition: the ``network_def`` entry (``_target_`` and arguments), or None for TorchScript.
        scripted: one traced module per fold when ``definition`` is None.
    """

    definition: dict[str, Any] | None
    scripted: list[torch.jit.ScriptModule]

    @property
    def form(self) -> str:
        return "state_dict" if self.definition is not None else "torchscript"


def monai_definition(network: str, options: Mapping[str, Any], *, in_channels: int, out_channels: int,
                     patch_size: Sequence[int]) -> dict[str, Any] | None:
    """The ``network_def`` that rebuilds registry network ``network`` with MONAI alone, or None.

    The arguments mirror :mod:`sarcomakit.models.registry`; :func:`export_network` checks that the MONAI
    network they build gives the run's logits, so a drift between the two is caught at export.
    """
    patch = [int(p) for p in patch_size]
    if network == "resunet" and set(options) <= {"channels", "num_res_units", "dropout"}:
        channels = [int(c) for c in options.get("channels", (16, 32, 64, 128, 256))]
        return {"_target_": "monai.networks.nets.UNet", "spatial_dims": 3, "in_channels": in_channels,
                "out_channels": out_channels, "channels": channels,
                "strides": [list(s) for s in _strides_for(patch, len(channels) - 1)],
                "num_res_units": int(options.get("num_res_units", 2)),
                "norm": ["instance", {"affine": True}],
                "act": ["leakyrelu", {"negative_slope": 0.01, "inplace": True}],
                "dropout": float(options.get("dropout", 0.0))}
    if network == "dynunet" and set(options) <= {"filters"}:
        filters = [int(f) for f in options.get("filters", (32, 64, 128, 256, 320))]
        strides = [[1, 1, 1], *[list(s) for s in _strides_for(patch, len(filters) - 1)]]
        return {"_target_": "monai.networks.nets.DynUNet", "spatial_dims": 3, "in_channels": in_channels,
                "out_channels": out_channels, "kernel_size": [[3, 3, 3] for _ in strides], "strides": strides,
                "upsample_kernel_size": strides[1:], "filters": filters,
                "norm_name": ["instance", {"affine": True}], "act_name": ["leakyrelu", {"negative_slope": 0.01}],
                "res_block": True}
    if network == "segresnet" and set(options) <= {"init_filters"}:
        return {"_target_": "monai.networks.nets.SegResNet", "spatial_dims": 3, "in_channels": in_channels,
                "out_channels": out_channels, "init_filters": int(options.get("init_filters", 16)),
                "norm": ["group", {"num_groups": 8}]}
    return None


def export_network(models: Sequence[nn.Module], definition: dict[str, Any] | None, *, in_channels: int,
                   patch_size: Sequence[int], sw_batch_size: int, where: Any) -> ExportedNetwork:
    """Check ``definition`` against the fold ``models`` (segmentation logits, eval mode, on the CPU), or
    trace them; see the module docstring.

    Raises:
        UserInputError: neither form reproduces the network (``where`` is the run folder, for the message).
    """
    window = [int(p) for p in patch_size]
    generator = torch.Generator().manual_seed(0)
    probe = torch.randn(1, in_channels, *window, generator=generator)
    if definition is not None and _definition_matches(definition, models, probe):
        return ExportedNetwork(definition=definition, scripted=[])
    # traced on the sliding window's batch, checked on another batch size: a trace that froze the batch fails
    traced_batch = max(1, int(sw_batch_size))
    example = torch.randn(traced_batch, in_channels, *window, generator=generator)
    check = probe if traced_batch != 1 else torch.cat([probe, probe])
    scripted = []
    for model in models:
        try:
            with torch.no_grad():
                module = torch.jit.trace(model, example, check_trace=False)
                if not _close(module(check), model(check)):
                    raise RuntimeError("the traced network's output differs from the network's")
        except Exception as exc:  # tracing raises many kinds of errors; all mean the same to the user
            raise UserInputError(f"the run's network ({type(model).__name__}) cannot be traced to TorchScript "
                                 f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}), and it is "
                                 "no plain MONAI network, so a MONAI bundle cannot carry it.", path=where,
                                 fix="predict with 'sarcomakit predict', or train a resunet, dynunet or segresnet "
                                     "run to export.") from exc
        scripted.append(module)
    return ExportedNetwork(definition=None, scripted=scripted)


def _definition_matches(definition: dict[str, Any], models: Sequence[nn.Module], probe: torch.Tensor) -> bool:
    from monai.bundle import ConfigParser

    for model in models:
        try:
            network = ConfigParser({"network_def": definition}).get_parsed_content("network_def")
            network.load_state_dict(model.state_dict(), strict=True)
        except (RuntimeError, TypeError, ValueError, KeyError):
            return False
        network.eval()
        with torch.no_grad():
            if not _close(network(probe), model(probe)):
                return False
    return True


def _close(a: Any, b: Any) -> bool:
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape and \
        bool(torch.allclose(a.float(), b.float(), atol=_TOLERANCE, rtol=1e-4))
