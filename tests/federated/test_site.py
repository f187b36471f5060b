"""The site function: deterministic local training, FedProx pulling towards the global weights, evaluation."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from sarcomakit.federated.site import Site, SiteSkipped, evaluate_site, initial_weights, train_site
from sarcomakit.tasks.segmentation import SegmentationTask

from .cohorts import TINY

PLAN = SimpleNamespace(patch_size=[16, 32, 32], batch_size=2, channels=["T1", "T2"], labels={"background": 0,
                                                                                             "tumour": 1})
CONFIG = TINY.updated(learning_rate=3e-2)


def fake_case(i: int) -> SimpleNamespace:
    rng = np.random.default_rng(i)
    label = np.zeros((16, 32, 32), np.uint8)
    label[4:12, 8 + i:20 + i, 8:24] = 1
    return SimpleNamespace(case_id=f"p{i}", data=rng.normal(size=(2, 16, 32, 32)).astype(np.float32) + 2 * label,
                           label=label)


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(sum(((a[k] - b[k]) ** 2).sum() for k in a if torch.is_floating_point(a[k])))


def test_local_training_is_deterministic_per_round_and_fedprox_stays_closer_to_the_global_weights() -> None:
    task = SegmentationTask()
    site = Site("a", [fake_case(i) for i in range(3)], [])  # type: ignore[list-item]
    start = initial_weights(task, PLAN, CONFIG)  # type: ignore[arg-type]

    def run(**kw):
        return train_site(task, PLAN, CONFIG, site, start, steps=3, **kw)  # type: ignore[arg-type]

    first, again, other_round = run(round_index=1), run(round_index=1), run(round_index=2)
    assert first.n_cases == 3 and np.isfinite(first.metrics["train_loss"])
    assert distance(first.weights, again.weights) == 0.0
    assert distance(first.weights, other_round.weights) > 0.0  # each round draws other patches
    proximal = run(round_index=1, mu=50.0)
    assert proximal.metrics["proximal"] > 0
    assert distance(proximal.weights, start) < 0.9 * distance(first.weights, start)


def test_a_site_without_training_cases_is_skipped_and_evaluation_uses_validation_cases() -> None:
    task = SegmentationTask()
    start = initial_weights(task, PLAN, CONFIG)  # type: ignore[arg-type]
    with pytest.raises(SiteSkipped, match="no training cases"):
        train_site(task, PLAN, CONFIG, Site("empty"), start, steps=1)  # type: ignore[arg-type]
    assert evaluate_site(task, PLAN, CONFIG, Site("none"), start) == {}  # type: ignore[arg-type]
    scores = evaluate_site(task, PLAN, CONFIG, Site("v", [], [fake_case(0)]), start)  # type: ignore[arg-type,list-item]
    assert set(scores) == {"val_dice"} and 0.0 <= scores["val_dice"] <= 1.0
