"""A thin Flower app over the site function (optional: ``flwr==1.42.0`` in its own layered venv; 1.42.0 only).

The hospitals' side is a ``ClientApp`` whose ``train`` and ``evaluate`` handlers call
:func:`~sarcomakit.federated.site.train_site` and :func:`~sarcomakit.federated.site.evaluate_site` on the site's
own manifest; the coordinating side is a ``ServerApp`` that runs one of Flower's Message-API strategies
(``strategy.start(...)``) and writes every round's global weights into an ordinary run folder, so
``sarcomakit predict`` takes it. Nothing here is a second implementation of training: what the simulator does per
site, these handlers do per SuperNode.

Each SuperNode names its local data in its node config (``--node-config``):
``manifest`` (the site's manifest), ``plan`` and ``config`` (the shared plan and TrainConfig JSON), ``cache`` (where
its preprocessed cases go) and optionally ``site-name``, ``val-fraction`` and ``dp-epsilon``. The run config
(the app's ``pyproject.toml``, :mod:`~sarcomakit.federated.flower_project`, or ``flwr run --run-config``) gives
``strategy``, ``num-server-rounds``, ``local-steps``, ``min-nodes``, ``fraction-evaluate``, ``proximal-mu``,
``server-lr``, ``out`` (the global run folder, on the server), ``plan``/``config`` and the SecAgg+ options.

The server writes ``fold_0/history.csv``: one row per site and round with the site's name, its node id, the cases
it trained on, its training loss and the bytes each way, so a run shows which sites' updates reached the server.

**Secure aggregation** (run config ``secure-aggregation = true``): Flower 1.42 has SecAgg+ only on its legacy
workflow path, so the server then runs ``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` with the
legacy FedAvg, and the ClientApp's ``secaggplus_mod`` masks each site's case-weighted weights before they
leave; the server unmasks only their sum. Each weight is clipped to ``[-clipping-range, clipping-range]`` and
stochastically quantised to ``quantization-range`` levels, so the aggregate equals FedAvg's within about
``n_sites * 2 * clipping-range / quantization-range / (total cases / max-weight)``. Only FedAvg, and no DP or
FedProx, is combined with it here.

Differences from the in-process simulator: server aggregation is Flower's own strategies (FedAvg, FedProx, FedAdam,
FedYogi, FedMedian; FedAdam/FedYogi get beta1 0.9, beta2 0.99, tau 1e-3 as here, but Flower's own moment start);
FedProx's ``proximal-mu`` arrives in the round's config and the site adds the squared term
(:class:`~sarcomakit.federated.site.ProximalObjective`; Flower's docstring example forgets the square).
A site's DP accountant is kept in the ClientApp's ``context.state`` across rounds. There is no resume.

**Client-level (central) DP** (run config ``central-dp-noise`` > 0, ``central-dp-clip``, ``central-dp-delta``): Flower's
``DifferentialPrivacyServerSideFixedClipping`` around FedAvg/FedProx with a uniform mean over the sites; the
server writes ``privacy.json`` with epsilon after every round (unit: a site). Not combined with SecAgg+ here.

Tested against a localhost SuperLink with three SuperNodes (``tests/federated/test_flower_deployment.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.clientapp.typing import ClientAppCallable
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp import strategy as flower_strategy
except ImportError as exc:  # pragma: no cover - depends on the optional install
    raise ImportError("the Flower app needs flwr: pip install 'flwr==1.42.0' (sarcomakit itself does not need it)."
                      ) from exc

import numpy as np
import torch

from sarcomakit.core.io.atomic import write_json
from sarcomakit.federated.aggregators import Weights
from sarcomakit.federated.node import load_local_site, train_config
from sarcomakit.federated.privacy import SitePrivacy, central_dp_summary
from sarcomakit.federated.simulation import write_history
from sarcomakit.federated.site import Site, evaluate_site, initial_weights, train_site
from sarcomakit.planning.plan import Plan
from sarcomakit.runs.checkpoint import save_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks import build_task

# where Flower's SecAgg+ protocol messages carry their stage (flwr.common.secure_aggregation.secaggplus_constants)
SECAGG_RECORD = "secaggplus_configs"


def _site_privacy(context: Context, site: Site, config: TrainConfig, plan: Plan) -> SitePrivacy | None:
    """The site's DP state: from ``context.state`` (kept across rounds), or planned on the first round."""
    if "dp-epsilon" not in context.node_config:
        return None
    if "privacy" in context.state:
        return SitePrivacy.from_state(json.loads(str(context.state["privacy"]["json"])))
    rounds = int(context.run_config["num-server-rounds"])
    return SitePrivacy.plan(len(site.train_cases), config.batch_size or plan.batch_size,
                            target_epsilon=float(context.node_config["dp-epsilon"]),
                            total_steps=rounds * int(context.run_config["local-steps"]))


def site_train(content: RecordDict, context: Context) -> RecordDict:
    """One round at a site: train from the received global weights; the reply holds the new weights, the number of
    training cases (``num-examples``, FedAvg's weight), the training loss, under DP epsilon so far, and the
    site's name (a config record, for the server's history)."""
    task, plan, config, site = load_local_site(context.node_config)
    weights = content["arrays"].to_torch_state_dict()
    round_config = content["config"]
    privacy = _site_privacy(context, site, config, plan)
    update = train_site(task, plan, config, site, weights, steps=int(context.run_config["local-steps"]),
                        round_index=int(round_config.get("server-round", 1)) - 1,
                        mu=float(round_config.get("proximal-mu", 0.0)), privacy=privacy)
    # "site-weight": every site weighs the same in central DP's uniform mean (whose sensitivity is clip / n)
    metrics: dict[str, float | int] = {"train_loss": float(update.metrics["train_loss"]),
                                       "num-examples": update.n_cases, "site-weight": 1}
    if privacy is not None:
        context.state["privacy"] = ConfigRecord({"json": json.dumps(privacy.state_dict())})
        metrics["epsilon"] = privacy.epsilon()
    return RecordDict({"arrays": ArrayRecord(update.weights), "metrics": MetricRecord(metrics),
                       "site": ConfigRecord({"name": site.name})})


def site_evaluate(content: RecordDict, context: Context) -> RecordDict:
    """The global weights' validation metrics on the site's validation cases."""
    task, plan, config, site = load_local_site(context.node_config)
    scores = evaluate_site(task, plan, config, site, content["arrays"].to_torch_state_dict())
    # Flower weights metrics by "num-examples"; a site without validation cases reports weight 0 and no score
    metrics: dict[str, float | int] = {"num-examples": len(site.val_cases), **scores}
    return RecordDict({"metrics": MetricRecord(metrics)})


def site_train_legacy(content: RecordDict, context: Context) -> RecordDict:
    """:func:`site_train` for the legacy (SecAgg+) workflow: weights arrive and leave as an ordered list of
    arrays (``fitins``/``fitres``), named here in the order of the task's state dict."""
    from flwr.common import Code as StatusCode
    from flwr.common import FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common.recorddict_compat import fitres_to_recorddict, recorddict_to_fitins

    fitins = recorddict_to_fitins(content, keep_input=True)
    task, plan, config, site = load_local_site(context.node_config)
    weights = named_weights(initial_weights(task, plan, config), parameters_to_ndarrays(fitins.parameters))
    update = train_site(task, plan, config, site, weights, steps=int(context.run_config["local-steps"]),
                        round_index=int(fitins.config.get("server-round", 1)) - 1)
    arrays = [v.detach().cpu().numpy() for v in update.weights.values()]
    fitres = FitRes(Status(StatusCode.OK, "ok"), ndarrays_to_parameters(arrays), update.n_cases,
                    {"train_loss": float(update.metrics["train_loss"]), "site": site.name})
    return fitres_to_recorddict(fitres, keep_input=True)


def named_weights(template: Mapping[str, torch.Tensor], arrays: Iterable[np.ndarray]) -> Weights:
    """An ordered list of arrays as a state dict with ``template``'s names, dtypes and shapes."""
    values = list(arrays)
    if len(values) != len(template):
        raise ValueError(f"received {len(values)} arrays for a model with {len(template)} tensors")
    return {name: torch.as_tensor(np.asarray(value)).reshape(ref.shape).to(ref.dtype)
            for (name, ref), value in zip(template.items(), values, strict=True)}


def secure_aggregation_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Hand SecAgg+ protocol messages to Flower's ``secaggplus_mod`` (which masks the training reply), and every
    other message straight to the handlers."""
    if SECAGG_RECORD in msg.content.config_records:
        from flwr.client.mod import secaggplus_mod

        return secaggplus_mod(msg, context, call_next)
    return call_next(msg, context)


client_app = ClientApp(mods=[secure_aggregation_mod])


# The handlers only wrap the functions above: a Message can only be built inside a Flower run.
@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower's train handler: :func:`site_train`, or :func:`site_train_legacy` under SecAgg+."""
    legacy = "fitins.parameters" in msg.content.array_records
    return Message((site_train_legacy if legacy else site_train)(msg.content, context), reply_to=msg)


@client_app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Flower's evaluate handler: :func:`site_evaluate` on the message's content."""
    return Message(site_evaluate(msg.content, context), reply_to=msg)


def weighted_metrics(records: list[RecordDict], weight_key: str) -> MetricRecord:
    """The sites' metrics averaged with their ``weight_key`` (validation cases) as weights; sites with weight 0 (no
    validation cases) are left out, and no site with any gives an empty record (Flower's own average divides by
    the total weight, which is then 0)."""
    rows = [dict(next(iter(record.metric_records.values()))) for record in records if record.metric_records]
    weighted = [(float(row.get(weight_key, 0)), row) for row in rows]
    total = sum(w for w, _ in weighted)
    if total <= 0:
        return MetricRecord({})
    keys = sorted({k for _, row in weighted for k in row if k != weight_key})
    return MetricRecord({k: sum(w * float(row[k]) for w, row in weighted if k in row and w > 0)
                         / sum(w for w, row in weighted if k in row and w > 0) for k in keys
                         if any(k in row and w > 0 for w, row in weighted)})


class SiteHistory:
    """The server's record of which site sent what in each round, written to ``fold_0/history.csv``."""

    def __init__(self, path: Path, bytes_each_way: int) -> None:
        self.path = path
        self.bytes_each_way = bytes_each_way
        self.rows: list[dict[str, Any]] = []

    def add(self, server_round: int, node_id: int, content: RecordDict | None, error: str | None = None) -> None:
        row: dict[str, Any] = {"round": server_round, "node_id": node_id}
        if error is not None or content is None:
            row.update({"site": "", "status": "failed", "reason": error or "no reply"})
        else:
            site = content.config_records.get("site")
            metrics = dict(next(iter(content.metric_records.values()))) if content.metric_records else {}
            row.update({"site": str(site["name"]) if site else "", "status": "ok", "reason": "",
                        "n_train": metrics.pop("num-examples", None), "bytes_each_way": self.bytes_each_way,
                        **metrics})
        self.rows.append(row)
        write_history(self.path, self.rows)


def recording(cls: type, history: SiteHistory) -> type:
    """``cls`` (a Message-API strategy) that also records every training reply in ``history``."""

    class Recording(cls):
        def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
            replies = list(replies)
            for msg in replies:
                error = msg.error.reason if msg.has_error() else None
                history.add(server_round, msg.metadata.src_node_id, None if error else msg.content, error)
            return super().aggregate_train(server_round, replies)

    Recording.__name__ = cls.__name__
    return Recording


def build_strategy(name: str, *, min_nodes: int, mu: float = 0.0, server_lr: float = 1e-2,
                   fraction_evaluate: float = 1.0, history: SiteHistory | None = None,
                   central_dp: tuple[float, float] | None = None) -> Any:
    """Flower's strategy of that name, with ``min_nodes`` needed to train (a round goes on without the rest).

    ``central_dp = (noise_multiplier, clipping_norm)``: client-level DP, Flower's server-side fixed clipping
    around the strategy (each site's update clipped to the norm, Gaussian noise of standard deviation
    ``noise_multiplier * clipping_norm / min_nodes`` on the mean); FedAvg or FedProx only, averaging the sites
    uniformly (a case-weighted mean would let a large site move it by more than ``clipping_norm / n``)."""
    common = {"min_train_nodes": min_nodes, "min_evaluate_nodes": min_nodes if fraction_evaluate > 0 else 0,
              "min_available_nodes": min_nodes, "fraction_evaluate": fraction_evaluate,
              "evaluate_metrics_aggr_fn": weighted_metrics}
    if central_dp is not None:
        if name not in ("fedavg", "fedprox"):
            raise ValueError(f"central DP is combined with fedavg or fedprox, not {name!r}")
        common["weighted_by_key"] = "site-weight"
    options: dict[str, Any] = {}
    if name == "fedavg":
        cls = flower_strategy.FedAvg
    elif name == "fedprox":
        cls, options = flower_strategy.FedProx, {"proximal_mu": mu}
    elif name == "fedmedian":
        cls = flower_strategy.FedMedian
    elif name in ("fedadam", "fedyogi"):
        cls = flower_strategy.FedAdam if name == "fedadam" else flower_strategy.FedYogi
        options = {"eta": server_lr, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}
    else:
        raise ValueError(f"unknown strategy {name!r}")
    if history is not None:
        cls = recording(cls, history)
    strategy = cls(**options, **common)
    if central_dp is None:
        return strategy
    noise_multiplier, clipping_norm = central_dp
    return flower_strategy.DifferentialPrivacyServerSideFixedClipping(
        strategy, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm, num_sampled_clients=min_nodes)


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the strategy (or SecAgg+ FedAvg) and keep every round's global weights in the run folder ``out``."""
    run_config = context.run_config
    plan = Plan.load(str(run_config["plan"]))
    config = train_config(run_config.get("config"))
    task = build_task(config)
    out = Path(str(run_config["out"]))
    (out / "fold_0" / "rounds").mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    config.save(out / "config.json")
    extra = {"config": config.model_dump(), "plan": plan.model_dump(), "task": task.name}
    start = initial_weights(task, plan, config)
    history = SiteHistory(out / "fold_0" / "history.csv",
                          sum(v.numel() * v.element_size() for v in start.values()))

    def keep(server_round: int, weights: Weights) -> None:
        save_checkpoint(out / "fold_0" / "rounds" / f"round_{server_round:03d}.pt",
                        {"model": weights, "round": server_round, **extra})
        for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
            save_checkpoint(out / "fold_0" / name, {"model": weights, "round": server_round, **extra})

    rounds = int(run_config.get("num-server-rounds", 3))
    min_nodes = int(run_config.get("min-nodes", 2))
    noise = float(run_config.get("central-dp-noise", 0.0))
    central_dp = (noise, float(run_config.get("central-dp-clip", 1.0))) if noise > 0 else None
    if bool(run_config.get("secure-aggregation", False)):
        if central_dp is not None:
            raise ValueError("secure aggregation is not combined with central DP here: choose one")
        _run_secure(grid, context, start, rounds, min_nodes, keep, history)
        return
    strategy = build_strategy(str(run_config.get("strategy", "fedavg")), min_nodes=min_nodes,
                              mu=float(run_config.get("proximal-mu", 0.0)),
                              server_lr=float(run_config.get("server-lr", 1e-2)),
                              fraction_evaluate=float(run_config.get("fraction-evaluate", 1.0)), history=history,
                              central_dp=central_dp)
    record_privacy = None if central_dp is None else central_dp_recorder(
        out / "privacy.json", *central_dp, delta=float(run_config.get("central-dp-delta", 1e-3)))

    def keep_arrays(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        keep(server_round, arrays.to_torch_state_dict())
        if record_privacy is not None:
            record_privacy(server_round)
        return None

    strategy.start(grid=grid, initial_arrays=ArrayRecord(start), num_rounds=rounds, evaluate_fn=keep_arrays)


def central_dp_recorder(path: Path, noise_multiplier: float, clipping_norm: float, *,
                        delta: float) -> Callable[[int], None]:
    """A callback that writes ``path`` (``privacy.json``) after every round: the client-level epsilon spent so far
    (:func:`~sarcomakit.federated.privacy.central_dp_summary`; unit: a site, every site sampled each round)."""

    def record(server_round: int) -> None:
        write_json(path, central_dp_summary(noise_multiplier, clipping_norm, server_round, delta,
                                            mechanism="Gaussian; server-side fixed clipping of each site's update "
                                                      "(Flower's DifferentialPrivacyServerSideFixedClipping), "
                                                      "uniform mean"))

    return record


def _run_secure(grid: Grid, context: Context, start: Weights, rounds: int, min_nodes: int,
                keep: Callable[[int, Weights], None], history: SiteHistory) -> None:
    """FedAvg with SecAgg+ on Flower's legacy workflow (module docstring).

    The legacy strategy's ``aggregate_fit`` is where the server's own code meets the sites' results; under SecAgg+
    every result it receives carries the same, already unmasked sum. That is recorded per round in
    ``fold_0/secure_aggregation.json`` (``distinct_parameter_sets`` 1: no individual update reached it).
    """
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg as LegacyFedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    run_config = context.run_config
    if str(run_config.get("strategy", "fedavg")) != "fedavg" or float(run_config.get("proximal-mu", 0.0)) > 0:
        raise ValueError("secure aggregation is combined with FedAvg only (strategy = 'fedavg', proximal-mu = 0)")
    seen: list[dict[str, Any]] = []
    out = history.path.parent

    class SecureFedAvg(LegacyFedAvg):
        def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
            arrays = [parameters_to_ndarrays(fitres.parameters) for _, fitres in results]
            distinct = {tuple(hash(a.tobytes()) for a in params) for params in arrays}
            seen.append({"round": server_round, "results": len(results), "distinct_parameter_sets": len(distinct)})
            (out / "secure_aggregation.json").write_text(json.dumps(seen, indent=1))
            for proxy, fitres in results:
                content = RecordDict({"metrics": MetricRecord({"num-examples": int(fitres.num_examples),
                                                               **{k: float(v) for k, v in fitres.metrics.items()
                                                                  if isinstance(v, int | float)}}),
                                      "site": ConfigRecord({"name": str(fitres.metrics.get("site", ""))})})
                history.add(server_round, int(proxy.node_id) if hasattr(proxy, "node_id") else -1, content)
            for failure in failures:
                history.add(server_round, -1, None, str(failure))
            return super().aggregate_fit(server_round, results, failures)

    def evaluate(server_round: int, arrays: list[np.ndarray], _config: dict[str, Any]) -> None:
        keep(server_round, named_weights(start, arrays))
        return None

    strategy = SecureFedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=min_nodes,
                            min_available_clients=min_nodes, evaluate_fn=evaluate,
                            on_fit_config_fn=lambda server_round: {"server-round": server_round},
                            initial_parameters=ndarrays_to_parameters([v.numpy() for v in start.values()]))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    threshold = run_config.get("reconstruction-threshold", 2)
    shares = run_config.get("num-shares", 3)
    workflow = DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(
        num_shares=shares if isinstance(shares, float) and shares <= 1 else int(shares),
        reconstruction_threshold=threshold if isinstance(threshold, float) and threshold <= 1 else int(threshold),
        max_weight=float(run_config.get("max-weight", 1000.0)),
        clipping_range=float(run_config.get("clipping-range", 8.0)),
        quantization_range=int(run_config.get("quantization-range", 4194304))))
    workflow(grid, legacy)
