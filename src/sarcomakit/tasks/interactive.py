"""Interactive segmentation: a network that turns (image, prompts so far, current mask) into a new mask.

The network's input is the image channels, the previous mask and the positive and negative prompt
maps stacked as channels (early fusion, as nnInteractive; see
:func:`sarcomakit.interactive.network_model.network_input`); its output is two-class logits
(background, object), trained with Dice + cross-entropy against the whole reference mask.

Training samples are patches around the tumour (every patch holds some of it), zoomed by a random
factor (``scale_range``: the network meets tumours smaller and larger than the cohort's), augmented
spatially (the run's ``augmentation``) and then strongly in intensity
(:class:`~sarcomakit.interactive.augment.IntensityAugmentation`: random monotone remapping,
inversion, gamma, bias field, noise, channel dropout), so that the network follows the prompts rather
than one contrast; with ``local_normalisation`` (default) each patch's channels are then standardised
by their median and interquartile range, as prediction does in a patch-sized window around the region.
The interaction state of a sample (previous mask and prompts) is simulated by the
robot user from the patch's reference (:func:`~sarcomakit.interactive.simulation.simulate_state`):
first prompts on an empty mask, or corrections of a perturbed mask. With ``model_in_the_loop`` a
batch also gets one more round on the network's own answer (DeepEdit's and nnInteractive's
simulation), so that it learns to fix its own errors. With ``single_channel`` the network takes one
image channel, drawn among the case's for each sample, and works on any single modality.

Validation plays the robot user for ``validation_rounds`` rounds on each validation case (on the
plan's grid) and scores the mean Dice after the last round (``val_dice``); the first round's Dice and
the area under the Dice curve are logged too. ``sarcomakit predict`` does not apply: an interactive
run predicts from prompts, through :class:`~sarcomakit.interactive.network_model.NetworkInteractiveModel`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.interactive.augment import IntensityAugmentation, pick_channel
from sarcomakit.interactive.evaluate import InteractiveCase, evaluate_interactive
from sarcomakit.interactive.metrics import dice_curve_auc, mean_curve
from sarcomakit.interactive.network_model import PlanGridModel, input_divisor, network_input, robust_statistics
from sarcomakit.interactive.prompts import ENCODINGS
from sarcomakit.interactive.robot import RobotConfig
from sarcomakit.interactive.simulation import (
    InteractionState,
    SimulationConfig,
    add_correction,
    simulate_state,
    tuple_option,
)
from sarcomakit.models import build_network
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import CaseOutput, LossOutput, Objective, Task, TaskRequirements
from sarcomakit.tasks.patches import CaseVolume, augmentation_pipeline, crop_patch
from sarcomakit.tasks.segmentation import dice_ce_loss

#: Fewest reference voxels a training patch must hold (a smaller piece gives the robot nothing to draw on).
MIN_PATCH_FOREGROUND = 4


class InteractiveDataset(torch.utils.data.Dataset):
    """Training samples of the interactive task (see the module docstring); deterministic for (seed, epoch, index).

    Each sample holds ``image`` (the network input, ``(C + 3, *patch)``), ``label`` (``(1, *patch)``),
    and the prompt maps ``positive`` / ``negative`` (uint8 ``(*patch)``) that model-in-the-loop rounds
    extend.
    """

    def __init__(self, volumes: Sequence[CaseVolume], patch_size: Sequence[int], length: int, *,
                 spatial_augmentation: str, intensity: IntensityAugmentation | None, simulation: SimulationConfig,
                 single_channel: bool, encoding: str, scale_mm: float, spacing: Sequence[float], seed: int,
                 local_normalisation: bool = True, scale_range: Sequence[float] = (1.0, 1.0)) -> None:
        self.volumes = [v for v in volumes if len(v.foreground)]
        if not self.volumes:
            raise UserInputError("no training case has foreground voxels: there is no object to prompt for.",
                                 fix="give cases whose masks are not empty.")
        self.patch_size = tuple(int(p) for p in patch_size)
        self.length = length
        self.transform = augmentation_pipeline(spatial_augmentation, self.patch_size)
        self.intensity = intensity
        self.simulation = simulation
        self.single_channel = single_channel
        self.encoding = encoding
        self.scale_mm = scale_mm
        self.spacing = tuple(float(s) for s in spacing)
        self.seed = seed
        self.local_normalisation = local_normalisation
        if len(scale_range) != 2 or not 0 < float(scale_range[0]) <= float(scale_range[1]):
            raise UserInputError(f"scale_range must be two numbers 0 < low <= high, got {list(scale_range)}.")
        self.scale_range = (float(scale_range[0]), float(scale_range[1]))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        image, label = self._patch(rng)
        if self.single_channel:
            image = pick_channel(image, rng)
        if self.intensity is not None:
            image = self.intensity(image, rng)
        if self.local_normalisation:
            median, scale = robust_statistics(image)
            image = (image - median) / scale
        reference = label[0] > 0
        state = simulate_state(reference, rng, self.simulation)
        encoding: Any = self.encoding  # checked against the encodings when the task is built
        inputs = network_input(image, state.previous, state.positive, state.negative, encoding=encoding,
                               scale_mm=self.scale_mm, spacing=self.spacing)
        return {"image": torch.from_numpy(inputs), "label": torch.from_numpy(label.astype(np.int64)),
                "positive": torch.from_numpy(state.positive.astype(np.uint8)),
                "negative": torch.from_numpy(state.negative.astype(np.uint8))}

    def _patch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A spatially augmented patch around the tumour holding at least :data:`MIN_PATCH_FOREGROUND` voxels of it."""
        best: tuple[np.ndarray, np.ndarray] | None = None
        for _ in range(10):
            volume = self.volumes[int(rng.integers(len(self.volumes)))]
            image, label = self._zoomed_crop(volume, rng)
            if len(self.transform.transforms):
                self.transform.set_random_state(seed=int(rng.integers(2**31)))
                sample = self.transform({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
                image = np.asarray(sample["image"], dtype=np.float32)
                label = np.rint(np.asarray(sample["label"])).astype(np.uint8)
            count = int((label > 0).sum())
            if count >= MIN_PATCH_FOREGROUND:
                return image, label
            if count and (best is None or count > int((best[1] > 0).sum())):
                best = (image, label)
        if best is None:  # the augmentation moved the tumour out ten times: take an unaugmented patch
            volume = self.volumes[int(rng.integers(len(self.volumes)))]
            return crop_patch(volume, self.patch_size, rng, force_foreground=True)
        return best


    def _zoomed_crop(self, volume: CaseVolume, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A crop around the tumour of ``patch / zoom`` voxels resized to the patch, ``zoom`` log-uniform in
        :attr:`scale_range`: the tumour appears from ``scale_range[0]`` to ``scale_range[1]`` times its size."""
        low, high = self.scale_range
        zoom = float(np.exp(rng.uniform(np.log(low), np.log(high)))) if high > low else float(low)
        region = tuple(max(1, int(round(p / zoom))) for p in self.patch_size)
        image, label = crop_patch(volume, region, rng, force_foreground=True)
        if region == self.patch_size:
            return image, label
        size = list(self.patch_size)
        image = torch.nn.functional.interpolate(torch.from_numpy(image)[None], size=size, mode="trilinear",
                                                align_corners=False)[0].numpy()
        fraction = torch.nn.functional.interpolate(torch.from_numpy((label > 0).astype(np.float32))[None],
                                                   size=size, mode="trilinear", align_corners=False)[0].numpy()
        return image, (fraction >= 0.5).astype(np.uint8)


class InteractiveObjective(Objective):
    """Dice + cross-entropy on the simulated states, with optional model-in-the-loop correction rounds.

    Args:
        n_channels: image channels of the network input (the state channels follow them).
        encoding, scale_mm, spacing: the prompt encoding (as the dataset's).
        model_in_the_loop: probability that a batch first gets the network's own answer as previous
            mask and one robot correction of it.
        simulation: the robot's protocols for that correction.
        seed: seed of the objective's random draws.
    """

    def __init__(self, *, n_channels: int, encoding: str, scale_mm: float, spacing: Sequence[float],
                 model_in_the_loop: float, simulation: SimulationConfig, seed: int) -> None:
        super().__init__()
        self.loss = dice_ce_loss()
        self.n_channels = n_channels
        self.encoding = encoding
        self.scale_mm = scale_mm
        self.spacing = tuple(float(s) for s in spacing)
        self.model_in_the_loop = model_in_the_loop
        self.simulation = simulation
        self.rng = np.random.default_rng((seed, 7))

    def forward(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> LossOutput:
        inputs, label = batch["image"], batch["label"]
        looped = self.training and self.model_in_the_loop > 0 and self.rng.random() < self.model_in_the_loop
        if looped:
            inputs = self.correct_own_answer(model, inputs, label, batch["positive"], batch["negative"], device)
        logits = model(inputs.to(device, non_blocking=True))
        loss = self.loss(logits, label.to(device, non_blocking=True))
        return LossOutput(loss, {"model_in_the_loop": float(looped)})

    def correct_own_answer(self, model: nn.Module, inputs: torch.Tensor, label: torch.Tensor,
                           positive: torch.Tensor, negative: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The batch's inputs after one round: the network's answer becomes the previous mask and is corrected."""
        with torch.no_grad():
            answers = model(inputs.to(device)).argmax(dim=1).cpu().numpy().astype(bool)
        updated = inputs.clone()
        for b in range(inputs.shape[0]):
            reference = label[b, 0].numpy() > 0
            state = InteractionState(previous=answers[b], positive=positive[b].numpy() > 0,
                                     negative=negative[b].numpy() > 0)
            state = add_correction(state, reference, answers[b], self.simulation.robot(self.rng))
            image = inputs[b, :self.n_channels].numpy()
            updated[b] = torch.from_numpy(network_input(image, state.previous, state.positive, state.negative,
                                                        encoding=self.encoding,  # type: ignore[arg-type]
                                                        scale_mm=self.scale_mm, spacing=self.spacing))
        return updated


class InteractiveTask(Task):
    """Interactive segmentation from scribbles, clicks and corrections (prompt-conditioned network).

    Args:
        encoding: prompt encoding: binary, edt (exponential distance decay) or gaussian.
        scale_mm: decay length (edt) or width (gaussian) of the prompt encoding, in mm.
        single_channel: the network takes one image channel, drawn at random among the case's for each
            training sample, so that it segments any single modality.
        intensity_augmentation: strong, light or none (random monotone remapping, inversion, gamma, bias
            field, noise, channel dropout; light: gamma and noise).
        initial_fraction: fraction of training samples with an empty previous mask and first prompts only.
        max_corrections: most simulated correction rounds of a training sample.
        initial_protocols: first-round protocols of the simulated user (scribble, clicks, extreme_points).
        corrective_kinds: corrective prompt kinds of the simulated user (scribble, click).
        perturbations: how simulated previous masks are wrong (dilate, erode, shift, cut, blob, empty).
        model_in_the_loop: probability that a batch gets one more round on the network's own answer.
        validation_rounds: robot rounds per validation case; the score is the mean Dice after the last.
        validation_protocol: first-round prompts of the validation robot (scribble, clicks, extreme_points).
        local_normalisation: standardise the image channels of each input by their median and interquartile
            range in a patch-sized window (the training patch; around the region at prediction), so that the
            network sees local contrast on one scale whatever the modality.
        scale_range: range of the zoom applied to training patches (log-uniform), so that the network meets
            tumours from scale_range[0] to scale_range[1] times their size in the cohort.
        initial_weights: fine-tuning: start from the network of this interactive run folder (or 'default',
            the model shipped with the package) instead of random weights; the network and its options
            must be the same as that run's (see its config.json).
    """

    name = "interactive"
    score_name = "val_dice"
    requirements = TaskRequirements(needs_labels=True, allow_missing_channels=False, stratify_clinical=False)

    def __init__(self, manifest: Any = None, *, encoding: str = "edt", scale_mm: float = 5.0,
                 single_channel: bool = False, intensity_augmentation: str = "strong",
                 initial_fraction: float = 0.3, max_corrections: int = 3,
                 initial_protocols: list[str] | str = "scribble,clicks",
                 corrective_kinds: list[str] | str = "scribble,click",
                 perturbations: list[str] | str = "dilate,erode,shift,cut,blob,empty",
                 model_in_the_loop: float = 0.25, validation_rounds: int = 5,
                 validation_protocol: str = "scribble", local_normalisation: bool = True,
                 scale_range: tuple[float, float] = (0.33, 1.5), initial_weights: str | None = None) -> None:
        super().__init__(manifest)
        if encoding not in ENCODINGS:
            raise UserInputError(f"unknown prompt encoding '{encoding}'.", fix=f"use {', '.join(ENCODINGS)}.")
        if not scale_mm > 0:
            raise UserInputError(f"scale_mm must be positive, got {scale_mm}.")
        if not 0 <= model_in_the_loop <= 1:
            raise UserInputError(f"model_in_the_loop is a probability, got {model_in_the_loop}.")
        if validation_rounds < 1:
            raise UserInputError(f"validation_rounds must be at least 1, got {validation_rounds}.")
        try:
            self.intensity = IntensityAugmentation.named(intensity_augmentation)
            self.validation_robot = RobotConfig(initial=validation_protocol)  # type: ignore[arg-type]
            self.simulation = SimulationConfig(initial_fraction=initial_fraction, max_corrections=max_corrections,
                                               initial_protocols=tuple_option(initial_protocols),
                                               corrective_kinds=tuple_option(corrective_kinds),
                                               perturbations=tuple_option(perturbations))
        except ValueError as error:
            raise UserInputError(f"invalid interactive task option: {error}.",
                                 fix="see 'sarcomakit tasks' for the options.") from None
        self.encoding = encoding
        self.scale_mm = float(scale_mm)
        self.single_channel = single_channel
        self.model_in_the_loop = float(model_in_the_loop)
        self.validation_rounds = int(validation_rounds)
        self.local_normalisation = local_normalisation
        self.initial_weights = initial_weights
        self.scale_range = tuple(float(v) for v in scale_range)
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise UserInputError(f"scale_range must be two numbers 0 < low <= high, got {scale_range}.",
                                 fix="e.g. --task-option scale_range=[0.33,1.5].")

    def image_channels(self, plan: Plan) -> int:
        """Image channels of the network input: one, or the plan's."""
        return 1 if self.single_channel else len(plan.channels)

    # ---------------------------------------------------------------- training
    def build_model(self, plan: Plan, config: TrainConfig) -> nn.Module:
        network = build_network(config.network, in_channels=self.image_channels(plan) + 3, out_channels=2,
                                patch_size=config.patch_size or plan.patch_size, **config.network_options)
        if self.initial_weights:
            load_initial_weights(network, self.initial_weights)
        return network

    def training_data(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                      length: int) -> torch.utils.data.Dataset:
        volumes = [CaseVolume(c, seed=config.seed + i) for i, c in enumerate(cases)]
        return InteractiveDataset(volumes, config.patch_size or plan.patch_size, length,
                                  spatial_augmentation=config.augmentation, intensity=self.intensity,
                                  simulation=self.simulation, single_channel=self.single_channel,
                                  encoding=self.encoding, scale_mm=self.scale_mm, spacing=plan.target_spacing,
                                  seed=config.seed, local_normalisation=self.local_normalisation,
                                  scale_range=self.scale_range)

    def objective(self, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig) -> Objective:
        return InteractiveObjective(n_channels=self.image_channels(plan), encoding=self.encoding,
                                    scale_mm=self.scale_mm, spacing=plan.target_spacing,
                                    model_in_the_loop=self.model_in_the_loop, simulation=self.simulation,
                                    seed=config.seed)

    # ---------------------------------------------------------------- validation and prediction
    def grid_model(self, model: nn.Module, plan: Plan, config: TrainConfig, device: torch.device) -> PlanGridModel:
        """The network as an interactive model on images already on the plan's grid."""
        return PlanGridModel(model, n_channels=self.image_channels(plan), encoding=self.encoding,  # type: ignore[arg-type]
                             scale_mm=self.scale_mm,
                             divisor=input_divisor(config.network, config.network_options,
                                                   config.patch_size or plan.patch_size), device=device,
                             local_normalisation=self.local_normalisation,
                             context_shape=config.patch_size or plan.patch_size)

    def validation_cases(self, cases: Sequence[PreprocessedCase]) -> list[InteractiveCase]:
        """Validation cases with an object; a one-channel network gets channel ``i % C`` of case ``i``."""
        out = []
        for i, case in enumerate(cases):
            if case.label is None or not np.any(case.label):
                continue
            data = np.asarray(case.data, dtype=np.float32)
            image = data[[i % data.shape[0]]] if self.single_channel else data
            out.append(InteractiveCase(case.case_id, image, np.asarray(case.label) > 0,
                                       tuple(case.geometry.array_spacing)))  # type: ignore[arg-type]
        return out

    def validate(self, model: nn.Module, cases: Sequence[PreprocessedCase], plan: Plan, config: TrainConfig,
                 device: torch.device) -> dict[str, float]:
        playable = self.validation_cases(cases)
        if not playable:
            return {"val_dice": float("nan")}
        evaluation = evaluate_interactive({"network": self.grid_model(model, plan, config, device)}, playable,
                                          n_rounds=self.validation_rounds, robot=self.validation_robot,
                                          seed=config.seed)
        curves = [record.dice for record in evaluation.records]
        curve = mean_curve(curves)
        return {"val_dice": float(curve[-1]), "val_dice_round1": float(curve[0]),
                "val_dice_auc": float(np.mean([dice_curve_auc(c) for c in curves]))}

    def infer(self, model: nn.Module, case: PreprocessedCase, plan: Plan, config: TrainConfig,
              device: torch.device, *, overlap: float, mirror_axes: Sequence[int] = ()) -> CaseOutput:
        raise UserInputError("an interactive run segments from prompts, not on its own.",
                             fix="use 'sarcomakit interactive evaluate' or an InteractiveSession with "
                                 "NetworkInteractiveModel.from_run.")


def load_initial_weights(network: nn.Module, source: str) -> None:
    """Load the weights of an interactive run folder (its first fold's best checkpoint) or of ``default`` into
    ``network``, for fine-tuning.

    Raises:
        UserInputError: no such run or checkpoint, or a network whose layers differ from the run's.
    """
    from pathlib import Path

    from sarcomakit.interactive.models import DEFAULT_MODEL, default_model_dir
    from sarcomakit.runs.checkpoint import load_checkpoint
    from sarcomakit.runs.folder import RunFolder

    folder = default_model_dir() if source == DEFAULT_MODEL else Path(source)
    checkpoints = RunFolder.open(folder).trained_folds("best")
    if not checkpoints:
        raise UserInputError("has no trained fold to start from.", path=folder,
                             fix="give an interactive run folder with fold_*/checkpoint_best.pt.")
    weights = load_checkpoint(checkpoints[min(checkpoints)])["model"]
    try:
        network.load_state_dict(weights, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise UserInputError(f"the initial weights do not fit this network ({first}).", path=folder,
                             fix="use the network and network options of that run (its config.json) and the same "
                                 "single_channel setting.") from None
