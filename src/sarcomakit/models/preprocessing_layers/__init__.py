"""Learnable preprocessing layers, chosen by name in ``network_options["input_layers"]``.

Each entry of ``input_layers`` is ``{"layer": NAME, **options}``; :func:`build_input_layers` builds them in
order, each seeing the channels the previous one outputs, and
:func:`~sarcomakit.models.registry.build_network` puts them in front of the backbone in a
:class:`~sarcomakit.models.compose.ComposedNetwork`. Options that depend on the cohort (window
statistics, the slice axis, resizer scale) are resolved from the plan by :func:`input_layer_specs` and
saved with the run's config, so that prediction rebuilds exactly the same layers.

=========== ================================================ ===================================
name        layer                                            replaces (identity-initialised)
=========== ================================================ ===================================
window      :class:`LearnableWindow` (CT, PET)               CT clipping + z-score
monotone    :class:`MonotoneIntensity` (Nyúl–Udupa, MRI)      per-image z-score (fitted landmarks)
normaliser  :class:`NormaliserCNN` (Karani)                  per-image z-score
resizer     :class:`LearnedResizer` (Talebi & Milanfar)      trilinear resampling
zoom        :class:`LearnableZoom`                           resampling to a target spacing
roi         :class:`ROICrop` (spatial transformer)           the whole patch (no crop)
obelisk     :class:`ObeliskSampling`                         (the first convolutions)
=========== ================================================ ===================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.registry import Registry
from sarcomakit.models.preprocessing_layers.base import GeometricLayer, InputLayer
from sarcomakit.models.preprocessing_layers.intensity import (
    LearnableWindow,
    MonotoneIntensity,
    NormaliserCNN,
    fit_standard_landmarks,
    smooth_clip,
    standard_normal_landmarks,
)
from sarcomakit.models.preprocessing_layers.obelisk import ObeliskNet, ObeliskSampling, ObeliskUNet
from sarcomakit.models.preprocessing_layers.spatial import LearnableZoom, LearnedResizer, ROICrop

INPUT_LAYERS: Registry[Callable[..., InputLayer]] = Registry("input layer", option="input_layers")
for _name, _factory in (("window", LearnableWindow), ("monotone", MonotoneIntensity), ("normaliser", NormaliserCNN),
                        ("resizer", LearnedResizer), ("zoom", LearnableZoom), ("roi", ROICrop),
                        ("obelisk", ObeliskSampling)):
    INPUT_LAYERS.register(_name)(_factory)

#: which preprocessing step each layer learns (recorded in the plan's ``learnt_steps``)
LEARNT_STEP = {"window": "intensity", "monotone": "intensity", "normaliser": "intensity", "resizer": "spacing",
               "zoom": "spacing", "roi": "crop", "obelisk": "sampling"}
#: CT-like channels (windowed); the others are MR-like (monotone standardisation)
WINDOWED_CHANNELS = ("CT", "PET")


def build_input_layers(specs: Sequence[Mapping[str, Any]], in_channels: int) -> list[InputLayer]:
    """The layers of ``specs`` (``{"layer": NAME, **options}``) in order, channels chained."""
    layers: list[InputLayer] = []
    channels = in_channels
    for spec in specs:
        options = dict(spec)
        name = options.pop("layer", None)
        if not isinstance(name, str):
            raise UserInputError(f"input layer {spec} has no 'layer' name.",
                                 fix=f"use one of {', '.join(INPUT_LAYERS.names())}.")
        try:
            layer = INPUT_LAYERS.get(name)(in_channels=channels, **options)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"input layer {name}: {exc}.", fix="see the layer's documentation.") from exc
        layers.append(layer)
        channels = layer.out_channels
    return layers


def input_layer_specs(names: Sequence[str], plan: Any, fingerprint: Any | None = None,
                      landmarks: Sequence[Sequence[float]] | None = None) -> list[dict[str, Any]]:
    """Fully resolved specs for the layers ``names``, initialised from the plan (and its fingerprint).

    ``window`` acts on CT and PET channels (all channels when there are none) with the fingerprint's
    foreground percentiles (the plan's CT statistics when present); ``monotone`` on the others (all when
    every channel is windowed), with ``landmarks`` per channel (e.g. :func:`fit_standard_landmarks`);
    ``zoom`` keeps the plan's slice axis fixed; the other layers take their defaults (identity).
    """
    channels: list[str] = list(plan.channels)
    windowed = [i for i, c in enumerate(channels) if c.upper() in WINDOWED_CHANNELS] or list(range(len(channels)))
    others = [i for i in range(len(channels)) if i not in windowed] or list(range(len(channels)))
    specs: list[dict[str, Any]] = []
    for name in names:
        if name == "window":
            stats = [_window_statistics(plan, fingerprint, channels[i]) for i in windowed]
            specs.append({"layer": "window", "channels": windowed, "low": [s[0] for s in stats],
                          "high": [s[1] for s in stats], "mean": [s[2] for s in stats],
                          "std": [s[3] for s in stats]})
        elif name == "monotone":
            spec: dict[str, Any] = {"layer": "monotone", "channels": others}
            if landmarks is not None:
                spec["landmarks"] = [list(landmarks[i]) for i in others]
            specs.append(spec)
        elif name == "zoom":
            specs.append({"layer": "zoom", "fixed_axes": [] if plan.low_res_axis is None else [plan.low_res_axis]})
        elif name in INPUT_LAYERS:
            specs.append({"layer": name})
        else:
            raise UserInputError(f"unknown input layer {name!r}.", fix=f"use one of {', '.join(INPUT_LAYERS.names())}.")
    return specs


def _window_statistics(plan: Any, fingerprint: Any | None, channel: str) -> tuple[float, float, float, float]:
    spec = next(n for n in plan.normalization if n.channel == channel)
    if None not in (spec.clip_low, spec.clip_high, spec.mean, spec.std):
        return float(spec.clip_low), float(spec.clip_high), float(spec.mean), float(spec.std)
    stats = fingerprint.foreground_intensity.get(channel) if fingerprint is not None else None
    if stats is None or stats.mean is None:
        raise UserInputError(f"no foreground statistics for channel {channel} to initialise its window.",
                             fix="plan the cohort with labelled cases (the fingerprint holds them).")
    return float(stats.percentile_00_5), float(stats.percentile_99_5), float(stats.mean), float(stats.std)


__all__ = ["INPUT_LAYERS", "LEARNT_STEP", "GeometricLayer", "InputLayer", "LearnableWindow", "LearnableZoom",
           "LearnedResizer", "MonotoneIntensity", "NormaliserCNN", "ObeliskNet", "ObeliskSampling", "ObeliskUNet",
           "ROICrop", "build_input_layers", "fit_standard_landmarks", "input_layer_specs", "smooth_clip",
           "standard_normal_landmarks"]
