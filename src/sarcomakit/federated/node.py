"""A deployed site's local data, from the node config its federated framework gives it (no framework import).

A Flower SuperNode (``--node-config``) or any other framework's client names the site's own files: ``manifest``
(the site's manifest), ``plan`` and ``config`` (the shared plan and TrainConfig JSON), ``cache`` (where its
preprocessed cases go) and optionally ``site-name`` and ``val-fraction``. Kept apart from the Flower app so that
tests and other frameworks (e.g. NVIDIA FLARE's Client API) build exactly the site a SuperNode trains.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sarcomakit.data.manifest import Manifest
from sarcomakit.federated.simulation import split_site
from sarcomakit.federated.site import Site
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase, preprocess_cohort
from sarcomakit.runs.config import TrainConfig
from sarcomakit.tasks import Task, build_task


def train_config(path: object) -> TrainConfig:
    """The TrainConfig at ``path``, or the defaults when the path is empty."""
    return TrainConfig.load(str(path)) if path else TrainConfig()


def load_local_site(node_config: Mapping[str, Any]) -> tuple[Task, Plan, TrainConfig, Site]:
    """The site's task, plan, config and preprocessed cases, from its node config (module docstring).

    Cases without a label (when the task needs one) and cases that fail preprocessing are left out; the rest are
    split into training and validation cases by :func:`~sarcomakit.federated.simulation.split_site`.
    """
    manifest = Manifest.load(str(node_config["manifest"]))
    plan = Plan.load(str(node_config["plan"]))
    config = train_config(node_config.get("config"))
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
