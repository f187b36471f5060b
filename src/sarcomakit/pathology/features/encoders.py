"""Patch encoders by name: MONAI 2D backbones, a small CPU-friendly CNN, user-supplied foundation checkpoints.

An encoder maps a batch of RGB tiles (B, 3, H, W) in [0, 1] to embeddings (B, D). Every encoder is
described by a :class:`PatchEncoder`: the network, its embedding width, the input size it expects and
the per-channel normalisation ``(x - mean) / std`` applied before the network. Nothing is downloaded:
weights are random or come from a local file the user gives.

Example:
    >>> encoder = build_encoder("small_cnn")
    >>> encoder.embed(torch.rand(2, 3, 96, 96)).shape
    torch.Size([2, 128])
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks import nets
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.registry import Registry

log = logging.getLogger("sarcomakit")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class WeightsReport:
    """What happened when a checkpoint was loaded into an encoder."""

    path: Path
    loaded: int
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)


@dataclass
class PatchEncoder:
    """A patch embedding network with the input size and normalisation it expects.

    Attributes:
        name: registry name of the architecture.
        module: network mapping (B, 3, input_size, input_size) normalised tiles to (B, embed_dim).
        embed_dim: width D of the embeddings.
        input_size: side in pixels of the tiles the network expects.
        mean, std: per-channel normalisation applied to tiles in [0, 1].
        weights: the report of the checkpoint loaded, if any.
    """

    name: str
    module: nn.Module
    embed_dim: int
    input_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    weights: WeightsReport | None = None

    def resize(self, tiles: torch.Tensor) -> torch.Tensor:
        """Resize tiles (B, 3, H, W) or (3, H, W) to ``input_size`` (bilinear, antialiased when shrinking)."""
        single = tiles.ndim == 3
        batch = tiles[None] if single else tiles
        if batch.shape[-1] != self.input_size or batch.shape[-2] != self.input_size:
            batch = F.interpolate(batch.float(), size=(self.input_size, self.input_size), mode="bilinear",
                                  align_corners=False, antialias=batch.shape[-1] > self.input_size)
        return batch[0] if single else batch

    def normalize(self, tiles: torch.Tensor) -> torch.Tensor:
        """Apply ``(x - mean) / std`` per channel to tiles (B, 3, H, W) in [0, 1]."""
        mean = torch.as_tensor(self.mean, dtype=tiles.dtype, device=tiles.device).view(1, 3, 1, 1)
        std = torch.as_tensor(self.std, dtype=tiles.dtype, device=tiles.device).view(1, 3, 1, 1)
        return (tiles - mean) / std

    def embed(self, tiles: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, D) of tiles (B, 3, H, W) in [0, 1]: resize, normalise, forward (no gradient)."""
        with torch.inference_mode():
            return self.module(self.normalize(self.resize(tiles.float())))

    def to(self, device: str | torch.device) -> PatchEncoder:
        """Move the network to ``device`` (in place) and return self."""
        self.module.to(device)
        return self


class SmallCNN(nn.Module):
    """A small convolutional encoder for CPU demos: four stride-2 conv blocks, GroupNorm, global pooling.

    Each block is conv3x3 (stride 2) -> GroupNorm -> ReLU -> conv3x3 -> GroupNorm -> ReLU, widths
    ``base, 2 base, 4 base, embed_dim``; the output is the spatial mean and standard deviation of the last
    feature map projected to ``embed_dim`` (second-order pooling keeps texture statistics that plain
    average pooling of a random network washes out).
    """

    def __init__(self, embed_dim: int = 128, base_width: int = 32) -> None:
        super().__init__()
        widths = [base_width, base_width * 2, base_width * 4, embed_dim]
        layers: list[nn.Module] = []
        in_ch = 3
        for width in widths:
            layers += [nn.Conv2d(in_ch, width, 3, stride=2, padding=1, bias=False), nn.GroupNorm(8, width),
                       nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1, bias=False),
                       nn.GroupNorm(8, width), nn.ReLU(inplace=True)]
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.project = nn.Linear(2 * embed_dim, embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        maps = self.features(x).flatten(2)
        pooled = torch.cat([maps.mean(-1), maps.std(-1, unbiased=False)], dim=1)
        return self.project(pooled)


EncoderBuilder = Callable[..., PatchEncoder]
#: Patch-encoder builders by name (see :mod:`sarcomakit.core.registry` for the naming rules).
ENCODERS: Registry[EncoderBuilder] = Registry("encoder", option="--encoder")


def register_encoder(name: str) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator adding a builder ``fn(**kw) -> PatchEncoder`` under ``name`` (a taken name raises ``ValueError``)."""
    return ENCODERS.register(name)


def available_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder`."""
    return ENCODERS.names()


def _monai_resnet(name: str, depth: int, embed_dim: int, input_size: int) -> PatchEncoder:
    # feed_forward=False drops the classifier: the output is the globally pooled last feature map.
    builder = {18: nets.resnet18, 34: nets.resnet34, 50: nets.resnet50}[depth]
    module = builder(spatial_dims=2, n_input_channels=3, conv1_t_size=7, conv1_t_stride=2, feed_forward=False)
    return PatchEncoder(name, module, embed_dim, input_size)


@register_encoder("resnet18")
def _resnet18(input_size: int = 224) -> PatchEncoder:
    return _monai_resnet("resnet18", 18, 512, input_size)


@register_encoder("resnet34")
def _resnet34(input_size: int = 224) -> PatchEncoder:
    return _monai_resnet("resnet34", 34, 512, input_size)


@register_encoder("resnet50")
def _resnet50(input_size: int = 224) -> PatchEncoder:
    return _monai_resnet("resnet50", 50, 2048, input_size)


@register_encoder("densenet121")
def _densenet121(input_size: int = 224) -> PatchEncoder:
    module = nets.DenseNet121(spatial_dims=2, in_channels=3, out_channels=1)
    module.class_layers.out = nn.Identity()  # keep relu -> global pool -> flatten, drop the classifier
    return PatchEncoder("densenet121", module, 1024, input_size)


@register_encoder("small_cnn")
def _small_cnn(input_size: int = 96, embed_dim: int = 128, base_width: int = 32) -> PatchEncoder:
    return PatchEncoder("small_cnn", SmallCNN(embed_dim, base_width), embed_dim, input_size,
                        mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@register_encoder("foundation")
def _foundation(checkpoint: str | Path | None = None, architecture: str | None = None, input_size: int = 224,
                mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                strict: bool = True, **arch_kw: Any) -> PatchEncoder:
    """A user's local foundation-model checkpoint loaded into one of the registered architectures."""
    if checkpoint is None or architecture is None:
        raise UserInputError("the 'foundation' encoder needs a local checkpoint and an architecture name.",
                             fix=f"give checkpoint=PATH and architecture=one of {available_encoders()}.")
    if architecture == "foundation" or architecture not in ENCODERS:
        raise UserInputError(f"unknown architecture {architecture!r} for the foundation checkpoint.",
                             fix=f"choose one of {[n for n in available_encoders() if n != 'foundation']}.")
    encoder = ENCODERS.get(architecture)(input_size=input_size, **arch_kw)
    encoder.mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
    encoder.std = tuple(float(v) for v in std)  # type: ignore[assignment]
    encoder.weights = load_weights(encoder.module, checkpoint, strict=strict)
    return encoder


def _extract_state_dict(obj: Any) -> Mapping[str, torch.Tensor]:
    """Find the parameter dictionary inside common checkpoint layouts."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "teacher", "encoder"):
            if key in obj and isinstance(obj[key], Mapping):
                return _extract_state_dict(obj[key])
        if all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError("no parameter dictionary found")


def _strip_prefixes(state: Mapping[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop wrapper prefixes (``module.``, ``backbone.``, ``encoder.``) when that makes keys match."""
    best = dict(state)
    best_hits = len(expected & set(best))
    for prefix in ("module.", "backbone.", "encoder.", "model.", "module.backbone.", "module.encoder."):
        candidate = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        hits = len(expected & set(candidate))
        if hits > best_hits:
            best, best_hits = candidate, hits
    return best


def load_weights(module: nn.Module, path: str | Path, strict: bool = True) -> WeightsReport:
    """Load a local checkpoint into ``module``.

    Accepts a bare state dict or one nested under ``state_dict``/``model``/``teacher``/``encoder``, and strips
    ``module.``/``backbone.``/``encoder.`` prefixes when that makes the keys match.

    Args:
        module: the network to fill.
        path: a ``.pt``/``.pth``/``.bin`` file saved with ``torch.save``.
        strict: when true, any missing or unexpected key or shape mismatch is an error; when false, matching
            tensors are loaded and the rest is reported (a warning is logged).

    Returns:
        A :class:`WeightsReport` with the number of tensors loaded and the missing/unexpected keys.

    Raises:
        UserInputError: the file is missing or unreadable, or its keys do not fit the architecture.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError("encoder checkpoint not found.", path=path,
                             fix="give the path of a local checkpoint file (nothing is downloaded).")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        state = _extract_state_dict(raw)
    except Exception as exc:  # any unreadable file is the user's input problem, not a crash
        raise UserInputError(f"cannot read encoder checkpoint ({type(exc).__name__}: {exc}).", path=path,
                             fix="save the weights with torch.save(model.state_dict(), path).") from exc
    own = module.state_dict()
    state = _strip_prefixes(state, set(own))
    shape_mismatch = [k for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    usable = {k: v for k, v in state.items() if k in own and k not in shape_mismatch}
    missing = sorted(set(own) - set(usable))
    unexpected = sorted(set(state) - set(own)) + sorted(shape_mismatch)
    report = WeightsReport(path, len(usable), missing, unexpected)
    if not usable:
        raise UserInputError("no tensor in the checkpoint matches the chosen architecture.", path=path,
                             fix="check the architecture name and input options given with the checkpoint.")
    if strict and (missing or unexpected):
        raise UserInputError(
            f"checkpoint does not fit the architecture: {len(missing)} missing key(s) (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected or mis-shaped (e.g. {unexpected[:3]}).", path=path,
            fix="choose the matching architecture, or load non-strictly to keep the matching tensors.")
    module.load_state_dict(usable, strict=False)
    if missing or unexpected:
        log.warning("%s: loaded %d tensors; %d missing keys, %d unexpected keys", path, len(usable),
                    len(missing), len(unexpected))
    return report


def build_encoder(name: str, weights: str | Path | None = None, strict: bool = True,
                  **kw: Any) -> PatchEncoder:
    """Build a registered patch encoder, optionally loading local weights.

    Args:
        name: a name from :func:`available_encoders` (``resnet18``, ``resnet34``, ``resnet50``,
            ``densenet121``, ``small_cnn``, ``foundation``).
        weights: a local checkpoint (e.g. from :func:`sarcomakit.pathology.features.ssl.pretrain_encoder`); for
            ``foundation`` this is the checkpoint path itself.
        strict: require every key to match when loading ``weights``.
        **kw: builder options (``input_size``; for ``foundation``: ``architecture``, ``mean``, ``std``).

    Returns:
        The :class:`PatchEncoder`, in eval mode on the CPU.
    """
    builder = ENCODERS.get(name)
    if weights is not None and name != "foundation":
        saved = _saved_encoder_options(weights)
        kw = {**saved, **kw}
    if name == "foundation":
        encoder = builder(checkpoint=weights or kw.pop("checkpoint", None), strict=strict, **kw)
    else:
        encoder = builder(**kw)
        if weights is not None:
            encoder.weights = load_weights(encoder.module, weights, strict=strict)
    encoder.module.eval()
    return encoder


def _saved_encoder_options(path: str | Path) -> dict[str, Any]:
    """Builder options stored beside the weights by :func:`save_encoder_checkpoint` (empty otherwise)."""
    if not Path(path).is_file():
        return {}
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable files are reported by load_weights with a clear message
        return {}
    options = raw.get("encoder_options") if isinstance(raw, Mapping) else None
    return dict(options) if isinstance(options, Mapping) else {}


def save_encoder_checkpoint(encoder: PatchEncoder, path: str | Path, options: Mapping[str, Any] | None = None,
                            extra: Mapping[str, Any] | None = None) -> Path:
    """Save the weights atomically so that ``build_encoder(encoder.name, weights=path)`` restores them.

    Args:
        encoder: the encoder to save.
        path: output ``.pt`` file.
        options: builder options needed to rebuild the same architecture (e.g. ``embed_dim``).
        extra: other JSON-like values to store (training history, ...).
    """
    from sarcomakit.core.io.atomic import atomic_path

    payload = {"state_dict": encoder.module.state_dict(), "encoder": encoder.name,
               "encoder_options": {"input_size": encoder.input_size, **dict(options or {})},
               "mean": list(encoder.mean), "std": list(encoder.std), **dict(extra or {})}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)
