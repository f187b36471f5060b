"""Aggregators against hand computations; FedProx's proximal term against its analytic value and gradient."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sarcomakit.core.errors import UserInputError
from sarcomakit.federated.aggregators import FedAdam, FedAvg, FedMedian, FedYogi, SiteUpdate, build_aggregator
from sarcomakit.federated.site import ProximalObjective, proximal_term
from sarcomakit.tasks.base import LossOutput, Objective


def update(values: list[float], n: int, site: str = "s") -> SiteUpdate:
    return SiteUpdate(site=site, weights={"w": torch.tensor(values), "count": torch.tensor(7)}, n_cases=n,
                      metrics={})


GLOBAL = {"w": torch.tensor([0.0, 0.0]), "count": torch.tensor(3)}


def test_fedavg_weights_sites_by_their_cases_and_keeps_integer_buffers() -> None:
    result = FedAvg().aggregate(GLOBAL, [update([1.0, 2.0], 1), update([3.0, 6.0], 3)])
    torch.testing.assert_close(result["w"], torch.tensor([2.5, 5.0]))  # (1*1 + 3*3)/4, (2 + 18)/4
    assert int(result["count"]) == 3
    assert build_aggregator("fedprox").aggregate(GLOBAL, [update([1.0, 2.0], 1), update([3.0, 6.0], 3)])[
        "w"].tolist() == [2.5, 5.0]


def test_fedmedian_is_the_coordinatewise_median_whatever_the_case_counts() -> None:
    odd = FedMedian().aggregate(GLOBAL, [update([1.0, -5.0], 100), update([10.0, 0.0], 1), update([3.0, 9.0], 1)])
    torch.testing.assert_close(odd["w"], torch.tensor([3.0, 0.0]))
    even = FedMedian().aggregate(GLOBAL, [update([1.0, 0.0], 1), update([2.0, 0.0], 1), update([3.0, 4.0], 1),
                                          update([10.0, 8.0], 1)])
    torch.testing.assert_close(even["w"], torch.tensor([2.5, 2.0]))  # numpy.median: mean of the middle two


@pytest.mark.parametrize(("cls", "expected"), [(FedAdam, (0.0990050488825424, 0.19801014628261754)),
                                               (FedYogi, (0.0990049998750062, 0.19850375621121422))])
def test_adaptive_server_optimisers_follow_reddi_et_al(cls: type, expected: tuple[float, float]) -> None:
    # by hand (eta 0.1, beta1 0.9, beta2 0.99, tau 1e-3, m0 = 0, v0 = tau^2): round 1, pseudo-gradient d = 1:
    # m = 0.1, Adam v = 0.99e-6 + 0.01, Yogi v = 1e-6 + 0.01 (v < d^2), w = 0.1 m / (sqrt(v) + tau);
    # round 2, d = 0.1: m = 0.09 + 0.01 = 0.1; Adam v = 0.99 v + 1e-4, Yogi v = v - 1e-4 (v > d^2)
    server = cls(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    start = {"w": torch.tensor([0.0], dtype=torch.float64)}
    first = server.aggregate(start, [SiteUpdate("a", {"w": torch.tensor([0.0], dtype=torch.float64)}, 1, {}),
                                     SiteUpdate("b", {"w": torch.tensor([1.5], dtype=torch.float64)}, 2, {})])
    assert first["w"].item() == pytest.approx(expected[0], rel=1e-12)
    target = first["w"] + 0.1
    restored = cls(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    restored.load_state_dict(server.state_dict())  # the moments survive a checkpoint
    second = restored.aggregate(first, [SiteUpdate("a", {"w": target.clone()}, 1, {})])
    assert second["w"].item() == pytest.approx(expected[1], rel=1e-12)


def test_unknown_strategy_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="fedavg"):
        build_aggregator("fedsgd")


class ZeroLoss(Objective):
    def forward(self, model: nn.Module, batch, device: torch.device) -> LossOutput:
        return LossOutput(model(batch["x"]).sum() * 0.0)


def test_proximal_term_is_half_mu_times_the_squared_distance_and_its_gradient_mu_times_the_difference() -> None:
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    anchor = {k: v.detach() + torch.randn_like(v) for k, v in model.state_dict().items()}
    mu = 0.3
    term = proximal_term(model, anchor, mu)
    distance = sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())
    assert float(term.detach()) == pytest.approx(mu / 2 * float(distance), rel=1e-6)  # squared, not the norm
    objective = ProximalObjective(ZeroLoss(), anchor, mu)
    output = objective(model, {"x": torch.ones(1, 3)}, torch.device("cpu"))
    assert output.parts["proximal"] == pytest.approx(float(term.detach()), rel=1e-6)
    output.total.backward()
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, mu * (parameter.detach() - anchor[name]))


def test_central_dp_clips_each_update_averages_uniformly_and_adds_noise_of_sigma_c_over_n() -> None:
    from sarcomakit.federated.aggregators import CentralDP

    start = {"w": torch.zeros(20_000), "count": torch.tensor(3)}
    small = torch.zeros(20_000)
    small[0] = 0.3  # norm 0.3: kept as it is
    large = torch.zeros(20_000)
    large[1] = 4.0  # norm 4: clipped to norm 1, i.e. 1.0 at index 1
    sites = [SiteUpdate("a", {"w": small, "count": torch.tensor(9)}, 1, {}),
             SiteUpdate("b", {"w": large, "count": torch.tensor(9)}, 100, {})]  # case counts do not weigh
    tiny = CentralDP(noise_multiplier=1e-9, clipping_norm=1.0).aggregate(start, sites)
    torch.testing.assert_close(tiny["w"][:2], torch.tensor([0.15, 0.5]), atol=1e-6, rtol=0)  # uniform mean
    assert int(tiny["count"]) == 3
    dp = CentralDP(noise_multiplier=2.0, clipping_norm=1.0, seed=1)
    noisy = dp.aggregate(start, sites)["w"][2:]  # coordinates where both clipped updates are 0: noise alone
    assert float(noisy.std()) == pytest.approx(2.0 * 1.0 / 2, rel=0.03) and abs(float(noisy.mean())) < 0.03
    again = CentralDP(noise_multiplier=2.0, clipping_norm=1.0, seed=1)
    torch.testing.assert_close(again.aggregate(start, sites)["w"][2:], noisy)  # seeded by seed and round
    second = dp.aggregate(start, sites)["w"][2:]
    assert not torch.equal(second, noisy) and dp.state_dict() == {"rounds": 2}
