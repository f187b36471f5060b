"""Pretrained weights into a network, every tensor accounted for: key mapping, channel adaptation, loud failure.

A checkpoint's tensors are renamed into the naming of the bare registry network (``sarcomakit train
--network NAME``), split into parts, and copied into the target network's parts of the same names:

- ``encoder``: the contracting path and bottleneck of a U-Net (MONAI UNet ``model.0``/``...1.submodule.0``
  and the bottom block; DynUNet ``input_block``, ``downsamples``, ``bottleneck``; SegResNet ``convInit``,
  ``down_layers``), or the transformer of SwinUNETR (``swinViT``) and UNETR (``vit``);
- ``decoder``: the expanding path (and SwinUNETR's/UNETR's convolutional skip blocks);
- ``output``: the final layer, whose shape depends on what the network predicts; it is never loaded.

A multi-task network's backbone (``backbone.``) is the target network; its heads stay as initialised.
Loading ``encoder`` or ``encoder+decoder`` requires every tensor of those parts to be present on both
sides with the same shape: otherwise nothing is loaded and the error lists the tensors that did not match
(the silent failure of ``load_state_dict(strict=False)`` is what this module exists to prevent). One
adaptation is made: a stem pretrained on one channel is copied to each of N input channels and divided
by N, so that N copies of the same image give the pretrained activations.

Checkpoint layouts read (:func:`detect_layout`):

- ``sarcomakit``: a run's ``checkpoint_*.pt`` (pretraining, segmentation or multi-task), which names its network
  (``vit_mae`` renamed into UNETR's ``vit.*``; ``simmim`` on UNETR or SwinUNETR already holds ``vit.*`` or
  ``swinViT.*``, its mask token and decoder are left out);
- ``monai-swinvit``: MONAI's SwinUNETR self-supervised ``model_swinvit.pt`` (``{"state_dict": {"module.patch_embed.
  ...", "module.layers1.0.blocks.0.mlp.fc1.weight", ...}}``, the layout ``SwinUNETR.load_from`` reads);
- ``monai-ssl``: MONAI's ``ssl_pretrained_weights.pth`` (``{"model": {"encoder.patch_embed...", "encoder.layers1.0.0.
  blocks...", ...}}``, renamed by MONAI's own ``filter_swinunetr``; its SwinUNETR decoder blocks too);
- ``monai-vitautoenc``: a ``ViTAutoEnc`` state dict (bare or under ``state_dict``), whose ViT goes into UNETR's ``vit``.

Example:
    >>> report = load_pretrained(model, "resunet", "runs/pretrain")  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
    loaded 24/24 encoder tensors, 0 skipped (sarcomakit checkpoint, mae on resunet); 2 adapted from 1 to 4 channels
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sarcomakit.core.errors import UserInputError

PARTS = ("encoder", "encoder+decoder")


# ---------------------------------------------------------------------- parts of each network
def _unet_part(key: str) -> str:
    """MONAI UNet: ``model`` nests ``Sequential(down, SkipConnection(deeper), up)``; the innermost is the bottom."""
    rest, depth = key.removeprefix("model."), 0
    while rest.startswith("1.submodule."):
        rest, depth = rest[len("1.submodule."):], depth + 1
    if rest.startswith("0."):
        return "encoder"
    if rest.startswith("2."):
        return "output" if depth == 0 else "decoder"
    return "encoder"


def _prefix_part(rules: Mapping[str, str]) -> Callable[[str], str]:
    def part(key: str) -> str:
        for prefix, name in rules.items():
            if re.match(prefix, key):
                return name
        return "unknown"

    return part


#: part of a tensor by its key in each registry network ("alias": a second name of a tensor listed elsewhere)
NETWORK_PARTS: dict[str, Callable[[str], str]] = {
    "resunet": _unet_part,
    "dynunet": _prefix_part({r"(input_block|downsamples|bottleneck)\.": "encoder", r"upsamples\.": "decoder",
                             r"(output_block|deep_supervision_heads)\.": "output", r"skip_layers\.": "alias"}),
    "segresnet": _prefix_part({r"(convInit|down_layers)\.": "encoder", r"(up_layers|up_samples)\.": "decoder",
                               r"conv_final\.": "output"}),
    "swinunetr": _prefix_part({r"swinViT\.": "encoder", r"(encoder\d+|decoder\d+)\.": "decoder", r"out\.": "output"}),
    "unetr": _prefix_part({r"vit\.": "encoder", r"(encoder\d+|decoder\d+)\.": "decoder", r"out\.": "output"}),
}


def network_part(network: str, key: str) -> str:
    """``encoder``, ``decoder``, ``output`` or ``alias`` for a key of the bare registry network ``network``."""
    if network not in NETWORK_PARTS:
        raise UserInputError(f"no encoder/decoder split is known for network '{network}'.",
                             fix=f"fine-tune one of {', '.join(sorted(NETWORK_PARTS))}.")
    return NETWORK_PARTS[network](key)


# ---------------------------------------------------------------------- checkpoint layouts
@dataclass
class SourceWeights:
    """A checkpoint's tensors in the naming of the bare registry network ``network``; ``ignored``: keys outside it
    (pretraining heads, mask tokens)."""

    layout: str
    network: str
    tensors: dict[str, torch.Tensor]
    ignored: list[str] = field(default_factory=list)
    description: str = ""


def detect_layout(checkpoint: Mapping[str, Any]) -> str:
    """The layout of a loaded checkpoint (see the module docstring); a user error when none fits."""
    if isinstance(checkpoint.get("model"), Mapping) and isinstance(checkpoint.get("config"), Mapping):
        return "sarcomakit"
    state = checkpoint.get("state_dict", checkpoint)
    if isinstance(checkpoint.get("model"), Mapping) and any(k.startswith("encoder.patch_embed")
                                                            for k in checkpoint["model"]):
        return "monai-ssl"
    if isinstance(state, Mapping):
        if any(k.startswith("module.patch_embed.") for k in state):
            return "monai-swinvit"
        if any(k.startswith("patch_embedding.") for k in state) and any(k.startswith("blocks.") for k in state):
            return "monai-vitautoenc"
    raise UserInputError("the checkpoint's layout is not one sarcomakit can map.",
                         fix="give a sarcomakit run (or its checkpoint_best.pt), MONAI's model_swinvit.pt, "
                             "ssl_pretrained_weights.pth, or a ViTAutoEnc state dict.")


def _from_sarcomakit(checkpoint: Mapping[str, Any]) -> SourceWeights:
    config, state = checkpoint["config"], checkpoint["model"]
    network = str(config.get("network", "resunet"))
    task = str(checkpoint.get("task", config.get("task", "")))
    if task == "vit_mae":  # MONAI's MaskedAutoEncoderViT: its encoder is UNETR's ViT
        tensors, ignored = _vit_into_unetr(state)
    elif task == "simmim":  # SimMIMViT / SimMIMSwin keep UNETR's vit.* / SwinUNETR's swinViT.* names
        tensors = {k: v for k, v in state.items() if k.startswith(("vit.", "swinViT."))}
        ignored = [k for k in state if k not in tensors]  # the mask token and the pretraining decoder
    elif any(k.startswith("backbone.") for k in state):  # a multi-task (or composed) network: its backbone
        tensors = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
        ignored = [k for k in state if not k.startswith("backbone.")]
    else:
        tensors, ignored = dict(state), []
    options = config.get("network_options") or {}
    shown = f" {options}" if options else ""
    return SourceWeights("sarcomakit", network, tensors, ignored, f"sarcomakit checkpoint, {task} on {network}{shown}")


def _from_swinvit(checkpoint: Mapping[str, Any]) -> SourceWeights:
    state = checkpoint.get("state_dict", checkpoint)
    tensors, ignored = {}, []
    for key, value in state.items():
        name = key.removeprefix("module.")
        if name.startswith(("patch_embed.", "layers1.", "layers2.", "layers3.", "layers4.")):
            name = name.replace(".mlp.fc1.", ".mlp.linear1.").replace(".mlp.fc2.", ".mlp.linear2.")
            tensors["swinViT." + name] = value
        else:
            ignored.append(key)
    return SourceWeights("monai-swinvit", "swinunetr", tensors, ignored, "MONAI SwinUNETR model_swinvit.pt")


def _from_monai_ssl(checkpoint: Mapping[str, Any]) -> SourceWeights:
    from monai.networks.nets.swin_unetr import filter_swinunetr

    tensors, ignored = {}, []
    for key, value in checkpoint["model"].items():
        mapped = filter_swinunetr(key, value) if key.startswith("encoder.") else (key, value)
        if mapped is None or key.startswith("out."):
            ignored.append(key)
        else:
            tensors[mapped[0]] = mapped[1]
    return SourceWeights("monai-ssl", "swinunetr", tensors, ignored, "MONAI ssl_pretrained_weights.pth")


def _vit_into_unetr(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A MONAI ViT's encoder tensors (``patch_embedding``, ``blocks``, ``norm``) renamed into UNETR's ``vit``; the
    other keys (decoders, mask and class tokens). ``MaskedAutoEncoderViT`` keeps its final LayerNorm as the last
    entry of ``blocks`` (``blocks.12.weight``): that is UNETR's ``norm``."""
    tensors, ignored = {}, []
    for key, value in state.items():
        if (final_norm := re.fullmatch(r"blocks\.\d+\.(weight|bias)", key)) is not None:
            key = f"norm.{final_norm.group(1)}"
        if key.startswith(("patch_embedding.", "blocks.", "norm.")):
            tensors["vit." + key] = value
        else:
            ignored.append(key)
    return tensors, ignored


def _from_vitautoenc(checkpoint: Mapping[str, Any]) -> SourceWeights:
    tensors, ignored = _vit_into_unetr(checkpoint.get("state_dict", checkpoint))
    return SourceWeights("monai-vitautoenc", "unetr", tensors, ignored, "MONAI ViTAutoEnc checkpoint")


LAYOUTS: dict[str, Callable[[Mapping[str, Any]], SourceWeights]] = {
    "sarcomakit": _from_sarcomakit, "monai-swinvit": _from_swinvit, "monai-ssl": _from_monai_ssl,
    "monai-vitautoenc": _from_vitautoenc,
}


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file; a run folder stands for its ``fold_0/checkpoint_best.pt`` (a fold folder for its best)."""
    p = Path(path)
    for candidate in (p, p / "checkpoint_best.pt", p / "fold_0" / "checkpoint_best.pt"):
        if candidate.is_file():
            return candidate
    raise UserInputError("no checkpoint to initialise from.", path=p,
                         fix="give a checkpoint file, or a run folder of 'sarcomakit pretrain' with fold_0/.")


def read_source_weights(path: str | Path) -> SourceWeights:
    """Read a checkpoint and rename its tensors into its registry network's naming."""
    file = resolve_checkpoint(path)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for foreign or truncated files
        raise UserInputError(f"the checkpoint cannot be read ({type(exc).__name__}).", path=file,
                             fix="give a PyTorch checkpoint of tensors (torch.save of a state dict).") from exc
    if not isinstance(checkpoint, Mapping):
        raise UserInputError("the checkpoint is not a dictionary of tensors.", path=file,
                             fix="give a state dict or a checkpoint dictionary.")
    return LAYOUTS[detect_layout(checkpoint)](checkpoint)


# ---------------------------------------------------------------------- loading
@dataclass
class LoadReport:
    """What :func:`load_pretrained` loaded: target keys loaded, expected, channel-adapted, and source keys left."""

    parts: str
    loaded: list[str]
    expected: int
    adapted: list[str]
    unused: list[str]
    source: str

    def summary(self) -> str:
        parts = "encoder" if self.parts == "encoder" else "encoder and decoder"
        text = (f"loaded {len(self.loaded)}/{self.expected} {parts} tensors, {self.expected - len(self.loaded)} "
                f"skipped ({self.source})")
        if self.adapted:
            text += f"; {len(self.adapted)} stem tensor(s) adapted to the input channels"
        if self.unused:
            text += f"; {len(self.unused)} checkpoint tensor(s) outside those parts not used"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"parts": self.parts, "loaded": self.loaded, "expected": self.expected, "adapted": self.adapted,
                "unused": self.unused, "source": self.source}


def target_backbone(model: nn.Module) -> tuple[nn.Module, str]:
    """The registry network inside ``model`` and its key prefix (a multi-task network's ``backbone``)."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return backbone, "backbone."
    return model, ""


def _adapt_channels(value: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A one-input-channel stem tensor (O, 1, ...) copied to (O, N, ...) and divided by N; None if not applicable."""
    if value.ndim >= 3 and value.ndim == len(shape) and value.shape[1] == 1 and shape[1] > 1 \
            and value.shape[0] == shape[0] and value.shape[2:] == shape[2:]:
        return value.repeat(1, shape[1], *([1] * (value.ndim - 2))) / shape[1]
    return None


def load_pretrained(model: nn.Module, network: str, path: str | Path, parts: str = "encoder") -> LoadReport:
    """Copy the pretrained ``parts`` of the checkpoint at ``path`` into ``model`` (module docstring).

    Args:
        model: the network to initialise (a registry network, or a network with it as ``backbone``).
        network: its registry name (``TrainConfig.network``).
        path: a checkpoint file or a pretraining run folder.
        parts: ``encoder`` or ``encoder+decoder``.

    Raises:
        UserInputError: the checkpoint holds another network, or any tensor of ``parts`` is missing on either side
            or differs in shape (nothing is loaded then).
    """
    if parts not in PARTS:
        raise UserInputError(f"unknown init parts '{parts}'.", fix=f"use one of {', '.join(PARTS)}.")
    source = read_source_weights(path)
    if source.network != network:
        raise UserInputError(f"the checkpoint holds a {source.network} ({source.description}), not a {network}.",
                             path=Path(path), fix=f"train with --network {source.network}, or pretrain a {network}.")
    wanted = {"encoder"} if parts == "encoder" else {"encoder", "decoder"}
    backbone, _ = target_backbone(model)
    targets: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in backbone.state_dict(keep_vars=True).items():
        if id(tensor) not in seen and network_part(network, key) in wanted:
            targets[key] = tensor
        seen.add(id(tensor))
    offered = {k: v for k, v in source.tensors.items() if network_part(network, k) in wanted}
    values, adapted, problems = {}, [], []
    for key, tensor in targets.items():
        value = offered.get(key)
        if value is None:
            problems.append(f"{key} is not in the checkpoint")
        elif value.shape == tensor.shape:
            values[key] = value
        elif (converted := _adapt_channels(value, tensor.shape)) is not None:
            values[key] = converted
            adapted.append(key)
        else:
            problems.append(f"{key} has shape {tuple(value.shape)} in the checkpoint, {tuple(tensor.shape)} here")
    problems += [f"{key} of the checkpoint has no place here" for key in offered if key not in targets]
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise UserInputError(f"the checkpoint does not fit: {len(problems)} {parts} tensor(s) unmatched, nothing "
                             f"loaded ({shown}).", path=Path(path),
                             fix="fine-tune the network with the network options it was pretrained with "
                                 "(see the run's config.json), or load fewer parts (--init-parts encoder).")
    with torch.no_grad():
        for key, value in values.items():
            targets[key].copy_(value.to(targets[key].dtype))
    unused = sorted(set(source.tensors) - set(values) - {k for k in source.tensors
                                                         if network_part(network, k) == "alias"})
    return LoadReport(parts, sorted(values), len(targets), adapted, [*source.ignored, *unused], source.description)
