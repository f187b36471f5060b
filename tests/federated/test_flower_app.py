"""The Flower ClientApp's handlers over the site function (runs only where flwr 1.42 is installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

flwr = pytest.importorskip("flwr")

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict  # noqa: E402

from sarcomakit.federated import flower_app  # noqa: E402
from sarcomakit.federated.site import initial_weights  # noqa: E402
from sarcomakit.tasks.segmentation import SegmentationTask  # noqa: E402

from .cohorts import TINY, multi_site_cohort  # noqa: E402


def test_the_client_apps_train_handler_trains_the_sites_cases_from_the_global_weights(tmp_path: Path) -> None:
    manifest, plan = multi_site_cohort(tmp_path, ["a", "a", "a"])
    TINY.save(tmp_path / "config.json")
    start = initial_weights(SegmentationTask(), plan, TINY)
    context = Context(run_id=1, node_id=7, state=RecordDict(),
                      node_config={"manifest": str(manifest.source), "plan": str(tmp_path / "plan.json"),
                                   "config": str(tmp_path / "config.json"), "cache": str(tmp_path / "cache"),
                                   "val-fraction": 0.0},
                      run_config={"local-steps": 2, "num-server-rounds": 2})
    content = RecordDict({"arrays": ArrayRecord(start), "config": ConfigRecord({"server-round": 1,
                                                                                 "proximal-mu": 0.5})})
    reply = flower_app.site_train(content, context)  # a Message can only be built inside a Flower run
    assert reply["metrics"]["num-examples"] == 3 and reply["metrics"]["train_loss"] > 0
    weights = reply["arrays"].to_torch_state_dict()
    assert set(weights) == set(start)
    assert any(not torch.equal(weights[k], start[k]) for k in start)
    scores = flower_app.site_evaluate(RecordDict({"arrays": ArrayRecord(weights)}),
                                      Context(run_id=1, node_id=7, state=RecordDict(), run_config={},
                                              node_config={**context.node_config, "val-fraction": 0.34}))
    assert scores["metrics"]["num-examples"] == 1 and 0 <= scores["metrics"]["val_dice"] <= 1
    assert dict(flower_app.weighted_metrics([RecordDict({"m": MetricRecord({"num-examples": 0})})],
                                            "num-examples")) == {}  # no site validates: no division by zero
    other = RecordDict({"m": MetricRecord({"num-examples": 3, "val_dice": 0.5})})
    pooled = flower_app.weighted_metrics([scores, other], "num-examples")
    assert pooled["val_dice"] == pytest.approx((scores["metrics"]["val_dice"] + 3 * 0.5) / 4)
    assert flower_app.build_strategy("fedprox", min_nodes=3, mu=0.5).proximal_mu == 0.5
