"""Learnable preprocessing layers: gradients, monotonicity, identity initialisation, crop inverse, OBELISK offsets."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from sarcomakit.models import ComposedNetwork, build_network
from sarcomakit.models.preprocessing_layers import (
    LearnableWindow,
    LearnableZoom,
    LearnedResizer,
    MonotoneIntensity,
    NormaliserCNN,
    ObeliskNet,
    ObeliskSampling,
    ROICrop,
    fit_standard_landmarks,
    input_layer_specs,
)
from sarcomakit.planning.fingerprint import compute_fingerprint
from sarcomakit.planning.plan import make_plan, with_learnt_steps
from sarcomakit.planning.preprocess import preprocess_case
from tiny_cohorts import write_tiny_cohort

PERCENTILES = (2.0, 25.0, 50.0, 75.0, 98.0)  # on 64 voxels none falls on a sample: no kink under gradcheck


def _gradcheck(layer: nn.Module, x: torch.Tensor, output: Callable[[object], torch.Tensor] = lambda y: y) -> None:
    """gradcheck of the layer's output with respect to its input and every parameter (double precision)."""
    layer = layer.double()
    names = [n for n, p in layer.named_parameters() if p.requires_grad]
    params = [p.detach().clone().requires_grad_(True) for n, p in layer.named_parameters() if p.requires_grad]

    def run(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return output(functional_call(layer, dict(zip(names, values, strict=True)), (x,)))

    assert torch.autograd.gradcheck(run, (x.double().requires_grad_(True), *params), fast_mode=True, atol=1e-5)
    out = run(x.double(), *params)
    grads = torch.autograd.grad(out.square().sum(), params, allow_unused=True)
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), "no parameter receives a gradient"


def _x(channels: int = 2, size: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(1, channels, size, size, size, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def test_window_gradcheck() -> None:
    layer = LearnableWindow(2, [0], low=[-1.0], high=[1.0], mean=[0.0], std=[0.5], windows=2, sharpness=5.0)
    _gradcheck(layer, _x())


def test_monotone_gradcheck() -> None:
    _gradcheck(MonotoneIntensity(2, percentiles=PERCENTILES), _x())


def test_normaliser_gradcheck() -> None:
    layer = NormaliserCNN(2, hidden=2)
    nn.init.normal_(layer.correction[-1].weight, std=0.1)  # away from its zero start, so every weight matters
    _gradcheck(layer, _x())


def test_resizer_gradcheck() -> None:
    layer = LearnedResizer(2, scale=(1.5, 1.0, 0.75), hidden=2)
    nn.init.normal_(layer.residual[-1].weight, std=0.1)
    _gradcheck(layer, _x())


def test_zoom_gradcheck() -> None:
    layer = LearnableZoom(2, initial=(1.1, 0.9, 1.2))  # off the voxel centres, where trilinear has kinks
    _gradcheck(layer, _x(), output=lambda y: y)


def test_roi_gradcheck() -> None:
    layer = ROICrop(2, hidden=2)
    nn.init.normal_(layer.localisation[-1].weight, std=0.1)
    nn.init.normal_(layer.localisation[-1].bias, std=0.1)
    _gradcheck(layer, _x())


def test_obelisk_gradcheck() -> None:
    _gradcheck(ObeliskSampling(2, offsets=4, features=4, groups=2, stride=2), _x())


def test_monotone_layer_stays_monotone_under_training() -> None:
    """An objective that rewards an inverted intensity scale cannot fold the map: landmarks stay increasing."""
    layer = MonotoneIntensity(1, percentiles=PERCENTILES)
    x = torch.randn(2, 1, 6, 6, 6, generator=torch.Generator().manual_seed(1))
    before = layer.output_landmarks().detach().clone()
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.5)
    for _ in range(60):
        optimiser.zero_grad()
        loss = (layer(x) * x).mean()  # minimised by decreasing the map
        loss.backward()
        optimiser.step()
    landmarks = layer.output_landmarks().detach()
    assert not torch.allclose(landmarks, before)  # it trained
    assert bool((landmarks.diff(dim=1) > 0).all())
    mapped = layer.double()(x.double()).detach()
    for b in range(x.shape[0]):  # each image has its own landmarks: the map is monotone per image
        order = torch.argsort(x[b].flatten())
        assert bool((mapped[b].flatten()[order].diff() >= -1e-9).all())


@pytest.fixture(scope="module")
def cohort_plans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("cohort")
    manifest = write_tiny_cohort(root, n_cases=4)
    fingerprint = compute_fingerprint(manifest, num_samples_per_case=2000, show_progress=False)
    plan = make_plan(fingerprint, channel_kinds={"T1": "ct"}, patch_size=[16, 32, 32])
    return {"manifest": manifest, "plan": plan, "fingerprint": fingerprint}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def test_identity_initialised_intensity_layers_reproduce_the_plan(cohort_plans: dict) -> None:
    """Window (CT rule on T1), fitted monotone and normaliser (z-score on T2) vs the plan's output on one case."""
    manifest, plan = cohort_plans["manifest"], cohort_plans["plan"]
    fixed = with_learnt_steps(plan, ["spacing"])  # same grid for both: the intensity step is the only difference
    minimal = with_learnt_steps(plan, ["intensity", "spacing"])
    case, others = manifest.cases[0], manifest.cases[1:]
    reference = preprocess_case(case, fixed).data
    raw = preprocess_case(case, minimal).data
    x = torch.from_numpy(np.array(raw))[None]
    landmarks = [fit_standard_landmarks([preprocess_case(c, minimal).data[ch] for c in others]) for ch in (0, 1)]
    specs = input_layer_specs(["window", "monotone"], minimal, cohort_plans["fingerprint"], landmarks=landmarks)
    window_spec = next(s for s in specs if s["layer"] == "window")
    assert window_spec["channels"] == [0, 1]  # no CT/PET channel name: every channel is windowed
    window = LearnableWindow(2, channels=[0], low=window_spec["low"][:1], high=window_spec["high"][:1],
                             mean=window_spec["mean"][:1], std=window_spec["std"][:1])
    with torch.no_grad():
        windowed = window(x)[0, 0].numpy()
        standardised = MonotoneIntensity(2, channels=[1], landmarks=[landmarks[1]])(x)[0, 1].numpy()
        normalised = NormaliserCNN(2, channels=[1])(x)[0, 1].numpy()
    assert _correlation(windowed, reference[0]) >= 0.99
    assert np.abs(windowed - reference[0]).mean() < 0.1  # the plan's clipping and scaling, not just correlated
    assert _correlation(standardised, reference[1]) >= 0.99
    assert np.abs(standardised - reference[1]).mean() < 0.2
    np.testing.assert_allclose(normalised, reference[1], atol=1e-4)
    # a window that ignores the plan's percentiles clips differently: the test would notice
    wrong = LearnableWindow(2, channels=[0], low=[window_spec["mean"][0]], high=[window_spec["high"][0]],
                            mean=window_spec["mean"][:1], std=window_spec["std"][:1])
    with torch.no_grad():
        assert np.abs(wrong(x)[0, 0].numpy() - reference[0]).mean() > 0.1


def test_identity_initialised_spatial_layers_reproduce_the_plan(cohort_plans: dict) -> None:
    """Resizer (as the plan's resampling), zoom and ROI crop (as the minimal pipeline's native grid)."""
    manifest, fingerprint = cohort_plans["manifest"], cohort_plans["fingerprint"]
    case = manifest.cases[1]
    spacing = [float(s) for s in np.median(fingerprint.spacings, axis=0)]
    plan = make_plan(fingerprint, patch_size=[16, 32, 32], target_spacing=[spacing[0], 1.6 * spacing[1],
                                                                          1.6 * spacing[2]])
    resampled = preprocess_case(case, with_learnt_steps(plan, ["intensity"])).data
    native = preprocess_case(case, with_learnt_steps(plan, ["intensity", "spacing"])).data
    x = torch.from_numpy(np.array(native))[None]
    scale = [r / n for r, n in zip(resampled.shape[1:], native.shape[1:], strict=True)]
    assert any(abs(s - 1) > 0.1 for s in scale)  # the plan does resample this case
    with torch.no_grad():
        resized = LearnedResizer(2, scale=scale).transform(x)[0][0].numpy()
        zoomed = LearnableZoom(2, fixed_axes=[0])(x)[0].numpy()
        cropped = ROICrop(2)(x)[0].numpy()
    assert resized.shape == resampled.shape
    for channel in range(2):
        assert _correlation(resized[channel], resampled[channel]) >= 0.99
    np.testing.assert_allclose(zoomed, native, atol=1e-4)
    np.testing.assert_allclose(cropped, native, atol=1e-4)


def test_roi_crop_and_its_inverse_are_consistent() -> None:
    """The crop reads the box it claims; restoring puts values back where they came from, background outside."""
    size = 16
    coordinate = (torch.arange(size, dtype=torch.float64) + 0.5) / size * 2 - 1  # voxel centres in (-1, 1)
    ramp = coordinate.view(1, 1, 1, 1, size).expand(1, 1, size, size, size).contiguous()
    centre = torch.tensor([[0.0, 0.1, 0.25]], dtype=torch.float64)
    half = torch.tensor([[1.0, 0.6, 0.5]], dtype=torch.float64)
    crop = ROICrop.crop(ramp, centre, half)
    np.testing.assert_allclose(crop[0, 0, 4, 4, 2:-2].numpy(), (0.25 + 0.5 * coordinate[2:-2]).numpy(), atol=1e-6)
    layer = ROICrop(1).double()
    logits = torch.cat([-ramp, ramp], dim=1)
    restored = layer.restore(ROICrop.crop(logits, centre, half), (centre, half))
    inside = (coordinate > 0.25 - 0.5 + 0.15) & (coordinate < 0.25 + 0.5 - 0.15)
    np.testing.assert_allclose(restored[0, 1, 8, 8][inside].numpy(), ramp[0, 0, 8, 8][inside].numpy(), atol=1e-6)
    outside = (coordinate < 0.25 - 0.5 - 0.15) | (coordinate > 0.25 + 0.5 + 0.15)
    assert bool((restored[0, 0, 8, 8][outside] == layer.outside_logit).all())
    assert bool((restored[0, 1, 8, 8][outside] == 0).all())


def test_composed_network_restores_geometric_layers() -> None:
    """Zoom and ROI crop change the grid for the backbone; the network's output is back on the input grid."""
    zoom = LearnableZoom(1, initial=(1.0, 2.0, 2.0))
    net = ComposedNetwork([zoom], nn.Identity())
    grid = torch.meshgrid(*[torch.linspace(-1, 1, n) for n in (8, 16, 16)], indexing="ij")
    x = torch.sin(2 * grid[1] + grid[2])[None, None]  # smooth: zooming in and out again keeps it
    inner = zoom.transform(x)[0]
    assert not torch.allclose(inner, x, atol=1e-2)  # the backbone saw a magnified input
    np.testing.assert_allclose(net(x)[..., 4:12, 4:12].detach().numpy(), x[..., 4:12, 4:12].numpy(), atol=0.05)
    full = build_network("resunet", in_channels=2, out_channels=2, patch_size=(16, 32, 32), channels=[4, 8],
                         input_layers=[{"layer": "resizer", "scale": [1.0, 0.5, 0.5]}, {"layer": "roi"}])
    assert isinstance(full, ComposedNetwork)
    assert full(torch.randn(1, 2, 16, 32, 32)).shape == (1, 2, 16, 32, 32)


def test_obelisk_offsets_receive_gradients_and_move() -> None:
    net = ObeliskNet(2, 2, offsets=8, features=8, hidden=8)
    x = torch.randn(2, 2, 8, 16, 16, generator=torch.Generator().manual_seed(3))
    target = (x[:, :1] > 0.5).long().squeeze(1)
    before = net.sampling.offsets.detach().clone()
    optimiser = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(3):
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(net(x), target)
        loss.backward()
        assert net.sampling.offsets.grad is not None and float(net.sampling.offsets.grad.abs().sum()) > 0
        optimiser.step()
    assert not torch.allclose(net.sampling.offsets.detach(), before)
    hybrid = build_network("obelisk_unet", in_channels=2, out_channels=2, patch_size=(8, 16, 16), channels=(4, 8),
                           offsets=4, features=4)
    hybrid(x).sum().backward()
    assert float(hybrid.sampling.offsets.grad.abs().sum()) > 0


def test_unknown_input_layer_is_a_user_error() -> None:
    from sarcomakit.core.errors import UserInputError

    with pytest.raises(UserInputError, match="unknown input layer"):
        build_network("resunet", in_channels=1, out_channels=2, patch_size=(16, 16, 16),
                      input_layers=[{"layer": "nope"}])
