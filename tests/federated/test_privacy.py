"""Patient-level DP-SGD: per-patient clipping, the accountant across rounds against Opacus's own, refusals."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

opacus = pytest.importorskip("opacus")

from opacus.accountants import PRVAccountant, RDPAccountant  # noqa: E402

from sarcomakit.core.errors import UserInputError  # noqa: E402
from sarcomakit.federated.privacy import (  # noqa: E402
    PatientPatchDataset,
    PerPatientSegmentationObjective,
    SitePrivacy,
    check_private_task,
)
from sarcomakit.federated.simulation import FederatedSettings, simulate  # noqa: E402
from sarcomakit.models import build_network  # noqa: E402
from sarcomakit.tasks.multitask import MultiTaskTask  # noqa: E402

from .cohorts import TINY, multi_site_cohort  # noqa: E402

CPU = torch.device("cpu")


def fake_case(i: int) -> SimpleNamespace:
    rng = np.random.default_rng(i)
    label = np.zeros((16, 32, 32), np.uint8)
    label[4:12, 8 + i:20 + i, 8:24] = 1
    data = rng.normal(size=(2, 16, 32, 32)).astype(np.float32) + 2 * label
    return SimpleNamespace(case_id=f"p{i}", data=data, label=label)


def test_each_patients_gradient_is_clipped_on_its_own() -> None:
    torch.manual_seed(0)
    cases = [fake_case(i) for i in range(3)]
    plan = SimpleNamespace(patch_size=[16, 32, 32])
    dataset = PatientPatchDataset(cases, plan, TINY)  # type: ignore[arg-type]
    assert len(dataset) == 3  # one sample per patient: the privacy unit
    batch = torch.utils.data.default_collate([dataset[i] for i in range(3)])
    model = build_network("resunet", in_channels=2, out_channels=2, patch_size=[16, 32, 32],
                          **TINY.network_options)
    objective = PerPatientSegmentationObjective((2, 16, 32, 32))
    per_patient = []
    for i in range(3):  # each patient's own gradient, computed alone
        model.zero_grad()
        objective(model, [v[i:i + 1] for v in batch], CPU).total.backward()
        per_patient.append([p.grad.detach().clone() for p in model.parameters()])
    norms = [float(torch.sqrt(sum((g ** 2).sum() for g in grads))) for grads in per_patient]
    clip = min(norms) / 4
    assert all(n > clip for n in norms)
    site = SitePrivacy(n_patients=3, batch_size=3, noise_multiplier=0.0, max_grad_norm=clip, delta=1e-3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=3)
    private_model, private_optimizer, _, _ = site.make_private(model, optimizer, loader)
    private_optimizer.zero_grad()
    objective(private_model, batch, CPU).total.backward()
    private_optimizer.clip_and_accumulate()
    expected = torch.cat([sum(min(1.0, clip / (norms[i] + 1e-6)) * per_patient[i][k] for i in range(3)).ravel()
                          for k in range(len(per_patient[0]))])
    summed = torch.cat([p.summed_grad.ravel() for p in model.parameters()])
    assert float((summed - expected).norm() / expected.norm()) < 1e-4
    total = float(torch.sqrt(sum((p.summed_grad ** 2).sum() for p in model.parameters())))
    assert total <= 3 * clip * (1 + 1e-4)  # three patients, each contributing at most the clipping norm


def test_reported_epsilon_is_opacus_accountant_over_all_rounds(tmp_path: Path) -> None:
    manifest, plan = multi_site_cohort(tmp_path, ["a", "a", "a"])
    config = TINY.updated(batch_size=1)
    settings = FederatedSettings(strategy="fedavg", rounds=2, local_steps=2, val_fraction=0.0, dp_epsilon=8.0,
                                 dp_max_grad_norm=1.0)
    result = simulate(manifest, plan, tmp_path / "run", settings=settings, config=config)
    assert [row["status"] for row in result.history] == ["ok", "ok"]  # the site trained privately in both rounds
    recorded = json.loads((tmp_path / "run" / "privacy.json").read_text(encoding="utf-8"))
    assert recorded["unit"] == "patient"
    for name, n in (("a", 3),):
        site = recorded["sites"][name]
        delta, rate = 1 / (10 * n), 1 / n  # one expected patient per step
        assert site["delta"] == pytest.approx(delta) and site["sample_rate"] == pytest.approx(rate)
        noise = site["noise_multiplier"]
        prv, rdp = PRVAccountant(), RDPAccountant()
        prv.history = rdp.history = [(noise, rate, 4)]  # 2 rounds x 2 steps: one accountant, never restarted
        assert site["steps"] == 4
        assert site["epsilon"] == pytest.approx(prv.get_epsilon(delta=delta), rel=1e-6)
        assert site["epsilon_rdp"] == pytest.approx(rdp.get_epsilon(delta=delta), rel=1e-6)
        assert site["epsilon"] == pytest.approx(8.0, abs=0.1)  # the noise was chosen for the whole run
        one_round = PRVAccountant()
        one_round.history = [(noise, rate, 2)]
        assert one_round.get_epsilon(delta=delta) < site["epsilon"] - 1  # what a restarted accountant would say
        assert result.privacy[name]["epsilon"] == site["epsilon"]


def test_delta_above_one_over_ten_patients_and_the_cox_loss_are_refused() -> None:
    with pytest.raises(UserInputError, match="1/\\(10 N\\)"):
        SitePrivacy.plan(20, 4, target_epsilon=3.0, total_steps=10, delta=0.01)
    with pytest.raises(UserInputError, match="epsilon of 100000"):  # no endless noise search
        SitePrivacy.plan(20, 4, target_epsilon=1e5, total_steps=10)
    with pytest.raises(UserInputError, match="Cox"):
        check_private_task(MultiTaskTask())


def test_client_level_epsilon_is_the_gaussian_mechanisms_renyi_bound() -> None:
    """Without sampling, r rounds of the Gaussian mechanism have Rényi DP r·α/(2σ²) (Mironov 2017); converted at
    delta as Opacus does (Balle et al. 2020), minimised over orders. 3 rounds at σ = 1, δ = 1e-3: about 7."""
    import numpy as np

    from sarcomakit.federated.privacy import central_dp_epsilon

    def analytic(sigma: float, rounds: int, delta: float) -> float:
        alpha = np.linspace(1.01, 64, 200_000)
        eps = rounds * alpha / (2 * sigma**2) - (np.log(delta) + np.log(alpha)) / (alpha - 1) \
            + np.log((alpha - 1) / alpha)
        return float(eps.min())

    for sigma, rounds, delta in ((1.0, 3, 1e-3), (2.0, 10, 1e-5), (0.8, 1, 1e-2)):
        assert central_dp_epsilon(sigma, rounds, delta) == pytest.approx(analytic(sigma, rounds, delta), rel=2e-2)
    assert central_dp_epsilon(1.0, 3, 1e-3) == pytest.approx(7.0, abs=0.05)
    assert central_dp_epsilon(1.0, 6, 1e-3) > central_dp_epsilon(1.0, 3, 1e-3)  # it composes
    assert central_dp_epsilon(1.0, 3, 1e-3, sample_rate=0.5) < central_dp_epsilon(1.0, 3, 1e-3)  # amplification
