"""A thin Flower app over the site function (optional: ``pip install 'flwr==1.42.0'``; tested with 1.42.0 only).

The hospitals' side is a ``ClientApp`` whose ``train`` and ``evaluate`` handlers call
:func:`~sarcomakit.federated.site.train_site` and :func:`~sarcomakit.federated.site.evaluate_site` on the site's
own manifest; the coordinating side is a ``ServerApp`` that runs one of Flower's Message-API strategies
(``strategy.start(...)``) and writes every round's global weights into an ordinary run folder, so
``sarcomakit predict`` takes it. Nothing here is a second implementation of training: what the simulator does per
site, these handlers do per SuperNode.

Each SuperNode names its local data in its node config (``--node-config``):
``manifest`` (the site's manifest), ``plan`` and ``config`` (the shared plan and TrainConfig JSON), ``cache`` (where
its preprocessed cases go) and optionally ``val-fraction`` and ``dp-epsilon``. The run config (``flwr run``'s
``pyproject.toml`` or ``--run-config``) gives ``strategy``, ``num-server-rounds``, ``local-steps``, ``min-nodes``,
``proximal-mu``, ``server-lr``, ``out`` (the global run folder, on the server) and ``plan``/``config``.

Differences from the in-process simulator: server aggregation is Flower's own strategies (FedAvg, FedProx, FedAdam,
FedYogi, FedMedian; FedAdam/FedYogi get beta1 0.9, beta2 0.99, tau 1e-3 as here, but Flower's own moment start);
FedProx's ``proximal-mu`` arrives in the round's config and the site adds the squared term
(:class:`~sarcomakit.federated.site.ProximalObjective`; Flower's docstring example forgets the square).
A site's DP accountant is kept in the ClientApp's ``context.state`` across rounds.

Not tested here against a SuperLink with SuperNodes (see ``docs/federated-learning.md``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

try:
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp import strategy as flower_strategy
except ImportError as exc:  # pragma: no cover - depends on the optional install
    raise ImportError("the Flower app needs flwr: pip install 'flwr==1.42.0' (sarcomakit itself does not need it)."
                      ) from exc

from sarcomakit.data.manifest import Manifest
from sarcomakit.federated.privacy import SitePrivacy
from sarcomakit.federated.simulation import split_site
from sarcomakit.federated.site import Site, evaluate_site, initial_weights, train_site
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase, preprocess_cohort
from sarcomakit.runs.checkpoint import save_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks import Task, build_task


def load_local_site(node_config: Mapping[str, Any]) -> tuple[Task, Plan, TrainConfig, Site]:
    """The site's task, plan, config and preprocessed cases, from its node config (module docstring)."""
    manifest = Manifest.load(str(node_config["manifest"]))
    plan = Plan.load(str(node_config["plan"]))
    config = TrainConfig.load(str(node_config["config"])) if "config" in node_config else TrainConfig()
    task = build_task(config, manifest)
    usable = [c.case_id for c in manifest.cases if c.label is not None or not task.requirements.needs_labels]
    cache = Path(str(node_config.get("cache", Path(str(node_config["manifest"])).parent / "preprocessed")))
    failures: dict[str, str] = {}
    if usable:
        outcome = preprocess_cohort(manifest.subset(usable), plan, cache, show_progress=False,
                                    allow_missing_channels=task.requirements.allow_missing_channels)
        failures = dict(outcome.failures)
    ids = [c for c in usable if c not in failures]
    train_ids, val_ids = split_site(ids, float(node_config.get("val-fraction", 0.2)), config.seed)
    name = str(node_config.get("site-name", manifest.source))
    site = Site(name, [PreprocessedCase.load(cache, c) for c in train_ids],
                [PreprocessedCase.load(cache, c) for c in val_ids])
    return task, plan, config, site


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


client_app = ClientApp()


def site_train(content: RecordDict, context: Context) -> RecordDict:
    """One round at a site: train from the received global weights; the reply holds the new weights, the number of
    training cases (``num-examples``, FedAvg's weight), the training loss and, under DP, epsilon so far."""
    task, plan, config, site = load_local_site(context.node_config)
    weights = content["arrays"].to_torch_state_dict()
    round_config = content["config"]
    privacy = _site_privacy(context, site, config, plan)
    update = train_site(task, plan, config, site, weights, steps=int(context.run_config["local-steps"]),
                        round_index=int(round_config.get("server-round", 1)) - 1,
                        mu=float(round_config.get("proximal-mu", 0.0)), privacy=privacy)
    metrics: dict[str, float | int] = {"train_loss": float(update.metrics["train_loss"]),
                                       "num-examples": update.n_cases}
    if privacy is not None:
        context.state["privacy"] = ConfigRecord({"json": json.dumps(privacy.state_dict())})
        metrics["epsilon"] = privacy.epsilon()
    return RecordDict({"arrays": ArrayRecord(update.weights), "metrics": MetricRecord(metrics)})


def site_evaluate(content: RecordDict, context: Context) -> RecordDict:
    """The global weights' validation metrics on the site's validation cases."""
    task, plan, config, site = load_local_site(context.node_config)
    scores = evaluate_site(task, plan, config, site, content["arrays"].to_torch_state_dict())
    # Flower weights metrics by "num-examples"; a site without validation cases reports weight 0 and no score
    metrics: dict[str, float | int] = {"num-examples": len(site.val_cases), **scores}
    return RecordDict({"metrics": MetricRecord(metrics)})


# The handlers only wrap the functions above: a Message can only be built inside a Flower run.
@client_app.train()
def train(msg: Message, context: Context) -> Message:
    """Flower's train handler: :func:`site_train` on the message's content."""
    return Message(site_train(msg.content, context), reply_to=msg)


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


def build_strategy(name: str, *, min_nodes: int, mu: float = 0.0, server_lr: float = 1e-2) -> Any:
    """Flower's strategy of that name, with ``min_nodes`` needed to train (a round goes on without the rest)."""
    common = {"min_train_nodes": min_nodes, "min_evaluate_nodes": min_nodes, "min_available_nodes": min_nodes,
              "evaluate_metrics_aggr_fn": weighted_metrics}
    if name == "fedavg":
        return flower_strategy.FedAvg(**common)
    if name == "fedprox":
        return flower_strategy.FedProx(proximal_mu=mu, **common)
    if name == "fedmedian":
        return flower_strategy.FedMedian(**common)
    if name in ("fedadam", "fedyogi"):
        cls = flower_strategy.FedAdam if name == "fedadam" else flower_strategy.FedYogi
        return cls(eta=server_lr, beta_1=0.9, beta_2=0.99, tau=1e-3, **common)
    raise ValueError(f"unknown strategy {name!r}")


server_app = ServerApp()


@server_app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the strategy and keep every round's global weights in the run folder ``out``."""
    run_config = context.run_config
    plan = Plan.load(str(run_config["plan"]))
    config = TrainConfig.load(str(run_config["config"])) if "config" in run_config else TrainConfig()
    task = build_task(config)
    out = Path(str(run_config["out"]))
    (out / "fold_0" / "rounds").mkdir(parents=True, exist_ok=True)
    plan.save(out / "plan.json")
    config.save(out / "config.json")
    extra = {"config": config.model_dump(), "plan": plan.model_dump(), "task": task.name}

    def keep(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        weights = arrays.to_torch_state_dict()
        save_checkpoint(out / "fold_0" / "rounds" / f"round_{server_round:03d}.pt",
                        {"model": weights, "round": server_round, **extra})
        for name in ("checkpoint_last.pt", "checkpoint_best.pt"):
            save_checkpoint(out / "fold_0" / name, {"model": weights, "round": server_round, **extra})
        return None

    strategy = build_strategy(str(run_config.get("strategy", "fedavg")), min_nodes=int(run_config.get("min-nodes", 2)),
                              mu=float(run_config.get("proximal-mu", 0.0)),
                              server_lr=float(run_config.get("server-lr", 1e-2)))
    strategy.start(grid=grid, initial_arrays=ArrayRecord(initial_weights(task, plan, config)),
                   num_rounds=int(run_config.get("num-server-rounds", 3)), evaluate_fn=keep)
