"""The in-process federated simulator: every site of one manifest, trained in turn on this machine, deterministic.

Sites are the values of a manifest column (``site`` by default). Each round, every site trains from the global
weights (:func:`~sarcomakit.federated.site.train_site`), the aggregator combines the updates, and the global
weights are evaluated on each site's validation cases. A site that cannot take part (no cases, no labels, cases
that failed preprocessing, e.g. channels that differ from the plan, or an error during its training) is skipped
with its reason logged, and the round goes on with the others; a round with no site at all stops the run
without touching the checkpoints.

The global run folder has the ordinary layout, so ``sarcomakit predict`` and ``report`` take it::

    RUN/
      plan.json  config.json  manifest.json  splits.json  provenance.json
      federated.json   the federated settings and each site's training and validation cases
      privacy.json     under DP: epsilon, delta, unit = patient, per site (PRV and RDP accountants)
      preprocessed/    the cache of preprocessed cases
      fold_0/
        checkpoint_last.pt   the latest round: global weights, server state, accountants (for --resume)
        checkpoint_best.pt   the round with the best case-weighted validation score (the latest without one)
        rounds/round_NNN.pt  every round's global weights
        history.csv  train.log  summary.json  task_state.json

A crashed run continues from ``checkpoint_last.pt`` with ``resume=True``; its settings (but the number of rounds)
and inputs must match what ``federated.json`` and ``provenance.json`` record.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape

from sarcomakit.core.device import select_device
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json, write_text
from sarcomakit.core.provenance import describe_value_change
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.federated.aggregators import STRATEGIES, CentralDP, SiteUpdate, Weights, build_aggregator
from sarcomakit.federated.privacy import SitePrivacy, central_dp_summary, check_private_task
from sarcomakit.federated.site import Site, evaluate_site, initial_weights, site_cases, train_site
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase, preprocess_cohort
from sarcomakit.runs.checkpoint import load_checkpoint, save_checkpoint
from sarcomakit.runs.config import TrainConfig
from sarcomakit.runs.folder import RunFolder, describe_run_changes, run_inputs
from sarcomakit.tasks import build_task

log = logging.getLogger(__name__)


class FederatedSettings(BaseModel):
    """The federated options of a simulated run (saved in ``federated.json``)."""

    strategy: str = "fedavg"
    rounds: int = Field(5, ge=1)
    local_steps: int = Field(10, ge=1)
    mu: float = Field(0.0, ge=0)
    site_column: str = "site"
    val_fraction: float = Field(0.2, ge=0, lt=1)
    server_lr: float | None = Field(None, gt=0)
    dp_epsilon: float | None = Field(None, gt=0)
    dp_delta: float | None = Field(None, gt=0, lt=1)
    dp_max_grad_norm: float = Field(1.0, gt=0)
    central_dp_noise: float | None = Field(None, gt=0)  # client-level DP: noise multiplier (None: off)
    central_dp_clip: float = Field(1.0, gt=0)  # client-level DP: L2 clipping norm of each site's update
    central_dp_delta: float = Field(1e-3, gt=0, lt=1)  # client-level DP: the delta epsilon is reported at


@dataclass
class SimulationResult:
    """Rounds run, the per-round history (one row per site and round) and the global checkpoint folder."""

    run_dir: Path
    rounds_run: int
    history: list[dict[str, Any]] = field(default_factory=list)
    privacy: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def skipped(self) -> list[dict[str, Any]]:
        """History rows of sites that did not take part in a round, with the reason."""
        return [row for row in self.history if row["status"] != "ok"]


def _site_of(case: Case, column: str) -> str | None:
    value = getattr(case, column, None) if column in ("site", "fold", "grade") else case.extra.get(column)
    return None if value is None or str(value).strip() == "" else str(value).strip()


def site_groups(manifest: Manifest, column: str) -> dict[str, list[str]]:
    """Case ids by site (sorted by site name); cases without a site are an error (which hospital holds them?)."""
    groups: dict[str, list[str]] = {}
    missing = []
    for case in manifest.cases:
        site = _site_of(case, column)
        if site is None:
            missing.append(case.case_id)
        else:
            groups.setdefault(site, []).append(case.case_id)
    if missing:
        raise UserInputError(f"{len(missing)} case(s) have no '{column}' value (e.g. {missing[0]}).",
                             path=manifest.source, fix=f"fill the '{column}' column, or choose --site-column.")
    return dict(sorted(groups.items()))


def split_site(case_ids: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A site's training and validation cases: a seeded shuffle, ``floor(val_fraction * n)`` for validation
    (none when that would leave fewer than two training cases)."""
    order = [case_ids[i] for i in np.random.default_rng(seed).permutation(len(case_ids))]
    n_val = int(math.floor(val_fraction * len(order)))
    if len(order) - n_val < 2:
        n_val = 0
    return sorted(order[n_val:]), sorted(order[:n_val])


class _Log:
    """Lines to the console and to ``fold_0/train.log``."""

    def __init__(self, path: Path, console: Console) -> None:
        self.path = path
        self.console = console

    def __call__(self, line: str) -> None:
        self.console.print(escape(line), highlight=False)
        log.info(line)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")


def _prepare_folder(run: RunFolder, manifest: Manifest, plan: Plan, config: TrainConfig,
                    settings: FederatedSettings, sites: dict[str, tuple[list[str], list[str]]], *,
                    overwrite: bool) -> None:
    """Write (or check, for a resumed run) the run folder's inputs (module docstring)."""
    federated_path = run.root / "federated.json"
    if overwrite:
        run.clear()
        for name in ("federated.json", "privacy.json"):
            (run.root / name).unlink(missing_ok=True)
    run.root.mkdir(parents=True, exist_ok=True)
    recorded = run.recorded_inputs()
    current = run_inputs(manifest, plan, config, known=recorded.get("cases") if recorded else None)
    if recorded is not None:
        changes = describe_run_changes(recorded, current)
        if federated_path.exists():
            before = json.loads(federated_path.read_text(encoding="utf-8"))["settings"]
            now = settings.model_dump(mode="json")
            before.pop("rounds", None)
            now.pop("rounds", None)
            if difference := describe_value_change(before, now):
                changes.append(f"other federated options ({difference})")
        if changes:
            raise UserInputError(f"was built from other inputs ({'; '.join(changes)}).", path=run.root,
                                 fix="use a new --out folder, or --overwrite to start fresh.")
    plan.save(run.plan_path)
    config.save(run.config_path)
    manifest.save(run.root / "manifest.json")
    train_ids = sorted(c for tr, _ in sites.values() for c in tr)
    val_ids = sorted(c for _, va in sites.values() for c in va)
    write_json(run.splits_path, [{"train": train_ids, "val": val_ids}])
    write_json(federated_path, {"settings": settings.model_dump(mode="json"),
                                "sites": {name: {"train": tr, "val": va} for name, (tr, va) in sites.items()}})
    write_json(run.provenance_path, current)


def write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rows as a CSV whose columns are every key seen, in order of first appearance (sites report different
    metrics)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def simulate(manifest: Manifest, plan: Plan, run_dir: str | Path, *, settings: FederatedSettings,
             config: TrainConfig | None = None, resume: bool = False, overwrite: bool = False,
             preprocessed_dir: str | Path | None = None, console: Console | None = None) -> SimulationResult:
    """Run federated training of every site of ``manifest`` in this process (module docstring).

    Args:
        manifest: the cohort with a site column.
        plan: the plan every site preprocesses with.
        run_dir: the global run folder.
        settings: strategy, rounds, local steps, FedProx's mu, DP options.
        config: the task and training options (network, batch, learning rate...).
        resume: continue from ``fold_0/checkpoint_last.pt``.
        overwrite: clear an earlier run in ``run_dir`` first.
        preprocessed_dir: the cache of preprocessed cases (default ``run_dir/preprocessed``).

    Raises:
        UserInputError: unknown strategy, options that do not go together, no site with cases, a folder built from
            other inputs, or a round in which every site failed.
    """
    console = console or Console(stderr=True)
    config = config or TrainConfig()
    if settings.strategy not in STRATEGIES:
        raise UserInputError(f"unknown strategy '{settings.strategy}'.", fix=f"use one of {', '.join(STRATEGIES)}.")
    mu = settings.mu if settings.strategy == "fedprox" else 0.0
    if settings.strategy == "fedprox" and mu <= 0:
        raise UserInputError("FedProx needs a proximal coefficient above 0.", fix="add --mu, e.g. --mu 0.01.")
    task = build_task(config, manifest)
    if settings.central_dp_noise is not None and (settings.strategy not in ("fedavg", "fedprox")
                                                  or settings.dp_epsilon is not None):
        raise UserInputError("client-level DP (--central-dp-noise) goes with --strategy fedavg or fedprox and without "
                             "patient-level DP-SGD (--dp-epsilon) here.",
                             fix="choose one kind of DP, with fedavg or fedprox.")
    if settings.dp_epsilon is not None:
        check_private_task(task)
        if mu > 0:
            raise UserInputError("FedProx's proximal term is not combined with DP-SGD here (Opacus clips per-sample "
                                 "gradients of the data term only).", fix="use --strategy fedavg with --dp-epsilon.")
    device = select_device(config.device)
    needs = task.requirements
    groups = site_groups(manifest, settings.site_column)
    run = RunFolder(Path(run_dir))
    fold_dir = run.fold_dir(0)
    last_path = fold_dir / "checkpoint_last.pt"
    if last_path.exists() and not resume and not overwrite:
        raise UserInputError("this run folder already has a global checkpoint.", path=last_path,
                             fix="add --resume to continue it, --overwrite to start again, or choose a new --out.")

    # which cases each site can use: labelled (when the task needs labels), then preprocessed without failure
    reasons: dict[str, str] = {}
    usable_ids = []
    for name, ids in groups.items():
        labelled = [cid for cid in ids if manifest[cid].label is not None or not needs.needs_labels]
        if not labelled:
            reasons[name] = "no cases with labels for the task"
        usable_ids += labelled
    splits = {name: split_site([c for c in ids if c in set(usable_ids)], settings.val_fraction,
                               config.seed + i) for i, (name, ids) in enumerate(groups.items())}
    _prepare_folder(run, manifest, plan, config, settings, splits, overwrite=overwrite)
    fold_dir.mkdir(parents=True, exist_ok=True)
    say = _Log(fold_dir / "train.log", console)
    cache = Path(preprocessed_dir) if preprocessed_dir else run.root / "preprocessed"
    failures: dict[str, str] = {}
    if usable_ids:
        outcome = preprocess_cohort(manifest.subset(usable_ids), plan, cache,
                                    allow_missing_channels=needs.allow_missing_channels, show_progress=False)
        failures = dict(outcome.failures)
    sites: list[Site] = []
    for name, (train_ids, val_ids) in splits.items():
        failed = [cid for cid in train_ids + val_ids if cid in failures]
        site = Site(name, [PreprocessedCase.load(cache, c) for c in train_ids if c not in failures],
                    [PreprocessedCase.load(cache, c) for c in val_ids if c not in failures])
        if failed and not site.train_cases:
            reasons[name] = f"every case failed preprocessing ({failed[0]}: {failures[failed[0]]})"
        elif not site.train_cases and name not in reasons:
            reasons[name] = "no training cases"
        if failed:
            say(f"site {name}: {len(failed)} case(s) left out ({failed[0]}: {failures[failed[0]]})")
        sites.append(site)
    active = [s for s in sites if s.train_cases]
    if not active:
        raise UserInputError("no site has cases to train on (" + "; ".join(f"{k}: {v}" for k, v in reasons.items())
                             + ").", path=manifest.source, fix="check the site column, labels and channels.")

    aggregator = (build_aggregator(settings.strategy, server_lr=settings.server_lr)
                  if settings.central_dp_noise is None
                  else CentralDP(settings.central_dp_noise, settings.central_dp_clip, seed=config.seed))
    privacy: dict[str, SitePrivacy] = {}
    if settings.dp_epsilon is not None:
        for site in active:
            privacy[site.name] = SitePrivacy.plan(
                len(site.train_cases), config.batch_size or plan.batch_size, target_epsilon=settings.dp_epsilon,
                total_steps=settings.rounds * settings.local_steps, max_grad_norm=settings.dp_max_grad_norm,
                delta=settings.dp_delta)
    weights: Weights = initial_weights(task, plan, config)
    history: list[dict[str, Any]] = []
    start, best_score, best_round = 0, -math.inf, -1
    if resume and last_path.exists():
        state = load_checkpoint(last_path)
        weights = state["model"]
        aggregator.load_state_dict(state.get("server", {}))
        privacy.update({k: SitePrivacy.from_state(v) for k, v in state.get("privacy", {}).items()})
        history = list(state.get("history", []))
        start, best_score, best_round = int(state["round"]) + 1, float(state["best_score"]), int(state["best_round"])
        say(f"resuming after round {start - 1}")
    say(f"federated {settings.strategy}: {len(sites)} site(s), {len(active)} with training cases; rounds "
        f"{settings.rounds}, {settings.local_steps} local steps; "
        + (f"DP-SGD per patient, target epsilon {settings.dp_epsilon}" if privacy else "no DP"))

    extra = {"config": config.model_dump(), "plan": plan.model_dump(), "task": task.name}
    payload = sum(v.numel() * v.element_size() for v in weights.values())  # bytes each way per site and round
    for round_index in range(start, settings.rounds):
        started = time.perf_counter()
        updates: list[SiteUpdate] = []
        rows: list[dict[str, Any]] = []
        for site_index, site in enumerate(sites):
            row: dict[str, Any] = {"round": round_index, "site": site.name, "n_train": len(site.train_cases),
                                   "n_val": len(site.val_cases)}
            if site.name in reasons:
                rows.append({**row, "status": "skipped", "reason": reasons[site.name]})
                say(f"round {round_index}: site {site.name} skipped: {reasons[site.name]}")
                continue
            try:
                update = train_site(task, plan, config, site, weights, steps=settings.local_steps,
                                    round_index=round_index, site_index=site_index, mu=mu,
                                    privacy=privacy.get(site.name), device=device)
            except Exception as exc:  # noqa: BLE001 - any site failure leaves that site out of this round
                reason = f"{type(exc).__name__}: {exc}"
                rows.append({**row, "status": "failed", "reason": reason})
                say(f"round {round_index}: site {site.name} failed and was left out: {reason}")
                continue
            updates.append(update)
            if site.name in privacy:
                update.metrics["epsilon"] = privacy[site.name].epsilon()
            rows.append({**row, "status": "ok", "reason": "", "bytes_each_way": payload, **update.metrics})
        if not updates:
            raise UserInputError(f"round {round_index}: every site failed; the global checkpoint is unchanged.",
                                 path=fold_dir / "train.log", fix="see the log for each site's reason, then rerun "
                                                                   "with --resume.")
        weights = aggregator.aggregate(weights, updates)
        scores = []
        for row, site in zip(rows, sites, strict=True):
            metrics = evaluate_site(task, plan, config, site, weights, device=device)
            row.update({f"global_{k}": v for k, v in metrics.items()})
            if task.score_name in metrics and math.isfinite(metrics[task.score_name]):
                scores.append((metrics[task.score_name], len(site.val_cases)))
        score = sum(s * n for s, n in scores) / sum(n for _, n in scores) if scores else math.nan
        improved = math.isfinite(score) and score > best_score
        if improved or not math.isfinite(best_score):
            best_score, best_round = (score if math.isfinite(score) else -math.inf), round_index
        history += rows
        seconds = time.perf_counter() - started
        state_out = {"model": weights, "round": round_index, "server": aggregator.state_dict(),
                     "privacy": {k: v.state_dict() for k, v in privacy.items()}, "history": history,
                     "best_score": best_score, "best_round": best_round, "epoch": round_index, **extra}
        save_checkpoint(fold_dir / "rounds" / f"round_{round_index:03d}.pt",
                        {"model": weights, "round": round_index, **extra})
        if best_round == round_index:
            save_checkpoint(fold_dir / "checkpoint_best.pt",
                            {"model": weights, "round": round_index, "epoch": round_index, "score": score, **extra})
        if privacy:
            write_json(run.root / "privacy.json", {"unit": "patient", "mechanism": "DP-SGD (Opacus), per site",
                                                   "sites": {k: v.summary() for k, v in privacy.items()}})
        if isinstance(aggregator, CentralDP):
            write_json(run.root / "privacy.json", central_dp_summary(
                aggregator.noise_multiplier, aggregator.clipping_norm, aggregator.rounds, settings.central_dp_delta,
                mechanism="Gaussian; each site's update clipped, uniform mean, noise on the mean (CentralDP)"))
        write_history(fold_dir / "history.csv", history)
        save_checkpoint(last_path, state_out)  # last: a crash before this line reruns the round
        say(f"round {round_index}: {len(updates)}/{len(sites)} site(s) aggregated; global {task.score_name} "
            f"{score:.3f}; {seconds:.1f} s; {payload / 1e6:.2f} MB each way per site")

    best = load_checkpoint(fold_dir / "checkpoint_best.pt")
    model = task.build_model(plan, config).to(device)
    model.load_state_dict(best["model"])
    train_cases, val_cases = site_cases(active)
    write_json(fold_dir / "task_state.json",
               task.finish(model, train_cases, val_cases, plan, config, device, 0, fold_dir))
    write_json(fold_dir / "summary.json", {"score_name": task.score_name, "best_score": best_score,
                                           "best_epoch": best_round, "best_round": best_round,
                                           "rounds_run": settings.rounds, "strategy": settings.strategy})
    return SimulationResult(run_dir=run.root, rounds_run=settings.rounds, history=history,
                            privacy={k: v.summary() for k, v in privacy.items()})

