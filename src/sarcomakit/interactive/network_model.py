"""A trained interactive network as an :class:`~sarcomakit.interactive.protocol.InteractiveModel`.

The network (trained by the ``interactive`` task, :mod:`sarcomakit.tasks.interactive`) sees, on the
plan's grid, the image channels, the previous mask and the positive and negative prompt maps stacked
as input channels (early fusion, as nnInteractive), and answers two-class logits. Two models wrap it:

- :class:`PlanGridModel` works on images that are already on the plan's grid and normalised (the
  task's preprocessed cases, for validation): it takes a window around the ROI at least as large as
  the training patches (the network sees the context it was trained with, as nnInteractive predicts
  in a fixed-size patch), builds the input with :func:`network_input`, pads it to a size the network
  accepts, runs one forward pass and keeps the ROI;
- :class:`NetworkInteractiveModel` works on any image in its own geometry. Its :meth:`prepare` runs
  the plan's preprocessing once per image (reorientation, crop, normalisation, resampling: the
  session keeps the result), and each :meth:`predict` maps the ROI and the prompts from the
  original voxel grid onto the plan's grid, runs :class:`PlanGridModel` on a window around the
  corresponding box, and resamples the foreground probability back onto the original ROI in physical space. So the
  cost of an interaction is one forward pass on the ROI, and the mask lies on the original grid
  whatever the spacing, orientation or obliquity of the image.

Local normalisation (the default of the ``interactive`` task): each image channel of the window is
standardised by its median and interquartile range (:func:`robust_statistics`), as each training
patch was, so that the network sees a tumour's local contrast on one scale whatever the modality and
the scan's intensity range.

Index mapping: reorientation permutes and flips axes and resampling scales them, so an original
voxel index ``i`` (array order) maps to a continuous plan-grid index ``A @ i + b`` with ``A`` a
scaled signed permutation (:func:`index_mapping`). A prompt voxel is drawn onto every plan-grid
voxel whose centre lies in its footprint (at least the nearest one), so a stroke survives
downsampling and stays connected when upsampled; a stroke on one thick slice covers the plan-grid
slices inside that slice.

Example:
    >>> model = NetworkInteractiveModel.from_run("runs/interactive")  # doctest: +SKIP
    >>> session = InteractiveSession(model, sitk.ReadImage("scan.nrrd"))  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import Geometry
from sarcomakit.interactive.prompts import Encoding, Prompt, encode_seeds, rasterize_prompts
from sarcomakit.interactive.roi import Roi
from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.resample import cropped_geometry
from sarcomakit.runs.config import TrainConfig

#: Input channels after the image channels, in order.
STATE_CHANNELS: tuple[str, ...] = ("previous_mask", "positive", "negative")


def network_input(image: np.ndarray, previous: np.ndarray | None, positive: np.ndarray, negative: np.ndarray, *,
                  encoding: Encoding, scale_mm: float, spacing: Sequence[float] | None) -> np.ndarray:
    """The network's input ``(C + 3, Z, Y, X)`` float32: image channels, previous mask, encoded prompts.

    Args:
        image: ``(C, Z, Y, X)`` image channels on the plan's grid.
        previous: the previous mask ``(Z, Y, X)``, None for none yet.
        positive, negative: prompt voxel maps ``(Z, Y, X)``.
        encoding, scale_mm: see :func:`~sarcomakit.interactive.prompts.encode_seeds`.
        spacing: voxel size in mm (array order) of the grid, for distance encodings.
    """
    shape = image.shape[1:]
    mask = np.zeros(shape, np.float32) if previous is None else np.asarray(previous, dtype=np.float32)
    prompts = encode_seeds(positive, negative, encoding=encoding, spacing=spacing, scale_mm=scale_mm)
    return np.concatenate([np.asarray(image, dtype=np.float32), mask[None], prompts])


def robust_statistics(context: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel of ``(C, ...)``, the median and the interquartile range (the standard deviation when that is 0,
    1 when both are), shaped ``(C, 1, 1, 1)`` to standardise a crop as ``(crop - median) / scale``."""
    data = np.asarray(context, dtype=np.float32).reshape(context.shape[0], -1)
    low, median, high = np.percentile(data, (25, 50, 75), axis=1)
    scale = high - low
    spread = data.std(axis=1)
    scale = np.where(scale > 1e-6, scale, np.where(spread > 1e-6, spread, 1.0))
    shape = (-1, *(1,) * (context.ndim - 1))
    return median.reshape(shape).astype(np.float32), scale.reshape(shape).astype(np.float32)


def context_box(box: Sequence[tuple[int, int]], size: Sequence[int] | None,
                image_shape: Sequence[int]) -> tuple[slice, ...]:
    """The box grown about its centre to at least ``size`` voxels per axis (within the image), as slices: the
    window a network trained on patches of ``size`` sees around the box. ``size`` None: the box itself."""
    slices = []
    for axis, (start, stop) in enumerate(box):
        need, n = (stop - start if size is None else int(size[axis])), int(image_shape[axis])
        if stop - start >= need or n <= need:
            lo, hi = (start, stop) if stop - start >= need else (0, n)
        else:
            lo = min(max(int(round((start + stop - need) / 2)), 0), n - need)
            hi = lo + need
        slices.append(slice(lo, hi))
    return tuple(slices)


def input_divisor(network: str, options: dict, patch_size: Sequence[int]) -> tuple[int, int, int]:
    """Per axis, the number an input side must be a multiple of for the registered network ``network``.

    The residual U-Net and DynUNet halve an axis at each level while the training patch stays at least
    16 voxels along it (:func:`sarcomakit.models.registry._strides_for`); SegResNet halves every axis
    three times.
    """
    from sarcomakit.models.registry import _strides_for

    if network == "segresnet":
        return (8, 8, 8)
    levels = len(options.get("channels", options.get("filters", (0,) * 5))) - 1
    strides = _strides_for(patch_size, levels)
    return tuple(int(math.prod(s[axis] for s in strides)) for axis in range(3))  # type: ignore[return-value]


class PlanGridModel:
    """The network on images already on the plan's grid (see the module docstring).

    Args:
        network: the trained network, input ``n_channels + 3`` channels, output 2 logits.
        n_channels: image channels the network takes.
        encoding, scale_mm: the prompt encoding it was trained with.
        divisor: per axis, the multiple an input side is padded to (:func:`input_divisor`).
        device: where the network runs.
        threshold: foreground probability above which a voxel is in the mask.
        local_normalisation: standardise the image channels by :func:`robust_statistics` of the window the
            network sees (as the task did with its training patches).
        context_shape: the least size of that window, the training patch size (None: the region itself).
    """

    name = "network"

    def __init__(self, network: nn.Module, *, n_channels: int, encoding: Encoding = "edt", scale_mm: float = 5.0,
                 divisor: Sequence[int] = (16, 16, 16), device: torch.device | str = "cpu",
                 threshold: float = 0.5, local_normalisation: bool = False,
                 context_shape: Sequence[int] | None = None) -> None:
        self.network = network
        self.n_channels = n_channels
        self.encoding = encoding
        self.scale_mm = scale_mm
        self.divisor = tuple(int(d) for d in divisor)
        self.device = torch.device(device)
        self.threshold = threshold
        self.local_normalisation = local_normalisation
        self.context_shape = None if context_shape is None else tuple(int(n) for n in context_shape)

    def predict(self, image: np.ndarray, prompts: Sequence[Prompt], previous_mask: np.ndarray | None,
                roi: Roi, *, spacing: Sequence[float] | None = None) -> np.ndarray:
        """The mask in ``roi`` of an image already on the plan's grid (the InteractiveModel protocol)."""
        window = self.window(list(zip(roi.start, roi.stop, strict=True)), image.shape[1:])
        region = Roi(tuple(w.start for w in window), tuple(w.stop for w in window))
        positive, negative = rasterize_prompts(prompts, image.shape[1:], region)
        previous = None if previous_mask is None else previous_mask[window]
        probability = self.foreground_probability(image[(slice(None), *window)], previous, positive, negative,
                                                  spacing)
        inside = tuple(slice(a - w.start, b - w.start) for a, b, w in zip(roi.start, roi.stop, window, strict=True))
        return probability[inside] >= self.threshold

    def window(self, box: Sequence[tuple[int, int]], image_shape: Sequence[int]) -> tuple[slice, ...]:
        """The window (slices of the plan-grid image) the network sees to predict the region ``box``: the box
        grown to the training patch size, as nnInteractive predicts in a fixed-size patch around the prompts."""
        return context_box(box, self.context_shape, image_shape)

    def foreground_probability(self, image: np.ndarray, previous: np.ndarray | None, positive: np.ndarray,
                               negative: np.ndarray, spacing: Sequence[float] | None, *,
                               dropout: bool = False) -> np.ndarray:
        """Foreground probability ``(Z, Y, X)`` of one window, from one forward pass (input padded, output cropped);
        with local normalisation the window's own statistics standardise the image channels. ``dropout`` keeps
        the dropout layers active (one Monte Carlo dropout sample)."""
        if self.local_normalisation:
            median, scale = robust_statistics(image)
            image = (np.asarray(image, dtype=np.float32) - median) / scale
        inputs = network_input(image, previous, positive, negative, encoding=self.encoding, scale_mm=self.scale_mm,
                               spacing=spacing)
        shape = inputs.shape[1:]
        padding = [(0, 0)] + [(0, (-n) % d) for n, d in zip(shape, self.divisor, strict=True)]
        padded = np.concatenate([np.pad(inputs[:self.n_channels], padding, mode="edge"),
                                 np.pad(inputs[self.n_channels:], padding, mode="constant")])
        modes = {module: module.training for module in self.network.modules()}
        self.network.eval()
        if dropout:
            for module in self.network.modules():
                if isinstance(module, nn.Dropout):
                    module.train(True)
        try:
            with torch.inference_mode():
                logits = self.network(torch.from_numpy(padded[None]).to(self.device))
                probability = torch.softmax(logits.float(), dim=1)[0, 1]
        finally:
            for module, mode in modes.items():
                module.training = mode
        return probability[tuple(slice(0, n) for n in shape)].cpu().numpy()


@dataclass(frozen=True)
class PreparedImage:
    """An image preprocessed with the plan, kept by a session between interactions.

    Attributes:
        data: ``(C, Z', Y', X')`` float32 on the plan's grid.
        grid: geometry of ``data``.
        reference: geometry of the original image.
        matrix, offset: continuous plan-grid index ``matrix @ i + offset`` of original index ``i`` (array order).
    """

    data: np.ndarray
    grid: Geometry
    reference: Geometry
    matrix: np.ndarray
    offset: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape ``(C, Z, Y, X)`` of the original image (what the session and the ROI refer to)."""
        return (self.data.shape[0], *self.reference.array_shape)

    def to_grid(self, indices: np.ndarray) -> np.ndarray:
        """Continuous plan-grid indices of ``(N, 3)`` original indices."""
        return np.asarray(indices, dtype=float) @ self.matrix.T + self.offset

    def to_original(self, indices: np.ndarray) -> np.ndarray:
        """Continuous original indices of ``(N, 3)`` plan-grid indices."""
        return (np.asarray(indices, dtype=float) - self.offset) @ np.linalg.inv(self.matrix).T


class NetworkInteractiveModel:
    """A trained interactive run on images in their own geometry (see the module docstring).

    Args:
        grid_model: the network on the plan's grid.
        plan: the plan the network was trained with.
        channel: for a network that takes one channel, the plan channel whose normalisation the input
            gets (None: the first); an unknown name gets a per-image z-score.
        name: the method name in tables.
        config: the run's training configuration (what fine-tuning it needs), when loaded from a run.
    """

    def __init__(self, grid_model: PlanGridModel, plan: Plan, *, channel: str | None = None,
                 name: str = "network", config: TrainConfig | None = None) -> None:
        self.grid_model = grid_model
        self.plan = plan
        self.name = name
        self.config = config
        self.input_plan = _input_plan(plan, grid_model.n_channels, channel)

    @property
    def n_channels(self) -> int:
        """Image channels the model takes."""
        return self.grid_model.n_channels

    @classmethod
    def from_run(cls, run_dir: str | Path, *, fold: int | None = None, checkpoint: str = "best",
                 device: str = "cpu", channel: str | None = None, name: str | None = None) -> NetworkInteractiveModel:
        """Load fold ``fold`` (default: the first trained) of an ``interactive`` run folder.

        Raises:
            UserInputError: not a run folder, not an interactive run, or no checkpoint for the fold.
        """
        from sarcomakit.core.device import select_device
        from sarcomakit.runs.checkpoint import load_checkpoint
        from sarcomakit.runs.folder import RunFolder
        from sarcomakit.tasks import build_task

        run = RunFolder.open(run_dir)
        plan, config = run.plan(), run.config()
        if config.task != "interactive":
            raise UserInputError(f"is a '{config.task}' run, not an interactive one.", path=run.root,
                                 fix="train one with 'sarcomakit interactive train'.")
        available = run.trained_folds(checkpoint)
        if not available or (fold is not None and fold not in available):
            raise UserInputError(f"no checkpoint_{checkpoint}.pt for fold {fold if fold is not None else 'any'}.",
                                 path=run.root, fix=f"train a fold first, or choose among {sorted(available)}.")
        chosen = min(available) if fold is None else fold
        # the run's own weights are loaded below: a fine-tuned run need not find its starting weights again
        config = config.model_copy(update={"task_options": {k: v for k, v in config.task_options.items()
                                                            if k != "initial_weights"}})
        task = build_task(config)
        torch_device = select_device(device)
        network = task.build_model(plan, config)
        network.load_state_dict(load_checkpoint(available[chosen], map_location=torch_device)["model"])
        network.to(torch_device).eval()
        grid_model = task.grid_model(network, plan, config, torch_device)  # type: ignore[attr-defined]
        return cls(grid_model, plan, channel=channel, name=name or Path(run_dir).name, config=config)

    # ------------------------------------------------------------------ protocol
    def prepare(self, image: np.ndarray, *, spacing: Sequence[float] | None = None,
                geometry: Geometry | None = None) -> PreparedImage:
        """Preprocess ``image`` ``(C, Z, Y, X)`` with the plan, once per image (the session keeps the result).

        Args:
            image: the image on its original grid.
            spacing: voxel size in mm (array order), used when ``geometry`` is None.
            geometry: the image's grid (origin, spacing, direction); None: ``spacing`` with identity
                direction.
        """
        from sarcomakit.planning.preprocess import preprocess_case

        array = np.asarray(image, dtype=np.float32)
        if array.ndim != 4 or array.shape[0] != self.n_channels:
            raise UserInputError(f"the model {self.name} takes {self.n_channels} image channel(s) (c, z, y, x); "
                                 f"got an array of shape {array.shape}.")
        if geometry is None:
            sizes = tuple(int(n) for n in reversed(array.shape[1:]))
            steps = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in reversed(tuple(spacing)))
            geometry = Geometry(size=sizes, spacing=steps, origin=(0.0, 0.0, 0.0),
                                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
        if tuple(geometry.array_shape) != tuple(array.shape[1:]):
            raise UserInputError(f"the geometry's shape {geometry.array_shape} differs from the image's "
                                 f"{array.shape[1:]}.")
        images = {name: geometry.apply(sitk.GetImageFromArray(array[c]))
                  for c, name in enumerate(self.input_plan.channels)}
        pre = preprocess_case(images, self.input_plan, case_id="interactive")
        matrix, offset = index_mapping(geometry, pre.geometry)
        return PreparedImage(data=np.ascontiguousarray(pre.data, dtype=np.float32), grid=pre.geometry,
                             reference=geometry, matrix=matrix, offset=offset)

    def predict(self, image: PreparedImage | np.ndarray, prompts: Sequence[Prompt],
                previous_mask: np.ndarray | None, roi: Roi, *, spacing: Sequence[float] | None = None) -> np.ndarray:
        """The mask in ``roi`` on the original grid (:class:`~sarcomakit.interactive.protocol.InteractiveModel`).

        ``image`` is what :meth:`prepare` returned; a plain array is prepared first (slow: once per call).
        """
        prepared = image if isinstance(image, PreparedImage) else self.prepare(image, spacing=spacing)
        box = _grid_box(prepared, roi)
        if box is None:  # the ROI lies outside the region the plan's crop kept
            return np.zeros(roi.shape, dtype=bool)
        window = [(w.start, w.stop) for w in self.grid_model.window(box, prepared.data.shape[1:])]
        positive, negative = _splat_prompts(prompts, prepared, window)
        previous = None
        if previous_mask is not None and previous_mask.any():
            previous = _previous_on_box(previous_mask, prepared, window)
        probability = self.grid_model.foreground_probability(
            prepared.data[(slice(None), *(slice(a, b) for a, b in window))], previous, positive, negative,
            prepared.grid.array_spacing)
        probability = probability[tuple(slice(a - w, b - w) for (a, b), (w, _) in zip(box, window, strict=True))]
        box_grid = cropped_geometry(prepared.grid, [list(b) for b in box])
        roi_grid = cropped_geometry(prepared.reference, [[a, b] for a, b in zip(roi.start, roi.stop, strict=True)])
        source = box_grid.apply(sitk.GetImageFromArray(probability.astype(np.float32)))
        resampled = sitk.Resample(source, [int(n) for n in roi_grid.size], sitk.Transform(), sitk.sitkLinear,
                                  roi_grid.origin, roi_grid.spacing, roi_grid.direction, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(resampled) >= self.grid_model.threshold


# ---------------------------------------------------------------------- geometry helpers
def index_mapping(source: Geometry, target: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(A, b)`` with ``target_index = A @ source_index + b``, both continuous and in array order (z, y, x)."""
    direction_s = np.asarray(source.direction, dtype=float).reshape(3, 3)
    direction_t = np.asarray(target.direction, dtype=float).reshape(3, 3)
    scale_s, scale_t = np.diag(source.spacing), np.diag(1.0 / np.asarray(target.spacing))
    matrix_xyz = scale_t @ direction_t.T @ direction_s @ scale_s
    offset_xyz = scale_t @ direction_t.T @ (np.asarray(source.origin) - np.asarray(target.origin))
    reverse = np.eye(3)[::-1]
    return reverse @ matrix_xyz @ reverse, offset_xyz[::-1].copy()


def _grid_box(prepared: PreparedImage, roi: Roi) -> list[tuple[int, int]] | None:
    """The plan-grid box covering the ROI's voxels (plus one voxel for interpolation), clipped; None if empty."""
    corners = np.array(list(itertools.product(*[(a - 0.5, b - 0.5) for a, b in zip(roi.start, roi.stop,
                                                                                   strict=True)])))
    mapped = prepared.to_grid(corners)
    low, high = mapped.min(axis=0), mapped.max(axis=0)
    box = []
    for axis, n in enumerate(prepared.data.shape[1:]):
        start, stop = max(int(math.floor(low[axis])) - 1, 0), min(int(math.ceil(high[axis])) + 2, n)
        if stop <= start:
            return None
        box.append((start, stop))
    return box


def _splat_prompts(prompts: Sequence[Prompt], prepared: PreparedImage,
                   box: Sequence[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative prompt maps on the plan-grid box; later prompts override earlier ones."""
    shape = tuple(b - a for a, b in box)
    start = np.array([a for a, _ in box])
    positive, negative = np.zeros(shape, bool), np.zeros(shape, bool)
    # half the footprint of an original voxel along each grid axis, at least half a grid voxel
    radius = np.maximum(np.abs(prepared.matrix).sum(axis=1) / 2.0, 0.5)
    offsets = [np.arange(-math.ceil(r), math.ceil(r) + 1) for r in radius]
    for prompt in prompts:
        centres = prepared.to_grid(prompt.covered_voxels())
        points = []
        for shift in itertools.product(*offsets):
            candidate = np.rint(centres) + np.asarray(shift)
            inside = np.all(np.abs(candidate - centres) <= radius + 1e-6, axis=1)
            points.append(candidate[inside])
        points.append(np.rint(centres))  # the nearest grid voxel always counts
        voxels = np.unique(np.concatenate(points).astype(np.int64), axis=0) - start
        voxels = voxels[np.all((voxels >= 0) & (voxels < np.asarray(shape)), axis=1)]
        index = tuple(voxels.T)
        (positive if prompt.positive else negative)[index] = True
        (negative if prompt.positive else positive)[index] = False
    return positive, negative


def _previous_on_box(previous_mask: np.ndarray, prepared: PreparedImage,
                     box: Sequence[tuple[int, int]]) -> np.ndarray:
    """The previous mask (original grid) resampled onto the plan-grid box, linear then thresholded at 0.5."""
    corners = np.array(list(itertools.product(*[(a - 0.5, b - 0.5) for a, b in box])))
    original = prepared.to_original(corners)
    shape = previous_mask.shape
    low = np.maximum(np.floor(original.min(axis=0)).astype(int) - 1, 0)
    high = np.minimum(np.ceil(original.max(axis=0)).astype(int) + 2, shape)
    if np.any(high <= low):
        return np.zeros(tuple(b - a for a, b in box), bool)
    crop = [[int(a), int(b)] for a, b in zip(low, high, strict=True)]
    source = cropped_geometry(prepared.reference, crop).apply(
        sitk.GetImageFromArray(np.ascontiguousarray(previous_mask[tuple(slice(a, b) for a, b in crop)],
                                                    dtype=np.float32)))
    target = cropped_geometry(prepared.grid, [list(b) for b in box])
    resampled = sitk.Resample(source, [int(n) for n in target.size], sitk.Transform(), sitk.sitkLinear,
                              target.origin, target.spacing, target.direction, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resampled) >= 0.5


def _input_plan(plan: Plan, n_channels: int, channel: str | None) -> Plan:
    """The plan for the model's input: the plan itself, or for a one-channel network a one-channel copy."""
    if n_channels != 1:
        if n_channels != len(plan.channels):
            raise UserInputError(f"the network takes {n_channels} channels but its plan lists "
                                 f"{len(plan.channels)}.")
        return plan
    if len(plan.channels) == 1 and channel is None:
        return plan
    by_name = {n.channel: n for n in plan.normalization}
    if channel is None:
        spec = plan.normalization[0]
    elif channel in by_name:
        spec = by_name[channel]
    else:
        spec = ChannelNormalization(channel=channel, scheme="zscore")
    name = channel or spec.channel
    return plan.model_copy(update={"channels": [name],
                                   "normalization": [spec.model_copy(update={"channel": name})]})
