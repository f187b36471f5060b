"""Training samples of the interactive network: intensity augmentation and simulated interaction states."""

from __future__ import annotations

import numpy as np
import pytest
from interactive_volumes import ellipsoid
from scipy import stats

from sarcomakit.interactive.augment import IntensityAugmentation, pick_channel
from sarcomakit.interactive.robot import RobotConfig, RobotUser
from sarcomakit.interactive.simulation import (
    InteractionState,
    SimulationConfig,
    add_correction,
    perturb,
    simulate_state,
)

OFF = {"p_remap": 0.0, "p_invert": 0.0, "p_gamma": 0.0, "p_bias": 0.0, "p_noise": 0.0, "p_channel_dropout": 0.0}


def patch(channels: int = 2) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(channels, 12, 24, 24)).astype(np.float32)
    image[:, 4:8, 8:16, 8:16] += 3.0
    return image


def test_augmentation_replays_with_its_generator_and_changes_the_contrast() -> None:
    augment = IntensityAugmentation()
    first, again = augment(patch(), np.random.default_rng(5)), augment(patch(), np.random.default_rng(5))
    assert np.array_equal(first, again) and first.dtype == np.float32
    outputs = [augment(patch(), np.random.default_rng(seed)) for seed in range(8)]
    assert not all(np.allclose(o, patch()) for o in outputs)
    assert all(np.isfinite(o).all() for o in outputs)


def test_monotone_remapping_keeps_the_order_of_intensities_and_inversion_reverses_it() -> None:
    image = patch(1)
    remapped = IntensityAugmentation(**{**OFF, "p_remap": 1.0})(image, np.random.default_rng(1))
    rho = stats.spearmanr(image.ravel(), remapped.ravel()).statistic
    assert rho > 0.999 and not np.allclose(remapped, image)
    inverted = IntensityAugmentation(**{**OFF, "p_invert": 1.0})(image, np.random.default_rng(1))
    assert stats.pearsonr(image.ravel(), inverted.ravel()).statistic == pytest.approx(-1.0, abs=1e-5)
    # the inverted channel keeps the original intensity window: the network sees the same kind of values
    np.testing.assert_allclose(np.percentile(inverted, (0.5, 99.5)), np.percentile(image, (0.5, 99.5)), atol=0.05)


def test_gamma_keeps_the_order_and_the_bias_field_is_smooth_and_multiplicative() -> None:
    image = patch(1)
    gamma = IntensityAugmentation(**{**OFF, "p_gamma": 1.0})(image, np.random.default_rng(2))
    assert not np.allclose(gamma, image) and stats.spearmanr(image.ravel(), gamma.ravel()).statistic > 0.999
    biased = IntensityAugmentation(**{**OFF, "p_bias": 1.0})(image, np.random.default_rng(2))
    low, high = np.percentile(image, (0.5, 99.5))
    field = ((biased - low) / (high - low) + 1) / ((image - low) / (high - low) + 1)
    assert field.std() > 0.01
    assert np.abs(np.diff(field, n=2, axis=-1)).max() < 0.02  # a coil field: no voxel-scale structure


def test_channel_dropout_zeroes_some_but_never_all_channels() -> None:
    augment = IntensityAugmentation(**{**OFF, "p_channel_dropout": 1.0})
    for seed in range(10):
        out = augment(patch(3), np.random.default_rng(seed))
        zeroed = [c for c in range(3) if not out[c].any()]
        assert 1 <= len(zeroed) <= 2


def test_named_strengths_and_single_channel_pick() -> None:
    assert IntensityAugmentation.named("none") is None
    assert IntensityAugmentation.named("light").p_remap == 0.0
    assert IntensityAugmentation.named("strong") == IntensityAugmentation()
    with pytest.raises(ValueError, match="unknown intensity augmentation"):
        IntensityAugmentation.named("extreme")
    image = patch(3)
    image[1] = 0.0  # a constant channel is never picked
    picks = {int(np.flatnonzero([np.array_equal(pick_channel(image, np.random.default_rng(s))[0], image[c])
                                 for c in range(3)])[0]) for s in range(20)}
    assert picks == {0, 2}


REFERENCE = ellipsoid((20, 40, 40), (10, 18, 21), (6, 12, 9))


@pytest.mark.parametrize("seed", range(12))
def test_simulated_prompts_lie_on_their_side_of_the_reference(seed: int) -> None:
    state = simulate_state(REFERENCE, np.random.default_rng(seed))
    assert state.positive.any()
    assert not (state.positive & ~REFERENCE).any()
    assert not (state.negative & REFERENCE).any()
    assert state.previous.shape == REFERENCE.shape and state.previous.dtype == bool


def test_initial_and_corrective_states_follow_the_configured_mixture() -> None:
    initial = [simulate_state(REFERENCE, np.random.default_rng(s), SimulationConfig(initial_fraction=1.0))
               for s in range(6)]
    assert not any(s.previous.any() for s in initial)
    corrective = [simulate_state(REFERENCE, np.random.default_rng(s),
                                 SimulationConfig(initial_fraction=0.0, perturbations=("dilate", "cut")))
                  for s in range(6)]
    assert all(s.previous.any() and not np.array_equal(s.previous, REFERENCE) for s in corrective)
    # corrections add prompts to the first ones
    assert np.mean([s.positive.sum() + s.negative.sum() for s in corrective]) > \
        np.mean([s.positive.sum() + s.negative.sum() for s in initial])


@pytest.mark.parametrize(("kind", "check"), [
    ("dilate", lambda m, r: (m >= r).all() and m.sum() > r.sum()),
    ("erode", lambda m, r: (m <= r).all() and m.sum() < r.sum()),
    ("cut", lambda m, r: (m <= r).all() and m.sum() < r.sum()),
    ("blob", lambda m, r: (m >= r).all() and m.sum() > r.sum()),
    ("empty", lambda m, r: not m.any()),
    ("shift", lambda m, r: m.sum() > 0 and not np.array_equal(m, r)),
])
def test_each_perturbation_makes_its_kind_of_error(kind, check) -> None:  # noqa: ANN001
    config = SimulationConfig(perturbations=(kind,))
    for seed in range(4):
        rng = np.random.default_rng(seed)
        if kind == "shift":
            mask = perturb(REFERENCE, rng, config)
            if np.array_equal(mask, REFERENCE):  # a zero offset was drawn (twice): allowed, try another
                continue
        else:
            mask = perturb(REFERENCE, rng, config)
        assert check(mask, REFERENCE), kind


def test_a_correction_of_the_models_answer_targets_its_largest_error() -> None:
    prediction = REFERENCE.copy()
    prediction[:, :, 21:] = False  # half the tumour missed
    start = InteractionState(previous=np.zeros_like(REFERENCE), positive=np.zeros_like(REFERENCE),
                             negative=np.zeros_like(REFERENCE))
    robot = RobotUser(RobotConfig(corrective="scribble"), seed=0)
    state = add_correction(start, REFERENCE, prediction, robot)
    assert np.array_equal(state.previous, prediction)
    assert state.positive.any() and not state.negative.any()
    assert (state.positive <= (REFERENCE & ~prediction)).all()


def test_bad_simulation_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="perturbations"):
        SimulationConfig(perturbations=("melt",))
    with pytest.raises(ValueError, match="initial_fraction"):
        SimulationConfig(initial_fraction=1.5)
