"""MIL models: shapes, attention normalisation, gradients, determinism, CLAM instance loss."""

from __future__ import annotations

import pytest
import torch

from sarcomakit.core.errors import UserInputError
from sarcomakit.pathology.mil.models import (
    CLAMSB,
    available_mil_models,
    build_mil_model,
    mil_loss,
    smooth_top1_svm_loss,
)

IN_DIM, N_CLASSES = 32, 3


@pytest.mark.parametrize("name", ["abmil", "clam_sb", "transmil"])
@pytest.mark.parametrize("n_instances", [1, 7, 500])
def test_forward_backward_on_bags_of_varying_size(name: str, n_instances: int) -> None:
    torch.manual_seed(0)
    model = build_mil_model(name, in_dim=IN_DIM, n_classes=N_CLASSES)
    model.train()
    bag = torch.randn(n_instances, IN_DIM)
    label = torch.tensor([2])
    out = model(bag, label=label)
    assert out["logits"].shape == (1, N_CLASSES)
    assert out["attention"].shape == (1, n_instances)
    assert torch.all(out["attention"] >= 0)
    torch.testing.assert_close(out["attention"].sum(dim=1), torch.ones(1))
    loss = mil_loss(model, out, label)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    first_layer = next(model.parameters())
    assert first_layer.grad is not None and first_layer.grad.abs().sum() > 0


@pytest.mark.parametrize("name", available_mil_models())
def test_batched_bags_and_eval_determinism(name: str) -> None:
    torch.manual_seed(1)
    model = build_mil_model(name, in_dim=IN_DIM, n_classes=N_CLASSES).eval()
    bags = torch.randn(2, 9, IN_DIM)
    with torch.no_grad():
        first = model(bags)
        second = model(bags)
        single = model(bags[1])
    torch.testing.assert_close(first["logits"], second["logits"])
    torch.testing.assert_close(first["attention"].sum(dim=1), torch.ones(2))
    torch.testing.assert_close(first["logits"][1:], single["logits"], atol=1e-5, rtol=1e-5)


def test_attention_is_permutation_equivariant_for_abmil() -> None:
    torch.manual_seed(2)
    model = build_mil_model("abmil", in_dim=IN_DIM, n_classes=2).eval()
    bag = torch.randn(20, IN_DIM)
    perm = torch.randperm(20)
    with torch.no_grad():
        a, b = model(bag), model(bag[perm])
    torch.testing.assert_close(a["logits"], b["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a["attention"][0, perm], b["attention"][0])


def test_smooth_svm_loss_matches_hinge_limit() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 0.5]])
    target = torch.tensor([0, 0])
    # As tau -> 0 the loss tends to mean(max_j(s_j + alpha [j != y]) - s_y) = mean(0, 1.5).
    loss = smooth_top1_svm_loss(logits, target, alpha=1.0, tau=1e-3)
    assert loss.item() == pytest.approx(0.75, abs=1e-3)


def test_clam_instance_loss_uses_in_and_out_of_class_pseudo_labels() -> None:
    torch.manual_seed(3)
    model = CLAMSB(IN_DIM, N_CLASSES, k_sample=2).train()
    out = model(torch.randn(10, IN_DIM), label=torch.tensor([1]))
    assert out["instance_loss"].ndim == 0 and out["instance_loss"] > 0
    out["instance_loss"].backward()
    for head in model.instance_classifiers:  # every head gets a gradient in the subtyping setting
        assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0
    loss = mil_loss(model, out, torch.tensor([1]))
    ce = torch.nn.functional.cross_entropy(out["logits"], torch.tensor([1]))
    assert loss.item() == pytest.approx(0.7 * ce.item() + 0.3 * out["instance_loss"].item(), rel=1e-5)


def test_empty_bag_and_unknown_model_are_clear_errors() -> None:
    model = build_mil_model("abmil", in_dim=IN_DIM, n_classes=2)
    with pytest.raises(ValueError, match="empty bag"):
        model(torch.zeros(0, IN_DIM))
    with pytest.raises(UserInputError, match="unknown MIL model"):
        build_mil_model("nope", in_dim=IN_DIM, n_classes=2)
