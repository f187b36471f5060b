"""Figures of what learnable geometric layers learnt: the ROI crop's boxes on example cases, and OBELISK's
sampling offsets, learnt against initial.

Each run's network is rebuilt from its own ``config.json`` and ``plan.json`` and loaded from the fold's kept
checkpoint; a second copy, not loaded, holds the initial state (the offsets are seeded, the crop starts as the
whole patch). A box is the layer's own :meth:`~sarcomakit.models.preprocessing_layers.spatial.ROICrop.box` on a
training-size patch centred on the case's tumour, after the layers that come before the crop, drawn on the
patch's middle slice with the tumour's outline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sarcomakit.data.manifest import Case
from sarcomakit.inference.predictor import Predictor
from sarcomakit.models.compose import ComposedNetwork
from sarcomakit.models.preprocessing_layers import ObeliskSampling, ROICrop
from sarcomakit.planning.preprocess import preprocess_case


def learnt_geometry_figure(run_dirs: Sequence[Path], cases: Sequence[Case], out_png: Path,
                           fold: int = 0) -> Path | None:
    """One panel per (run with a ROI crop, example case) and per run with OBELISK sampling; None when no run of
    ``run_dirs`` (each an arm's run folder) has either layer or a kept checkpoint."""
    panels: list[tuple[str, Any]] = []
    for run_dir in run_dirs:
        loaded = load_run_networks(run_dir, fold)
        if loaded is None:
            continue
        learnt, initial, plan, patch = loaded
        arm = run_dir.parent.name
        crops = input_layers_up_to(learnt, ROICrop)
        if crops is not None:
            panels += [(arm, _roi_panel(crops, case, plan, patch)) for case in cases if case.label is not None]
        sampling = [m for m in learnt.modules() if isinstance(m, ObeliskSampling)]
        if sampling:
            start = next(m for m in initial.modules() if isinstance(m, ObeliskSampling))
            panels.append((arm, ("offsets", sampling[0].offsets.detach().numpy(), start.offsets.detach().numpy())))
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sarcomakit.reporting.figures import save_png

    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.6), squeeze=False)
    for axis, (arm, panel) in zip(axes[0], panels, strict=True):
        if panel[0] == "roi":
            _draw_roi(axis, arm, *panel[1:])
        else:
            _draw_offsets(axis, arm, *panel[1:])
    figure.tight_layout()
    try:
        return save_png(figure, out_png)
    finally:
        plt.close(figure)


def load_run_networks(run_dir: Path, fold: int) -> tuple[nn.Module, nn.Module, Any, list[int]] | None:
    """The run's fold network (learnt), the same network as built (initial), its plan and training patch; None
    without a kept checkpoint."""
    if not (run_dir / f"fold_{fold}" / "checkpoint_best.pt").is_file():
        return None
    predictor = Predictor.from_run(run_dir, folds=[fold], device="cpu")
    plan, config = predictor.plan, predictor.config
    initial = predictor.task.build_model(plan, config).eval()
    return predictor.models[0], initial, plan, list(config.patch_size or plan.patch_size)


def input_layers_up_to(model: nn.Module, kind: type) -> list[Any] | None:
    """The input layers of the composed network inside ``model`` up to and including the first ``kind``."""
    for module in model.modules():
        if isinstance(module, ComposedNetwork):
            layers = list(module.input_layers)
            index = next((i for i, layer in enumerate(layers) if isinstance(layer, kind)), None)
            return None if index is None else layers[:index + 1]
    return None


def _roi_panel(layers: list[Any], case: Case, plan: Any, patch: list[int]) -> tuple[Any, ...]:
    """The patch around the case's tumour (first channel, after the layers before the crop), its tumour mask,
    and the crop's box in voxels of that patch: ``(low, high)`` per axis."""
    pre = preprocess_case(case, plan)
    assert pre.label is not None
    image, label = np.asarray(pre.data, np.float32), np.asarray(pre.label).reshape(pre.data.shape[1:]) > 0
    centre = np.round(np.argwhere(label).mean(0)).astype(int) if label.any() else np.array(label.shape) // 2
    starts = [int(np.clip(c - p // 2, 0, max(0, s - p))) for c, p, s in zip(centre, patch, label.shape, strict=True)]
    window = tuple(slice(a, a + p) for a, p in zip(starts, patch, strict=True))
    x = np.zeros((image.shape[0], *patch), np.float32)
    mask = np.zeros(patch, bool)
    cut = image[(slice(None), *window)]
    x[(slice(None), *(slice(0, n) for n in cut.shape[1:]))] = cut
    mask[tuple(slice(0, n) for n in cut.shape[1:])] = label[window]
    tensor = torch.from_numpy(x)[None]
    with torch.no_grad():
        for layer in layers[:-1]:
            tensor = layer(tensor)  # a geometric layer's forward is its transform
        centre_n, half_n = (v[0].numpy() for v in layers[-1].box(tensor))
    size = np.array(tensor.shape[2:])
    low = (centre_n - half_n + 1) * size / 2 - 0.5
    high = (centre_n + half_n + 1) * size / 2 - 0.5
    return ("roi", case.case_id, tensor[0, 0].numpy(), mask if tuple(mask.shape) == tuple(size) else None, low, high)


def _draw_roi(axis: Any, arm: str, case_id: str, image: np.ndarray, mask: np.ndarray | None,
              low: np.ndarray, high: np.ndarray) -> None:
    from matplotlib.patches import Rectangle

    z = image.shape[0] // 2
    axis.imshow(image[z], cmap="gray")
    if mask is not None and mask[z].any():
        axis.contour(mask[z], levels=[0.5], colors="tab:red", linewidths=1)
    axis.add_patch(Rectangle((low[2], low[1]), high[2] - low[2], high[1] - low[1], fill=False, color="tab:cyan",
                             lw=1.5, label="learnt crop"))
    axis.set_xlim(-0.5, image.shape[2] - 0.5)
    axis.set_ylim(image.shape[1] - 0.5, -0.5)
    axis.set_title(f"{arm}: {case_id}\ncrop z {low[0]:.0f}-{high[0]:.0f} of {image.shape[0]} (tumour in red)",
                   fontsize=8)
    axis.set_xticks([])
    axis.set_yticks([])


def _draw_offsets(axis: Any, arm: str, learnt: np.ndarray, initial: np.ndarray) -> None:
    """Offsets in normalised (x, y), from ``grid_sample``'s (x, y, z) order, learnt against initial."""
    axis.scatter(initial[:, 0], initial[:, 1], s=10, color="grey", label="initial")
    axis.scatter(learnt[:, 0], learnt[:, 1], s=10, color="tab:blue", label="learnt")
    for a, b in zip(initial, learnt, strict=True):
        axis.plot([a[0], b[0]], [a[1], b[1]], color="lightgrey", lw=0.5)
    axis.set_aspect("equal")
    axis.set_xlabel("x offset (normalised)")
    axis.set_ylabel("y offset (normalised)")
    axis.set_title(f"{arm}: OBELISK sampling offsets", fontsize=8)
    axis.legend(fontsize=7)
