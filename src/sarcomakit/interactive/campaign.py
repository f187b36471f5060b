"""A simulated annotation campaign: which case should the radiologist annotate next?

Setting. A hospital has an interactive network and a pool of unlabelled scans. Each campaign round a
strategy picks ``per_round`` cases; the robot user annotates each interactively with the current
network until Dice reaches ``target_dice`` (at most ``max_interactions`` rounds, the number used is the
annotation cost); the network is then fine-tuned on every case annotated so far (``fine_tune_steps``
steps of the interactive task's own training); and the Dice the network reaches on held-out cases after
``eval_rounds`` robot rounds is recorded against the cumulative number of interactions. Each seed draws
its own held-out split, first labelled cases and robot, shared by the strategies (a paired comparison).

Strategies (scores of pool cases, the highest picked):

- ``random``: uniform, the reference every other strategy must beat;
- ``entropy``: MC dropout (Gal and Ghahramani 2016): the network's dropout layers are switched on at
  rate ``mc_dropout`` and ``mc_samples`` predictions are made from the robot's first prompts; the
  score is the mean binary entropy of the mean foreground probability over the window;
- ``variance``: the same samples, scored by MONAI's ``VarianceMetric`` (the mean voxel variance of the
  samples);
- ``coreset``: k-centre greedy on the network's bottleneck features pooled over the window (Sener and
  Savarese 2018): repeatedly the pool case farthest from every labelled or already picked case, so
  that the labelled set covers the feature space.

The network is fine-tuned in the plan's space on the preprocessed cases (the plan's resampling and
normalisation done once per case). A network trained without dropout gets dropout only for sampling,
a known weaker form of MC dropout; the report says which.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.manifest import Manifest
from sarcomakit.interactive.evaluate import InteractiveCase, evaluate_interactive
from sarcomakit.interactive.metrics import mean_curve, rounds_to_reach
from sarcomakit.interactive.network_model import PlanGridModel
from sarcomakit.interactive.prompts import rasterize_prompts
from sarcomakit.interactive.robot import RobotConfig, RobotUser
from sarcomakit.interactive.roi import Roi
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks.base import Task

STRATEGIES: tuple[str, ...] = ("random", "entropy", "variance", "coreset")
#: ``fine_tune(network, cases, steps, seed)``: trains ``network`` in place on the annotated cases.
FineTune = Callable[[nn.Module, Sequence["CampaignCase"], int, int], None]


@dataclass(frozen=True)
class CampaignConfig:
    """The campaign's settings (see the module docstring)."""

    strategies: tuple[str, ...] = STRATEGIES
    initial_cases: int = 2
    per_round: int = 2
    rounds: int = 3
    seeds: tuple[int, ...] = (0, 1, 2)
    test_fraction: float = 0.3
    target_dice: float = 0.90
    max_interactions: int = 10
    eval_rounds: int = 1
    fine_tune_steps: int = 20
    batch_size: int = 2
    learning_rate: float = 5e-4
    mc_samples: int = 8
    mc_dropout: float = 0.2
    robot: RobotConfig = field(default_factory=RobotConfig)

    def __post_init__(self) -> None:
        unknown = set(self.strategies) - set(STRATEGIES)
        if not self.strategies or unknown:
            raise UserInputError(f"unknown strategy {sorted(unknown) or 'none'}; choose among {', '.join(STRATEGIES)}.")
        for name in ("initial_cases", "per_round", "rounds", "max_interactions", "eval_rounds", "batch_size",
                     "mc_samples"):
            if int(getattr(self, name)) < 1:
                raise UserInputError(f"campaign {name} must be at least 1, got {getattr(self, name)}.")
        if not 0 < self.test_fraction < 1 or not 0 <= self.mc_dropout < 1 or self.fine_tune_steps < 0:
            raise UserInputError("test_fraction must be in (0, 1), mc_dropout in [0, 1), fine_tune_steps >= 0.")
        if not self.seeds:
            raise UserInputError("give at least one seed.")


@dataclass
class CampaignCase:
    """One labelled case preprocessed with the network's plan (its channels, label and grid)."""

    preprocessed: PreprocessedCase

    @property
    def case_id(self) -> str:
        return self.preprocessed.case_id

    @property
    def image(self) -> np.ndarray:
        return np.asarray(self.preprocessed.data, dtype=np.float32)

    @property
    def reference(self) -> np.ndarray:
        return np.asarray(self.preprocessed.label) > 0

    @property
    def spacing(self) -> tuple[float, float, float]:
        return tuple(self.preprocessed.geometry.array_spacing)  # type: ignore[return-value]

    def interactive(self) -> InteractiveCase:
        return InteractiveCase(self.case_id, self.image, self.reference, self.spacing)


def task_fine_tuner(task: Task, plan: Plan, config: TrainConfig, device: torch.device, *, learning_rate: float,
                    batch_size: int) -> FineTune:
    """Fine-tuning with the interactive task's own training samples and objective (AdamW, one process)."""
    from sarcomakit.training.trainer import Trainer

    def fine_tune(network: nn.Module, cases: Sequence[CampaignCase], steps: int, seed: int) -> None:
        settings = config.model_copy(update={"seed": seed, "num_workers": 0})
        preprocessed = [c.preprocessed for c in cases]
        dataset = task.training_data(preprocessed, plan, settings, steps * batch_size)
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
        objective = task.objective(preprocessed, plan, settings).to(device)
        optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=learning_rate)
        Trainer(network, objective, optimizer, loader, device=device, epochs=1).run_steps(steps)
        network.eval()

    return fine_tune




def run_campaign(grid_model: PlanGridModel, cases: Sequence[CampaignCase], fine_tune: FineTune,
                 config: CampaignConfig | None = None,
                 progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Simulate the campaign for every strategy and seed.

    Args:
        grid_model: the starting network on the plan's grid (its weights are never modified; each
            strategy and seed fine-tunes its own copy).
        cases: the cohort on the plan's grid (held-out and pool cases are drawn from it per seed).
        fine_tune: trains a network on annotated cases (:func:`task_fine_tuner`).
        config: the campaign's settings.
        progress: called with a short line after each campaign round.

    Returns:
        One row per (strategy, seed, round): ``n_labelled``, ``interactions`` (this round's),
        ``cumulative_interactions``, ``heldout_dice``, ``picked`` (case ids); round 0 is the start
        (the initial cases annotated, before any fine-tuning).
    """
    config = config or CampaignConfig()
    cases = list(cases)
    n_test = max(1, int(round(config.test_fraction * len(cases))))
    if len(cases) - n_test < config.initial_cases + config.per_round:
        raise UserInputError(f"{len(cases)} cases are too few for {n_test} held-out, {config.initial_cases} "
                             f"initial and {config.per_round} per round.", fix="use more cases or smaller numbers.")
    rows = []
    for seed in config.seeds:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(cases))
        test = [cases[i] for i in order[:n_test]]
        pool_start = [cases[i] for i in order[n_test:]]
        first = [pool_start[i] for i in rng.choice(len(pool_start), config.initial_cases, replace=False)]
        for strategy in config.strategies:
            rows += _one_campaign(grid_model, strategy, seed, test, pool_start, first, fine_tune, config, progress)
    return pd.DataFrame(rows)


def _one_campaign(grid_model: PlanGridModel, strategy: str, seed: int, test: list[CampaignCase],
                  pool_start: list[CampaignCase], first: list[CampaignCase], fine_tune: FineTune,
                  config: CampaignConfig, progress: Callable[[str], None] | None) -> list[dict]:
    model = copy.copy(grid_model)
    model.network = copy.deepcopy(grid_model.network)
    labelled: list[CampaignCase] = []
    pool = list(pool_start)
    rng = np.random.default_rng((seed, STRATEGIES.index(strategy)))
    rows, cumulative = [], 0
    picked = list(first)
    for campaign_round in range(config.rounds + 1):
        if campaign_round > 0:
            picked = choose(strategy, model, pool, labelled, config, rng, seed)
        cost = sum(annotation_cost(model, case, config, seed) for case in picked)
        cumulative += cost
        labelled += picked
        pool = [c for c in pool if c.case_id not in {p.case_id for p in picked}]
        if config.fine_tune_steps:
            fine_tune(model.network, labelled, config.fine_tune_steps, seed * 1000 + campaign_round)
        dice = heldout_dice(model, test, config, seed)
        rows.append({"strategy": strategy, "seed": seed, "round": campaign_round, "n_labelled": len(labelled),
                     "interactions": cost, "cumulative_interactions": cumulative, "heldout_dice": dice,
                     "picked": " ".join(c.case_id for c in picked)})
        if progress is not None:
            progress(f"{strategy} seed {seed} round {campaign_round}: {len(labelled)} labelled, {cumulative} "
                     f"interactions, held-out Dice {dice:.3f}")
        if not pool:
            break
    return rows


# ---------------------------------------------------------------------- annotation and evaluation
def annotation_cost(model: PlanGridModel, case: CampaignCase, config: CampaignConfig, seed: int) -> int:
    """Interactions the robot needs with ``model`` to reach ``target_dice`` on ``case`` (``max_interactions`` if
    never)."""
    evaluation = evaluate_interactive({"network": model}, [case.interactive()], n_rounds=config.max_interactions,
                                      robot=config.robot, seed=seed)
    reached = rounds_to_reach(evaluation.records[0].dice, config.target_dice, cap=config.max_interactions)
    return config.max_interactions if reached is None else reached


def heldout_dice(model: PlanGridModel, test: Sequence[CampaignCase], config: CampaignConfig, seed: int) -> float:
    """Mean Dice on the held-out cases after ``eval_rounds`` robot rounds."""
    evaluation = evaluate_interactive({"network": model}, [c.interactive() for c in test], n_rounds=config.eval_rounds,
                                      robot=config.robot, seed=seed)
    return float(mean_curve([r.dice for r in evaluation.records])[-1])


# ---------------------------------------------------------------------- strategies
def choose(strategy: str, model: PlanGridModel, pool: Sequence[CampaignCase], labelled: Sequence[CampaignCase],
           config: CampaignConfig, rng: np.random.Generator, seed: int) -> list[CampaignCase]:
    """The ``per_round`` pool cases the strategy picks."""
    k = min(config.per_round, len(pool))
    if strategy == "random":
        return [pool[i] for i in rng.choice(len(pool), k, replace=False)]
    if strategy == "coreset":
        features = {c.case_id: case_features(model, c, config, seed) for c in [*pool, *labelled]}
        return k_centre_greedy(pool, labelled, features, k)
    scores = []
    for case in pool:
        samples = mc_dropout_samples(model, case, config, seed)
        scores.append(uncertainty_score(samples, strategy))
    return [pool[i] for i in np.argsort(scores)[::-1][:k]]


def first_round_inputs(model: PlanGridModel, case: CampaignCase, config: CampaignConfig,
                       seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[slice, ...]]:
    """The window the network sees after the robot's first prompts on ``case``: image crop, prompt maps, slices."""
    prompts = RobotUser(config.robot, seed=seed).initial_prompts(case.reference)
    voxels = np.concatenate([p.covered_voxels() for p in prompts])
    shape = case.reference.shape
    margin = 2
    box = [(max(int(lo) - margin, 0), min(int(hi) + 1 + margin, n))
           for lo, hi, n in zip(voxels.min(axis=0), voxels.max(axis=0), shape, strict=True)]
    window = model.window(box, shape)
    region = Roi(tuple(w.start for w in window), tuple(w.stop for w in window))
    positive, negative = rasterize_prompts(prompts, shape, region)
    return case.image[(slice(None), *window)], positive, negative, window


def mc_dropout_samples(model: PlanGridModel, case: CampaignCase, config: CampaignConfig, seed: int) -> np.ndarray:
    """``mc_samples`` foreground probability maps of the first-round window with dropout on, ``(T, Z, Y, X)``."""
    image, positive, negative, _ = first_round_inputs(model, case, config, seed)
    dropouts = [m for m in model.network.modules() if isinstance(m, nn.Dropout)]
    if not dropouts:
        raise UserInputError("the network has no dropout layers for MC dropout.",
                             fix="use the random or coreset strategy with this network.")
    rates = [m.p for m in dropouts]
    generator_state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        for m in dropouts:
            m.p = m.p if m.p > 0 else config.mc_dropout
        samples = [model.foreground_probability(image, None, positive, negative, case.spacing, dropout=True)
                   for _ in range(config.mc_samples)]
    finally:
        for m, rate in zip(dropouts, rates, strict=True):
            m.p = rate
        torch.set_rng_state(generator_state)
    return np.stack(samples)


def uncertainty_score(samples: np.ndarray, strategy: str) -> float:
    """``entropy``: mean binary entropy of the mean probability; ``variance``: MONAI's ``VarianceMetric``."""
    if strategy == "entropy":
        mean = np.clip(samples.mean(axis=0), 1e-6, 1 - 1e-6)
        return float(np.mean(-(mean * np.log(mean) + (1 - mean) * np.log(1 - mean))))
    if strategy == "variance":
        from monai.metrics import VarianceMetric

        # (repeats, batch, channel, *spatial): one case, the foreground channel
        stacked = torch.from_numpy(samples[:, None, None].astype(np.float32))
        metric = VarianceMetric(include_background=True, spatial_map=False, scalar_reduction="mean")
        return float(metric(stacked).mean())
    raise ValueError(f"{strategy} is not an uncertainty strategy")


def case_features(model: PlanGridModel, case: CampaignCase, config: CampaignConfig, seed: int) -> np.ndarray:
    """The network's deepest feature map on the first-round window, averaged over space (one vector per case)."""
    image, positive, negative, _ = first_round_inputs(model, case, config, seed)
    bottleneck = _bottleneck(model.network)
    captured: list[torch.Tensor] = []
    handle = bottleneck.register_forward_hook(lambda _m, _i, output: captured.append(output.detach()))
    try:
        model.foreground_probability(image, None, positive, negative, case.spacing)
    finally:
        handle.remove()
    return captured[-1].float().mean(dim=tuple(range(2, captured[-1].ndim)))[0].cpu().numpy()


def _bottleneck(network: nn.Module) -> nn.Module:
    """The module with the most output channels among the convolutions: the U-Net's deepest encoder block."""
    convolutions = [m for m in network.modules() if isinstance(m, nn.Conv3d)]
    if not convolutions:
        raise UserInputError("the network has no 3D convolution to take features from.",
                             fix="use the random or an MC dropout strategy with this network.")
    return max(convolutions, key=lambda m: m.out_channels)


def k_centre_greedy(pool: Sequence[CampaignCase], labelled: Sequence[CampaignCase],
                    features: dict[str, np.ndarray], k: int) -> list[CampaignCase]:
    """Greedily the pool case farthest (Euclidean, features standardised) from every labelled or chosen case."""
    names = [c.case_id for c in [*pool, *labelled]]
    matrix = np.stack([features[n] for n in names])
    matrix = (matrix - matrix.mean(axis=0)) / (matrix.std(axis=0) + 1e-8)
    vectors = dict(zip(names, matrix, strict=True))
    centres = [vectors[c.case_id] for c in labelled]
    chosen: list[CampaignCase] = []
    remaining = list(pool)
    for _ in range(k):
        if centres:
            distances = [min(float(np.linalg.norm(vectors[c.case_id] - centre)) for centre in centres)
                         for c in remaining]
        else:
            distances = [float(np.linalg.norm(vectors[c.case_id])) for c in remaining]
        best = remaining.pop(int(np.argmax(distances)))
        chosen.append(best)
        centres.append(vectors[best.case_id])
    return chosen


def campaign_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and round: mean cumulative interactions and held-out Dice over seeds, with the range of the Dice."""
    grouped = frame.groupby(["strategy", "round"], sort=False)
    return grouped.agg(n_seeds=("seed", "nunique"), n_labelled=("n_labelled", "mean"),
                       cumulative_interactions=("cumulative_interactions", "mean"),
                       heldout_dice=("heldout_dice", "mean"), dice_min=("heldout_dice", "min"),
                       dice_max=("heldout_dice", "max")).reset_index()


def campaign_cases(manifest: Manifest, input_plan: Plan, channels: Sequence[str]) -> list[CampaignCase]:
    """The labelled cases of ``manifest`` preprocessed with ``input_plan``, the manifest's ``channels`` read as the
    plan's channels (in order).

    Raises:
        UserInputError: no labelled case, or a case that cannot be read or preprocessed.
    """
    from sarcomakit.core.io.image import read_image
    from sarcomakit.interactive.cases import labelled_cases
    from sarcomakit.planning.preprocess import preprocess_case

    out = []
    for case in labelled_cases(manifest):
        images = {name: read_image(case.images[source])
                  for name, source in zip(input_plan.channels, channels, strict=True)}
        assert case.label is not None
        pre = preprocess_case(images, input_plan, read_image(case.label), case_id=case.case_id)
        if pre.label is None or not np.any(pre.label):
            raise UserInputError(f"case {case.case_id} has an empty mask.", path=case.label)
        out.append(CampaignCase(pre))
    return out
