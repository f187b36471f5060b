"""Multi-task losses: Cox/Efron against torchsurv and lifelines, the risk memory, grade, weighting, partial labels."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from sarcomakit.evaluation.survival import harrell_c_index
from sarcomakit.losses.cox import CoxRiskMemory, cox_neg_partial_log_likelihood, cox_ph_loss
from sarcomakit.losses.grade import balanced_class_weights, grade_loss, grade_probabilities
from sarcomakit.losses.multitask import MultiTaskLoss, masked_task_losses
from sarcomakit.losses.weighting import FixedWeighting, UncertaintyWeighting

torch.set_num_threads(1)
# reading a loss value with float() while it still carries a graph is intended throughout
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")


def tied_survival(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    log_risk = torch.randn(n, generator=g, dtype=torch.float64)
    time = torch.randint(1, 8, (n,), generator=g).double()  # few distinct times: many ties
    event = (torch.rand(n, generator=g) < 0.6).double()
    event[0] = 1.0
    return log_risk, time, event


# ---------------------------------------------------------------------- Cox
def test_two_cases_without_ties_analytic():
    log_risk = torch.tensor([0.3, -0.5], dtype=torch.float64)
    expected = -(0.3 - math.log(math.exp(0.3) + math.exp(-0.5)))
    loss = cox_neg_partial_log_likelihood(log_risk, torch.tensor([1.0, 2.0]), torch.tensor([1.0, 1.0]), reduction="sum")
    assert loss.item() == pytest.approx(expected)  # the second death is alone in its risk set: log 1 = 0


def test_efron_tie_analytic():
    # two deaths tied at t=1, one case at risk later: Efron denominator (S)(S - D/2)
    eta = torch.tensor([0.2, 0.7, -0.1], dtype=torch.float64)
    s = eta.exp().sum()
    d = eta[:2].exp().sum()
    expected = -(eta[0] + eta[1] - torch.log(s) - torch.log(s - d / 2))
    loss = cox_neg_partial_log_likelihood(eta, torch.tensor([1.0, 1.0, 3.0]), torch.tensor([1, 1, 0]), reduction="sum")
    assert loss.item() == pytest.approx(float(expected))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", ["efron", "breslow"])
def test_log_space_cox_matches_torchsurv_value_and_gradient(seed, ties):
    pytest.importorskip("torchsurv")
    log_risk, time, event = tied_survival(40, seed)
    a = log_risk.clone().requires_grad_(True)
    b = log_risk.clone().requires_grad_(True)
    ours = cox_ph_loss(a, time, event, ties=ties, backend="torch")
    reference = cox_ph_loss(b, time, event, ties=ties, backend="torchsurv")
    ours.backward()
    reference.backward()
    # torchsurv accumulates in float32 whatever the input dtype
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    torch.testing.assert_close(a.grad, b.grad.to(a.grad.dtype), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("backend", "tolerance"), [("torch", 1e-9), ("torchsurv", 1e-6)])
def test_cox_loss_matches_lifelines_partial_log_likelihood(backend, tolerance):
    lifelines = pytest.importorskip("lifelines")
    if backend == "torchsurv":
        pytest.importorskip("torchsurv")
    rng = np.random.default_rng(0)
    x = rng.normal(size=60)
    time = np.ceil(rng.exponential(5 * np.exp(-0.8 * x)))  # integer days: tied death times
    event = (rng.uniform(size=60) < 0.7).astype(int)
    assert len(np.unique(time[event == 1])) < event.sum()
    fitter = lifelines.CoxPHFitter().fit(pd.DataFrame({"x": x, "T": time, "E": event}), "T", "E")
    beta = float(fitter.params_["x"])
    loss = cox_ph_loss(torch.tensor(beta * x), torch.tensor(time), torch.tensor(event), reduction="sum",
                       backend=backend)
    assert -loss.item() == pytest.approx(fitter.log_likelihood_, rel=tolerance)
    # lifelines' estimate maximises the likelihood: the gradient in beta vanishes there
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    cox_ph_loss(b * torch.tensor(x), torch.tensor(time), torch.tensor(event), reduction="sum",
                backend=backend).backward()
    assert abs(b.grad.item()) < 1e-3


def test_cox_loss_without_events_is_zero_with_a_gradient_path():
    log_risk = torch.randn(5, requires_grad=True)
    loss = cox_ph_loss(log_risk, torch.arange(1.0, 6.0), torch.zeros(5))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(log_risk.grad, torch.zeros(5))


def test_cox_loss_is_finite_for_extreme_log_risks():
    log_risk = torch.tensor([1000.0, -1000.0, 500.0, 0.0], requires_grad=True)
    loss = cox_ph_loss(log_risk, torch.tensor([1.0, 1.0, 2.0, 3.0]), torch.tensor([1.0, 1.0, 1.0, 0.0]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(log_risk.grad).all()
    # tie at t=1: 1000 + (-1000) - log S - log(S - D/2) with S ~ D ~ e^1000, i.e. -(2000 - log 2);
    # the death at t=2 has risk set {500, 0}: 500 - logsumexp(500, 0) ~ 0. Mean over three deaths.
    assert loss.item() == pytest.approx((2000 - math.log(2.0)) / 3, rel=1e-6)


def test_cox_loss_rejects_unknown_times():
    with pytest.raises(ValueError, match="finite"):
        cox_ph_loss(torch.zeros(2), torch.tensor([1.0, float("nan")]), torch.ones(2))


# ---------------------------------------------------------------------- risk memory
def synthetic_hazard(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    beta = torch.tensor([2.0, -1.5, 1.0, 0.0])  # oracle C-index about 0.88
    death = torch.empty(n).exponential_(1.0, generator=g) / torch.exp(x @ beta)
    censor = torch.empty(n).exponential_(0.5, generator=g)
    return x, torch.minimum(death, censor), (death <= censor).float(), beta


def train_batch_size_one(memory: CoxRiskMemory | None, epochs: int = 2) -> tuple[torch.nn.Linear, float]:
    x, time, event, _ = synthetic_hazard(160, seed=0)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1, bias=False)
    initial = model.weight.detach().clone()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.2)
    order_rng = np.random.default_rng(0)
    for _ in range(epochs):
        for i in order_rng.permutation(len(x)):
            log_risk = model(x[i:i + 1]).reshape(-1)
            if memory is None:
                loss = cox_ph_loss(log_risk, time[i:i + 1], event[i:i + 1])
            else:
                loss = memory.loss(log_risk, time[i:i + 1], event[i:i + 1], case_ids=[f"c{i}"]).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    x_test, t_test, e_test, _ = synthetic_hazard(300, seed=1)
    with torch.no_grad():
        c_index = harrell_c_index(t_test.numpy(), e_test.numpy(), model(x_test).reshape(-1).numpy())
    return model, c_index if not torch.equal(model.weight, initial) else float("nan")


def test_memory_lets_batch_size_one_learn_the_hazard_while_plain_cox_cannot():
    _, learned = train_batch_size_one(CoxRiskMemory(size=48))
    assert learned > 0.75
    _, plain = train_batch_size_one(None, epochs=1)
    assert math.isnan(plain)  # one case per batch: the partial likelihood is constant, weights never move


def test_memory_flags_no_events_and_replaces_cases_by_id():
    memory = CoxRiskMemory(size=3)
    out = memory.loss(torch.zeros(1, requires_grad=True), torch.tensor([5.0]), torch.tensor([0.0]), ["a"])
    assert not out.has_events and out.loss.item() == 0.0
    out.loss.backward()
    memory.loss(torch.tensor([0.5]), torch.tensor([2.0]), torch.tensor([1.0]), ["b"])
    memory.loss(torch.tensor([0.1]), torch.tensor([3.0]), torch.tensor([0.0]), ["a"])  # replaces "a"
    assert len(memory) == 2
    risk = torch.tensor([0.0], requires_grad=True)
    out = memory.loss(risk, torch.tensor([1.0]), torch.tensor([1.0]), ["c"], update=False)
    assert out.has_events and out.n_cases == 3 and out.n_events == 2 and len(memory) == 2
    expected = cox_neg_partial_log_likelihood(torch.tensor([0.0, 0.5, 0.1]), torch.tensor([1.0, 2.0, 3.0]),
                                                torch.tensor([1.0, 1.0, 0.0]))
    assert out.loss.item() == pytest.approx(float(expected), rel=1e-6)
    out.loss.backward()
    assert risk.grad is not None and float(risk.grad) != 0.0
    for i in range(5):
        memory.push(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([1.0]), [f"x{i}"])
    assert len(memory) == 3
    restored = CoxRiskMemory(size=3)
    restored.load_state_dict(memory.state_dict())
    assert restored.state_dict() == memory.state_dict()



def memory_with_three_cases() -> CoxRiskMemory:
    memory = CoxRiskMemory(size=16)
    memory.push(torch.tensor([0.3, -0.2, 0.1]), torch.tensor([1.0, 3.0, 5.0]), torch.tensor([1.0, 0.0, 1.0]),
                ["b", "c", "d"])
    return memory


def test_two_patches_of_one_case_are_one_death_not_two_tied_deaths():
    # case "a" died at t=2 and is in the batch once, then as two patches with the same log-risk
    once = memory_with_three_cases().loss(torch.tensor([0.4, -0.5]), torch.tensor([2.0, 4.0]),
                                          torch.tensor([1.0, 0.0]), ["a", "e"], update=False)
    twice = memory_with_three_cases().loss(torch.tensor([0.4, 0.4, -0.5]), torch.tensor([2.0, 2.0, 4.0]),
                                           torch.tensor([1.0, 1.0, 0.0]), ["a", "a", "e"], update=False)
    assert twice.loss.item() == pytest.approx(once.loss.item(), rel=1e-6)
    assert (twice.n_cases, twice.n_events) == (once.n_cases, once.n_events) == (5, 3)
    # counted per patch, "a" would be two tied deaths at t=2 that also sit twice in every risk set
    per_patch = cox_neg_partial_log_likelihood(torch.tensor([0.4, 0.4, -0.5, 0.3, -0.2, 0.1]),
                                               torch.tensor([2.0, 2.0, 4.0, 1.0, 3.0, 5.0]),
                                               torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0]))
    assert abs(twice.loss.item() - float(per_patch)) > 0.05


def test_patches_of_one_case_enter_with_their_mean_log_risk_and_share_its_gradient():
    patches = torch.tensor([0.1, 0.7, -0.5], requires_grad=True)
    merged = torch.tensor([0.4, -0.5], requires_grad=True)
    time, event = torch.tensor([2.0, 2.0, 4.0]), torch.tensor([1.0, 1.0, 0.0])
    memory = memory_with_three_cases()
    out = memory.loss(patches, time, event, ["a", "a", "e"])
    expected = memory_with_three_cases().loss(merged, time[1:], event[1:], ["a", "e"], update=False)
    assert out.loss.item() == pytest.approx(expected.loss.item(), rel=1e-6)
    out.loss.backward()
    expected.loss.backward()
    torch.testing.assert_close(patches.grad, torch.stack([merged.grad[0] / 2, merged.grad[0] / 2, merged.grad[1]]))
    # the batch entered the memory as one entry per case
    entries = {entry[0]: entry[1:] for entry in memory.state_dict()["entries"]}
    assert len(memory) == 5 and entries["a"] == pytest.approx((0.4, 2.0, 1.0))
    memory.push(torch.tensor([1.0, 3.0]), torch.tensor([6.0, 6.0]), torch.tensor([0.0, 0.0]), ["f", "f"])
    assert len(memory) == 6 and dict((e[0], e[1]) for e in memory.state_dict()["entries"])["f"] == 2.0


def test_patches_of_one_case_count_once_without_a_memory_too():
    def survival_loss(log_risk: list[float], ids: list[str]) -> float:
        times = {"a": 2.0, "b": 1.0, "c": 3.0}
        events = {"a": 1.0, "b": 1.0, "c": 0.0}
        losses, _, _ = masked_task_losses(
            {"log_risk": torch.tensor(log_risk)},
            {"survival_time": torch.tensor([times[i] for i in ids]), "event": torch.tensor([events[i] for i in ids]),
             "case_ids": ids})
        return float(losses["survival"])

    assert survival_loss([0.4, 0.4, 0.2, -0.1], ["a", "a", "b", "c"]) == pytest.approx(
        survival_loss([0.4, 0.2, -0.1], ["a", "b", "c"]), rel=1e-6)


def test_patches_of_one_case_with_different_survival_are_refused():
    with pytest.raises(ValueError, match="different survival"):
        CoxRiskMemory(4).loss(torch.zeros(2), torch.tensor([2.0, 3.0]), torch.tensor([1.0, 1.0]), ["a", "a"])


# ---------------------------------------------------------------------- grade
def test_nominal_grade_loss_matches_weighted_cross_entropy_and_ignores_unknown():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 3, generator=g)
    target = torch.tensor([0, 1, 2, 2, -1, 1, 2, -1])
    weights = torch.tensor([3.0, 1.5, 0.5])
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=-1)
    assert float(grade_loss(logits, target, weights)) == pytest.approx(float(expected), rel=1e-6)
    known = target >= 0
    assert float(grade_loss(logits, target)) == pytest.approx(float(F.cross_entropy(logits[known], target[known])))


def test_ordinal_grade_loss_and_probabilities():
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3], [-3.0, -4.0]])
    target = torch.tensor([1, 2, 0])
    above = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    expected = F.binary_cross_entropy_with_logits(logits, above, reduction="sum") / 3
    assert float(grade_loss(logits, target, ordinal=True)) == pytest.approx(float(expected), rel=1e-6)
    proba = grade_probabilities(torch.tensor([[2.0, -1.0], [-1.0, 2.0]]), ordinal=True)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(2))
    assert bool((proba >= 0).all())
    s = torch.sigmoid(torch.tensor([2.0, -1.0]))
    torch.testing.assert_close(proba[0], torch.stack([1 - s[0], s[0] - s[1], s[1]]))
    torch.testing.assert_close(grade_probabilities(torch.zeros(1, 3)), torch.full((1, 3), 1 / 3))
    with pytest.raises(ValueError, match="shape"):
        grade_loss(torch.zeros(2, 3), torch.tensor([0, 1]), ordinal=True)


def test_grade_loss_with_no_known_grade_is_zero_not_nan():
    logits = torch.randn(3, 3, requires_grad=True)
    loss = grade_loss(logits, torch.tensor([-1, -1, -1]), torch.tensor([1.0, 2.0, 3.0]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_balanced_class_weights_match_sklearn():
    from sklearn.utils.class_weight import compute_class_weight

    target = np.array([2, 2, 2, 2, 1, 1, 0, -1])
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 2]), y=target[target >= 0])
    np.testing.assert_allclose(balanced_class_weights(torch.tensor(target)).numpy(), expected, rtol=1e-6)
    assert balanced_class_weights(torch.tensor([2, 2]))[0] == 0.0


# ---------------------------------------------------------------------- weighting
def test_uncertainty_weighting_formula_and_optimum():
    weighting = UncertaintyWeighting(["seg", "surv"], forms={"surv": "regression"})
    with torch.no_grad():
        weighting.log_variances["seg"].fill_(0.4)
        weighting.log_variances["surv"].fill_(-0.2)
    total = weighting({"seg": torch.tensor(2.0), "surv": torch.tensor(3.0)})
    expected = math.exp(-0.4) * 2.0 + 0.2 + 0.5 * math.exp(0.2) * 3.0 - 0.1
    assert total.item() == pytest.approx(expected, rel=1e-6)
    # with a constant loss L, exp(-s) L + s/2 is minimised at s = log(2L)
    learner = UncertaintyWeighting(["seg"])
    optimiser = torch.optim.Adam(learner.parameters(), lr=0.05)
    for _ in range(600):
        optimiser.zero_grad()
        learner({"seg": torch.tensor(1.5)}).backward()
        optimiser.step()
    assert float(learner.log_variances["seg"]) == pytest.approx(math.log(3.0), abs=1e-2)
    assert learner.weights()["seg"] == pytest.approx(1 / 3.0, rel=1e-2)


def test_skipped_task_leaves_its_log_variance_alone():
    weighting = UncertaintyWeighting(["grade", "survival"])
    weighting({"grade": torch.tensor(1.0)}).backward()
    assert weighting.log_variances["survival"].grad is None
    with pytest.raises(KeyError):
        weighting({"other": torch.tensor(1.0)})


def test_fixed_weighting():
    weighting = FixedWeighting({"a": 2.0, "b": 0.5})
    assert float(weighting({"a": torch.tensor(1.0), "b": torch.tensor(4.0)})) == 4.0
    with pytest.raises(KeyError):
        weighting({"c": torch.tensor(1.0)})


# ---------------------------------------------------------------------- partial labels
def batch_outputs(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"segmentation": torch.randn(n, 2, 4, 4, 4, generator=g, requires_grad=True),
            "grade": torch.randn(n, 3, generator=g, requires_grad=True),
            "log_risk": torch.randn(n, 1, generator=g, requires_grad=True)}


def test_cases_contribute_only_to_tasks_they_have():
    outputs = batch_outputs()
    label = (torch.rand(4, 1, 4, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    targets = {"segmentation": label, "has_segmentation": torch.tensor([True, False, True, True]),
               "grade": torch.tensor([2, -1, 0, 1]),
               "survival_time": torch.tensor([10.0, float("nan"), 30.0, 5.0]),
               "event": torch.tensor([1.0, 1.0, 0.0, 1.0])}
    losses, skipped, counts = masked_task_losses(outputs, targets)
    assert skipped == [] and counts == {"segmentation": 3, "grade": 3, "survival": 3}
    keep = torch.tensor([0, 2, 3])
    assert float(losses["grade"]) == pytest.approx(float(F.cross_entropy(outputs["grade"][keep],
                                                                         targets["grade"][keep])))
    expected = cox_ph_loss(outputs["log_risk"].reshape(-1)[keep], targets["survival_time"][keep],
                           targets["event"][keep])
    assert float(losses["survival"]) == pytest.approx(float(expected))
    # changing what an unlabelled case predicts changes nothing
    changed = {k: v.detach().clone() for k, v in outputs.items()}
    changed["grade"][1] += 5.0
    changed["log_risk"][1] -= 3.0
    again, _, _ = masked_task_losses(changed, targets)
    assert float(again["grade"]) == pytest.approx(float(losses["grade"]))
    assert float(again["survival"]) == pytest.approx(float(losses["survival"]))


@pytest.mark.parametrize("weighting", [None, UncertaintyWeighting(["segmentation", "grade", "survival"])])
def test_batch_without_any_label_gives_exact_zero_and_never_nan(weighting):
    outputs = batch_outputs(2)
    targets = {"grade": torch.tensor([-1, -1]), "survival_time": torch.tensor([float("nan"), 12.0]),
               "event": torch.tensor([1.0, float("nan")])}
    criterion = MultiTaskLoss(weighting=weighting, cox_memory=CoxRiskMemory(8))
    out = criterion(outputs, targets)
    assert sorted(out.skipped) == ["grade", "segmentation", "survival"]
    assert out.total.item() == 0.0 and all(float(v) == 0.0 for v in out.losses.values())
    out.total.backward()
    for tensor in outputs.values():
        assert torch.isfinite(tensor.grad).all()


def test_censored_only_batch_skips_survival_until_the_memory_holds_a_death():
    memory = CoxRiskMemory(16)
    criterion = MultiTaskLoss(cox_memory=memory)
    outputs = {"log_risk": torch.zeros(2, requires_grad=True)}
    first = criterion(outputs, {"survival_time": torch.tensor([4.0, 9.0]), "event": torch.tensor([0.0, 0.0])})
    assert first.skipped == ["survival"] and first.total.item() == 0.0 and len(memory) == 2
    second = criterion({"log_risk": torch.tensor([0.3], requires_grad=True)},
                       {"survival_time": torch.tensor([2.0]), "event": torch.tensor([1.0])})
    assert second.skipped == [] and second.total.item() > 0
    criterion.eval()
    criterion({"log_risk": torch.tensor([0.1])}, {"survival_time": torch.tensor([1.0]), "event": torch.tensor([1.0])})
    assert len(memory) == 3  # evaluation does not feed the memory


def test_weighted_total_uses_only_active_tasks():
    outputs = batch_outputs(3)
    targets = {"grade": torch.tensor([0, 2, 1]), "survival_time": torch.tensor([1.0, 2.0, 3.0]),
               "event": torch.tensor([0.0, 0.0, 0.0])}
    out = MultiTaskLoss(weighting=FixedWeighting({"segmentation": 1.0, "grade": 2.0, "survival": 1.0}))(
        outputs, targets)
    assert sorted(out.skipped) == ["segmentation", "survival"]
    assert out.total.item() == pytest.approx(2.0 * float(out.losses["grade"]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_log_risks_keep_times_apart(dtype):
    # 3001 and 3002 days are the same number in float16; the loss must still see two distinct times
    log_risk = torch.tensor([0.5, -0.2, 0.1], dtype=dtype, requires_grad=True)
    time, event = torch.tensor([3001.0, 3002.0, 4000.0]), torch.tensor([1.0, 1.0, 0.0])
    loss = cox_ph_loss(log_risk, time, event)
    expected = cox_ph_loss(log_risk.detach().double(), time.double(), event.double())
    assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert log_risk.grad.dtype == dtype and torch.isfinite(log_risk.grad.float()).all()
