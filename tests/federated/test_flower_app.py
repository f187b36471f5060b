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
    assert reply["metrics"]["site-weight"] == 1  # central DP averages sites uniformly
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


def test_central_dp_wraps_a_uniform_fedavg_and_records_epsilon_each_round(tmp_path: Path) -> None:
    import json

    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    from sarcomakit.federated.privacy import central_dp_epsilon

    strategy = flower_app.build_strategy("fedavg", min_nodes=3, central_dp=(1.2, 0.3))
    assert isinstance(strategy, DifferentialPrivacyServerSideFixedClipping)
    assert (strategy.noise_multiplier, strategy.clipping_norm, strategy.num_sampled_clients) == (1.2, 0.3, 3)
    assert strategy.strategy.weighted_by_key == "site-weight"  # every site weighs the same in the mean
    assert flower_app.build_strategy("fedavg", min_nodes=3).weighted_by_key == "num-examples"  # without DP: cases
    with pytest.raises(ValueError, match="fedavg or fedprox"):
        flower_app.build_strategy("fedadam", min_nodes=3, central_dp=(1.0, 1.0))
    record = flower_app.central_dp_recorder(tmp_path / "privacy.json", 1.2, 0.3, delta=1e-3)
    for server_round in (0, 1, 2):
        record(server_round)
    written = json.loads((tmp_path / "privacy.json").read_text(encoding="utf-8"))
    assert written["epsilon_by_round"] == {"1": central_dp_epsilon(1.2, 1, 1e-3), "2": central_dp_epsilon(1.2, 2, 1e-3)}
    assert written["epsilon"] == central_dp_epsilon(1.2, 2, 1e-3) and written["unit"] == "site"
