"""Does training across hospitals pay off? Centralised vs each site alone vs FedAvg vs FedProx vs DP-FedAvg.

Every site's labelled cases are split once (seeded) into training cases and held-out test cases; the test cases
are never used for planning, training or model selection (the plan is made on the training cases, and every run
keeps its last round: no validation cases). Every method then trains a segmentation network with the same
schedule, through the same in-process simulator (:func:`~sarcomakit.federated.simulation.simulate`), so the data
partition is the only difference:

- ``centralised``: every site's training cases pooled into one site (what sharing the scans would allow);
- ``centralised_compute``: the same pooled model with ``sites x local_steps`` steps per round, i.e. as many
  gradient computations per round as the whole federation spends (a federated round averages every site's
  ``local_steps``), so that "federated beats centralised" cannot come from more compute alone;
- ``local``: each site alone on its own training cases (one model per site, scored on that site's test cases);
- ``fedavg`` and ``fedprox`` (``mu``): the sites federated;
- ``cdp_fedavg``: FedAvg with client-level DP (:class:`~sarcomakit.federated.aggregators.CentralDP`: each site's
  update clipped to ``central_dp_clip``, uniform mean, Gaussian noise of ``central_dp_noise`` times the clip over
  the number of sites; unit = a whole site);
- ``dp_fedavg``: FedAvg with patient-level DP-SGD at every site (target ``dp_epsilon``, unit = patient); with
  several epsilons, one run per epsilon, named ``dp_fedavg_eps<epsilon>`` (e.g. ``dp_fedavg_eps1``).

Each model runs ``rounds`` rounds of ``local_steps`` optimisation steps from the same initial weights and seed (a
round restarts the local optimiser, centralised and local runs too). Scored by Dice on every site's test cases:
mean Dice with a bootstrap 95% interval per site and over all test cases, and the paired difference against
``centralised`` on the same cases. The bytes a site sends each way per round are the serialised size of the
weights. An empirical privacy check attacks every global model (not the per-site local ones): "a case on
which the model's Dice is higher was a training case", reported as the attack's AUC over the training cases
(members) and the test cases (non-members).

```
EXP/
  splits.json, plan.json       the held-out test cases ("val") and the plan (made on training cases only)
  preprocessed/                every case preprocessed once, shared by all runs
  runs/<method>/               a federated run folder per method (runs/local/<site>/ per site)
  dice.csv                     Dice per test case: method, site, case_id, dice
  comparison.csv/.md           per method and site (and "all"): Dice [95% CI], difference vs centralised
  cost.csv                     per method: rounds, local steps, bytes each way per site and round, wall time
  membership.csv               per global model: a Dice-threshold membership-inference attack's AUC
  federated_comparison.png, experiment.json
```
Every run resumes: finished runs are reused when the experiment is rerun.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json, write_text
from sarcomakit.data.manifest import Case, Manifest
from sarcomakit.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_difference
from sarcomakit.evaluation.classification import binary_auc
from sarcomakit.experiments.setup import Folds, case_dice, experiment_folds, experiment_plan
from sarcomakit.federated.simulation import FederatedSettings, simulate, site_groups, split_site
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import preprocess_cohort
from sarcomakit.reporting.markdown_report import write_markdown_report
from sarcomakit.runs.config import TrainConfig

METHODS = ("centralised", "centralised_compute", "local", "fedavg", "fedprox", "cdp_fedavg", "dp_fedavg")
REFERENCE = "centralised"
POOLED_SITE = "pooled"


def site_test_split(manifest: Manifest, site_column: str, test_fraction: float, seed: int) -> Folds:
    """One fold: per site, a seeded ``test_fraction`` of its labelled cases held out (``val``), the rest ``train``
    (a site keeps at least two training cases; see :func:`~sarcomakit.federated.simulation.split_site`)."""
    train: list[str] = []
    test: list[str] = []
    labelled = {c.case_id for c in manifest.cases if c.label is not None}
    for i, ids in enumerate(site_groups(manifest, site_column).values()):
        site_train, site_test = split_site([c for c in ids if c in labelled], test_fraction, seed + i)
        train += site_train
        test += site_test
    if not test:
        raise UserInputError("no site has enough labelled cases to hold any out for testing.",
                             path=manifest.source, fix="add cases, or raise --test-fraction.")
    return [{"train": sorted(train), "val": sorted(test)}]


def _relabel_sites(manifest: Manifest, case_ids: Sequence[str], column: str, site: str | None) -> Manifest:
    """The cases ``case_ids`` of ``manifest``, all at ``site`` when it is given (pooled training)."""
    chosen = set(case_ids)

    def moved(case: Case) -> Case:
        if site is None:
            return case
        if column == "site":
            return dataclasses.replace(case, site=site)
        return dataclasses.replace(case, extra={**case.extra, column: site})

    return Manifest(channels=manifest.channels, cases=[moved(c) for c in manifest.cases if c.case_id in chosen],
                    labels=manifest.labels, source=manifest.source)


def _train(run_dir: Path, manifest: Manifest, plan: Plan, config: TrainConfig, settings: FederatedSettings,
           preprocessed: Path, console: Console) -> dict[str, Any]:
    """One method's run (reused when finished) and its cost: wall time and bytes each way per site and round."""
    cost_path = run_dir / "cost.json"
    if cost_path.is_file():
        return json.loads(cost_path.read_text(encoding="utf-8"))
    started = time.perf_counter()
    result = simulate(manifest, plan, run_dir, settings=settings, config=config, resume=True,
                      preprocessed_dir=preprocessed, console=console)
    sent = [row["bytes_each_way"] for row in result.history if row["status"] == "ok"]
    privacy = dict(result.privacy)  # patient-level: per site; client-level: one record for the federation
    if settings.central_dp_noise is not None:
        privacy["client-level"] = json.loads((run_dir / "privacy.json").read_text(encoding="utf-8"))
    cost = {"wall_s": time.perf_counter() - started, "bytes_each_way": int(sent[0]) if sent else 0,
            "sites": len({row["site"] for row in result.history}), "local_steps": settings.local_steps,
            "privacy": privacy}
    write_json(cost_path, cost)
    return cost


def run_federated_experiment(manifest: Manifest, out_dir: str | Path, *, plan: Plan | None = None,
                             config: TrainConfig | None = None, site_column: str = "site", rounds: int = 5,
                             local_steps: int = 10, mu: float = 0.01, dp_epsilon: float | Sequence[float] = 8.0,
                             central_dp_noise: float = 1.0, central_dp_clip: float = 1.0,
                             test_fraction: float = 0.25, methods: Sequence[str] = METHODS,
                             n_bootstrap: int = 1000, console: Console | None = None) -> pd.DataFrame:
    """Run the experiment (module docstring) and return the comparison table.

    Args:
        manifest: the multi-site cohort (labelled cases; the site in ``site_column``).
        out_dir: the experiment folder (resumable).
        plan: the plan (default: planned on the training cases and saved as ``plan.json``).
        config: training options shared by every method (network, batch, learning rate, seed...).
        rounds, local_steps: the schedule every method follows.
        mu: FedProx's proximal coefficient.
        dp_epsilon: DP-FedAvg's target epsilon per site over the whole run (delta = 1/(10 N_site)); several
            values give one DP-FedAvg run each.
        central_dp_noise, central_dp_clip: client-level DP's noise multiplier and clipping norm (``cdp_fedavg``).
        test_fraction: share of each site's labelled cases held out for testing.
        methods: a subset of :data:`METHODS` that includes ``centralised``.
    """
    console = console or Console(stderr=True)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or REFERENCE not in methods:
        raise UserInputError(f"methods must include {REFERENCE} and come from {', '.join(METHODS)} "
                             f"(got {list(methods)}).", fix="e.g. --methods centralised,local,fedavg,fedprox.")
    if "cdp_fedavg" in methods and not (central_dp_noise > 0 and central_dp_clip > 0):
        raise UserInputError(f"client-level DP needs a positive noise multiplier and clipping norm (got "
                             f"{central_dp_noise:g}, {central_dp_clip:g}).",
                             fix="e.g. --central-dp-noise 1 --central-dp-clip 1, or leave cdp_fedavg out of --methods.")
    epsilons = dp_budgets(dp_epsilon)
    methods = [name for method in methods for name in (list(epsilons) if method == "dp_fedavg" else [method])]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = (config or TrainConfig()).updated(task="segmentation", task_options={})
    fold = experiment_folds(out, lambda: site_test_split(manifest, site_column, test_fraction, config.seed))[0]
    train_ids, test_ids = fold["train"], fold["val"]
    sites = {case: site for site, ids in site_groups(manifest.subset(train_ids + test_ids), site_column).items()
             for case in ids}
    plan = experiment_plan(manifest.subset(train_ids), out, plan)
    preprocessed = out / "preprocessed"
    outcome = preprocess_cohort(manifest.subset(train_ids + test_ids), plan, preprocessed, show_progress=False)
    scorable = [c for c in test_ids if c not in outcome.failures]
    members = [c for c in train_ids if c not in outcome.failures]
    base = FederatedSettings(strategy="fedavg", rounds=rounds, local_steps=local_steps, site_column=site_column,
                             val_fraction=0.0)

    n_sites = len(set(sites.values()))
    rows: list[dict[str, Any]] = []
    attacks: list[dict[str, Any]] = []
    costs: dict[str, dict[str, Any]] = {}
    for method in methods:
        console.rule(method)
        if method == "local":
            for site in sorted(set(sites.values())):
                site_train = [c for c in train_ids if sites[c] == site]
                site_test = [c for c in scorable if sites[c] == site]
                run_dir = out / "runs" / "local" / site
                costs[f"local/{site}"] = _train(run_dir, _relabel_sites(manifest, site_train, site_column, None),
                                                plan, config, base, preprocessed, console)
                rows += _scored(method, run_dir, plan, config, site_test, sites, preprocessed)
            continue
        settings = {"centralised": base, "fedavg": base,
                    "centralised_compute": base.model_copy(update={"local_steps": local_steps * n_sites}),
                    "fedprox": base.model_copy(update={"strategy": "fedprox", "mu": mu}),
                    "cdp_fedavg": base.model_copy(update={"central_dp_noise": central_dp_noise,
                                                          "central_dp_clip": central_dp_clip}),
                    **{name: base.model_copy(update={"dp_epsilon": epsilon}) for name, epsilon in epsilons.items()},
                    }[method]
        pooled = POOLED_SITE if method.startswith(REFERENCE) else None
        run_dir = out / "runs" / method
        costs[method] = _train(run_dir, _relabel_sites(manifest, train_ids, site_column, pooled), plan, config,
                               settings, preprocessed, console)
        scored = _scored(method, run_dir, plan, config, scorable, sites, preprocessed)
        rows += scored
        attacks.append(membership_attack(method, case_dice(run_dir, plan, config, members, preprocessed),
                                         [row["dice"] for row in scored]))

    per_case = pd.DataFrame(rows)
    write_text(out / "dice.csv", per_case.to_csv(index=False))
    table = compare_sites(per_case, list(methods), n_bootstrap=n_bootstrap, seed=config.seed)
    write_text(out / "comparison.csv", table.to_csv(index=False))
    cost = pd.DataFrame([{"run": name, "rounds": rounds, "local_steps": local_steps, **{
        k: v for k, v in value.items() if k != "privacy"},
        "epsilon": max((p["epsilon"] for p in value["privacy"].values()), default=float("nan"))}
        for name, value in costs.items()])
    cost["bytes_per_round_all_sites"] = 2 * cost["bytes_each_way"] * cost["sites"]
    write_text(out / "cost.csv", cost.to_csv(index=False))
    membership = pd.DataFrame(attacks)
    write_text(out / "membership.csv", membership.to_csv(index=False))
    plot_site_dice(table, out / "federated_comparison.png")
    write_text(out / "comparison.md", comparison_markdown(table) + "\n" + cost_markdown(cost) + "\n"
               + membership_markdown(membership) + "\n![Dice per site and method](federated_comparison.png)\n")
    recorded = {"methods": list(methods), "rounds": rounds, "local_steps": local_steps, "mu": mu,
                "dp_epsilon": list(epsilons.values()), "central_dp_noise": central_dp_noise,
                "central_dp_clip": central_dp_clip, "test_fraction": test_fraction, "seed": config.seed,
                "site_column": site_column, "train_cases": len(train_ids), "test_cases": len(scorable),
                "cohort": str(manifest.source) if manifest.source else None}
    write_json(out / "experiment.json", recorded)
    write_markdown_report(out / "comparison.md", title="Federated vs centralised vs local training",
                          metadata=recorded)
    return table


def dp_budgets(dp_epsilon: float | Sequence[float]) -> dict[str, float]:
    """The DP-FedAvg runs by name: ``dp_fedavg`` for one epsilon, ``dp_fedavg_eps<e>`` for each of several."""
    values = [float(dp_epsilon)] if isinstance(dp_epsilon, (int, float)) else [float(e) for e in dp_epsilon]
    if not values or any(not e > 0 for e in values) or len(set(values)) < len(values):
        raise UserInputError(f"DP epsilons must be positive and distinct (got {values}).",
                             fix="e.g. --dp-epsilon 8, or --dp-epsilon 1,4,8.")
    return {"dp_fedavg": values[0]} if len(values) == 1 else {f"dp_fedavg_eps{e:g}": e for e in values}


def membership_attack(method: str, member_dice: Sequence[float], non_member_dice: Sequence[float]) -> dict[str, Any]:
    """A threshold membership-inference attack on the global model: "a case on which the model scores a higher
    Dice was a training case". Its AUC over the training (member) and test (non-member) cases: 0.5 is no
    leak; the closer to 1, the more the model's behaviour gives its training patients away."""
    scores = np.array([*member_dice, *non_member_dice], dtype=float)
    members = np.array([True] * len(member_dice) + [False] * len(non_member_dice))
    return {"method": method, "members": len(member_dice), "non_members": len(non_member_dice),
            "member_dice": float(np.mean(member_dice)), "non_member_dice": float(np.mean(non_member_dice)),
            "attack_auc": binary_auc(members, scores)}


def membership_markdown(membership: pd.DataFrame) -> str:
    """The membership-inference attack per global model as a Markdown table."""
    lines = ["| model | members / non-members | mean Dice members | mean Dice non-members | attack AUC |",
             "| --- | --- | --- | --- | --- |"]
    for _, row in membership.iterrows():
        lines.append(f"| {row['method']} | {row['members']} / {row['non_members']} | {row['member_dice']:.3f} | "
                     f"{row['non_member_dice']:.3f} | {row['attack_auc']:.2f} |")
    return "\n".join(lines) + "\n"


def _scored(method: str, run_dir: Path, plan: Plan, config: TrainConfig, case_ids: Sequence[str],
            sites: dict[str, str], preprocessed: Path) -> list[dict[str, Any]]:
    scores = case_dice(run_dir, plan, config, case_ids, preprocessed)
    return [{"method": method, "site": sites[c], "case_id": c, "dice": d}
            for c, d in zip(case_ids, scores, strict=True)]


def compare_sites(per_case: pd.DataFrame, methods: Sequence[str], *, n_bootstrap: int = 1000,
                  seed: int = 0) -> pd.DataFrame:
    """Mean Dice with a bootstrap 95% interval per method and site (``all``: every test case), and the paired
    difference against ``centralised`` on the same cases (bootstrap interval and p-value)."""
    out = []
    groups = [*sorted(per_case["site"].unique()), "all"]
    for group in groups:
        at = per_case if group == "all" else per_case[per_case["site"] == group]
        reference = at[at["method"] == REFERENCE].set_index("case_id")["dice"]
        for method in methods:
            mine = at[at["method"] == method].set_index("case_id")["dice"]
            if mine.empty:
                continue
            low, high = bootstrap_ci(mine.to_numpy(), n_resamples=n_bootstrap, seed=seed)
            row: dict[str, Any] = {"site": group, "method": method, "cases": len(mine), "dice": float(mine.mean()),
                                   "dice_ci_low": low, "dice_ci_high": high}
            if method != REFERENCE:
                paired = paired_bootstrap_difference(mine.to_numpy(), reference.reindex(mine.index).to_numpy(),
                                                     n_resamples=n_bootstrap, seed=seed)
                row.update({"difference": paired["difference"], "difference_ci_low": paired["ci_low"],
                            "difference_ci_high": paired["ci_high"], "p_value": paired["p_value"],
                            "relative_to_centralised": float(mine.mean() / reference.reindex(mine.index).mean())})
            out.append(row)
    return pd.DataFrame(out)


def _interval(value: float, low: float, high: float, signed: bool = False) -> str:
    form = "{:+.1f}" if signed else "{:.1f}"
    text = form.format(100 * value)
    if np.isfinite(low) and np.isfinite(high):
        text += f" [{form.format(100 * low)}, {form.format(100 * high)}]"
    return text


def comparison_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (Dice and differences in points x100)."""
    lines = [f"| site | method | cases | Dice [95% CI] | vs {REFERENCE} [95% CI] | ratio | p |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, row in table.iterrows():
        difference = ratio = p_value = ""
        if row["method"] != REFERENCE and pd.notna(row.get("difference")):
            difference = _interval(row["difference"], row["difference_ci_low"], row["difference_ci_high"], True)
            ratio = f"{100 * row['relative_to_centralised']:.0f}%"
            p_value = f"{row['p_value']:.3f}" if pd.notna(row["p_value"]) else ""
        lines.append(f"| {row['site']} | {row['method']} | {row['cases']} | "
                     f"{_interval(row['dice'], row['dice_ci_low'], row['dice_ci_high'])} | {difference} | {ratio} | "
                     f"{p_value} |")
    return "\n".join(lines) + "\n"


def cost_markdown(cost: pd.DataFrame) -> str:
    """Each run's schedule, communication per round and wall time as a Markdown table."""
    lines = ["| run | sites | rounds x local steps | bytes each way per site and round | bytes per round (all sites, "
             "both ways) | wall time (s) | epsilon |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for _, row in cost.iterrows():
        epsilon = f"{row['epsilon']:.2f}" if np.isfinite(row["epsilon"]) else "–"
        lines.append(f"| {row['run']} | {row['sites']} | {row['rounds']} x {row['local_steps']} | "
                     f"{row['bytes_each_way']:,} | {row['bytes_per_round_all_sites']:,} | {row['wall_s']:.0f} | "
                     f"{epsilon} |")
    return "\n".join(lines) + "\n"


def plot_site_dice(table: pd.DataFrame, path: Path) -> Path:
    """Mean Dice with its interval per site (and over all test cases), one bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sarcomakit.reporting.figures import save_png

    groups = list(dict.fromkeys(table["site"]))
    methods = list(dict.fromkeys(table["method"]))
    width = 0.8 / len(methods)
    columns = min(len(methods), 4)  # the legend in rows of four, so that it stays inside the figure
    legend_rows = -(-len(methods) // columns)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 + 1.4 * len(groups)), 3.4 + 0.25 * legend_rows))
    for i, method in enumerate(methods):
        rows = table[table["method"] == method].set_index("site").reindex(groups)
        x = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        axes.bar(x, rows["dice"], width, label=method,
                 yerr=[rows["dice"] - rows["dice_ci_low"], rows["dice_ci_high"] - rows["dice"]], capsize=2)
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_ylabel("Dice (held-out test cases)")
    axes.set_ylim(0, 1)
    axes.legend(fontsize=7, ncol=columns, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    figure.tight_layout()
    save_png(figure, path)
    plt.close(figure)
    return path
