"""Figures of what learnable intensity layers learnt: each window's mapping and each standard scale, learnt
against the initial (fixed-preprocessing) one, and each site's images mapped onto the learnt standard scale.

The layers are rebuilt from the run's own ``config.json`` and ``plan.json`` and loaded from the fold's kept
checkpoint, so the curves are the layers' own ``forward`` (a window) and ``output_landmarks`` (the monotone
standardisation), not a re-derivation of their formulas.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sarcomakit.data.manifest import Case
from sarcomakit.models.preprocessing_layers import build_input_layers
from sarcomakit.models.preprocessing_layers.intensity import LearnableWindow, MonotoneIntensity
from sarcomakit.runs.checkpoint import load_checkpoint

DRAWN = (LearnableWindow, MonotoneIntensity)


def layer_prefix(state: dict[str, Any], index: int) -> str:
    """The state-dict prefix of input layer ``index``: ``input_layers.K.`` in a segmentation network,
    ``backbone.input_layers.K.`` inside a multi-task network."""
    marker = f"input_layers.{index}."
    return next((key[:key.index(marker)] + marker for key in state if marker in key), marker)


def learnt_intensity_layers(run_dir: Path, fold: int = 0) -> list[tuple[str, Any, Any]]:
    """``(layer name, learnt layer, initial layer)`` for each window or monotone layer of the run's fold."""
    config_path, plan_path = run_dir / "config.json", run_dir / "plan.json"
    checkpoint = run_dir / f"fold_{fold}" / "checkpoint_best.pt"
    if not (config_path.is_file() and plan_path.is_file() and checkpoint.is_file()):
        return []
    specs = json.loads(config_path.read_text(encoding="utf-8"))["network_options"].get("input_layers", [])
    if not specs:
        return []
    in_channels = len(json.loads(plan_path.read_text(encoding="utf-8"))["channels"])
    learnt, initial = build_input_layers(specs, in_channels), build_input_layers(specs, in_channels)
    state = load_checkpoint(checkpoint)["model"]
    found = []
    for i, (layer, start) in enumerate(zip(learnt, initial, strict=True)):
        if not isinstance(layer, DRAWN):
            continue
        prefix = layer_prefix(state, i)
        layer.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        found.append((specs[i]["layer"], layer, start))
    return found


def _window_curves(layer: LearnableWindow, initial: LearnableWindow, index: int) -> tuple[np.ndarray, ...]:
    """For the ``index``-th windowed channel: input intensities spanning its initial first window with margin,
    and the learnt and initial outputs of that window."""
    channel, window = layer.channels[index], index * layer.windows
    with torch.no_grad():
        low, high = (float(bound[window]) for bound in initial.window_bounds())
    width = high - low
    x = torch.linspace(low - 0.5 * width, high + 0.5 * width, 200)
    volume = torch.zeros(200, layer.in_channels, 1, 1, 1)
    volume[:, channel, 0, 0, 0] = x
    output = index * (layer.windows - 1) + channel  # earlier windowed channels widened the output
    with torch.no_grad():
        return x.numpy(), layer(volume)[:, output, 0, 0, 0].numpy(), initial(volume)[:, output, 0, 0, 0].numpy()


def learnt_intensity_figure(run_dirs: Sequence[Path], out_png: Path) -> Path | None:
    """One panel per learnt window or standard scale over ``run_dirs`` (each an arm's run folder); None when no
    run has such a layer."""
    panels = [(run_dir.parent.name, name, layer, start, index) for run_dir in run_dirs
              for name, layer, start in learnt_intensity_layers(run_dir)
              for index in (range(len(layer.channels)) if isinstance(layer, LearnableWindow) else [None])]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sarcomakit.reporting.figures import save_png

    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, (arm, name, layer, start, index) in zip(axes[0], panels, strict=True):
        if isinstance(layer, LearnableWindow) and index is not None:  # a panel per windowed channel (CT, PET)
            x, y, y0 = _window_curves(layer, start, index)
            axis.plot(x, y0, "--", color="grey", label="initial (plan's clip and z-score)")
            axis.plot(x, y, color="C0", label="learnt")
            axis.set_xlabel(f"input intensity, channel {layer.channels[index]}")
            axis.set_ylabel("network input")
        else:
            with torch.no_grad():
                learnt, initial = layer.output_landmarks().numpy(), start.output_landmarks().numpy()
            percentiles = layer.probabilities.numpy() * 100
            for row, (values, values0) in enumerate(zip(learnt, initial, strict=True)):
                axis.plot(percentiles, values0, "--", color="grey", label="initial" if row == 0 else None)
                axis.plot(percentiles, values, "o-", color=f"C{row}", ms=3,
                          label=f"learnt, channel {layer.channels[row]}")
            axis.set_xlabel("image percentile")
            axis.set_ylabel("standard-scale landmark")
        axis.set_title(name if arm == name else f"{arm}: {name}")
        axis.legend(fontsize=7)
    figure.tight_layout()
    try:
        return save_png(figure, out_png)
    finally:
        plt.close(figure)


def intensity_by_site_figure(run_dirs: Sequence[Path], cases: Sequence[Case], out_png: Path,
                             fold: int = 0) -> Path | None:
    """One panel per standardised channel of each run with a monotone layer: every example case's own map from
    its intensities (the layer's input, after the layers before it) to the learnt standard scale, coloured by
    site, beside the initial map (dashed). Sites whose scanners scale intensities differently get different
    input landmarks and one shared output scale: the panel shows how far apart they start. None when no run
    of ``run_dirs`` has a monotone layer."""
    from sarcomakit.experiments.learnt_geometry import input_layers_up_to, load_run_networks
    from sarcomakit.planning.preprocess import preprocess_case

    panels = []
    for run_dir in run_dirs:
        loaded = load_run_networks(run_dir, fold)
        layers = input_layers_up_to(loaded[0], MonotoneIntensity) if loaded is not None else None
        if loaded is None or layers is None:
            continue
        _, initial, plan, _ = loaded
        start = (input_layers_up_to(initial, MonotoneIntensity) or [None])[-1]
        inputs = []
        for case in cases:
            x = torch.from_numpy(np.asarray(preprocess_case(case, plan).data, np.float32))[None]
            with torch.no_grad():
                for layer in layers[:-1]:
                    x = layer(x)  # a geometric layer's forward is its transform
            inputs.append((str(case.site), x[0].numpy()))
        for row, channel in enumerate(layers[-1].channels):
            name = plan.channels[channel] if channel < len(plan.channels) else f"channel {channel}"
            panels.append((run_dir.parent.name, (channel, name), row, layers[-1], start, inputs))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sarcomakit.reporting.figures import save_png

    sites = sorted({site for *_, inputs in panels for site, _ in inputs})
    colour = {site: f"C{i % 10}" for i, site in enumerate(sites)}
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for axis, (arm, (channel, name), row, layer, start, inputs) in zip(axes[0], panels, strict=True):
        with torch.no_grad():
            learnt, initial = layer.output_landmarks()[row].numpy(), start.output_landmarks()[row].numpy()
        labelled: set[str] = set()
        for site, volume in inputs:
            landmarks = np.percentile(volume[channel], layer.probabilities.numpy() * 100)
            axis.plot(landmarks, initial, "--", color="lightgrey", lw=1)
            axis.plot(landmarks, learnt, "o-", ms=2.5, lw=1.2, color=colour[site],
                      label=site if site not in labelled else None)
            labelled.add(site)
        axis.set_xlabel(f"input intensity, {name} (each case's own scale)")
        axis.set_ylabel("standard scale (learnt; initial dashed)")
        axis.set_title(f"{arm}: {name} onto the learnt standard scale", fontsize=9)
        axis.legend(fontsize=7, title="site", title_fontsize=7)
    figure.tight_layout()
    try:
        return save_png(figure, out_png)
    finally:
        plt.close(figure)
