"""Does self-supervised pretraining pay off when labels are few? Scratch vs pretrained, on the same folds and seeds.

For each cross-validation fold, each pretraining method is trained on that fold's training cases only (their
labels unused; never a validation case of the fold), or once on an external unlabelled pool. Then, for each
number N of labelled cases, the same N labelled training cases of the fold (a seeded choice, nested: the
cases of a smaller N are among those of a larger one) train a segmentation network from scratch and from
each pretrained checkpoint, with the identical schedule (the fine-tuning warm-up is given to scratch too, so
the initialisation is the only difference). Every network is scored by Dice on the fold's validation cases.

```
EXP/
  splits.json                    one set of folds for every method
  plans/fold_K/                  fold K's plan, from its training cases only (the validation cases reach no plan)
  preprocessed/fold_K/           cases preprocessed once per fold plan
  pretrain/<method>/fold_K/      pretraining run of fold K (pretrain/<method>/pool_fold_K/ with an external pool,
                                 preprocessed with fold K's plan)
  runs/<method>/n<N>/fold_K/     segmentation run on N labelled cases of fold K (scratch or fine-tuned)
  dice.csv                       Dice per validation case: method, labelled, fold, case_id, dice
  comparison.csv/.md             mean Dice [95% bootstrap CI] per method and N; paired differences against scratch
  dice_vs_labels.png, experiment.json
```
Every network keeps its last epoch (no epoch is chosen by the validation cases it is scored on).
Every step resumes: finished runs are reused when the experiment is rerun.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_path, write_json, write_text
from sarcomakit.data.folds import make_folds
from sarcomakit.data.manifest import Manifest
from sarcomakit.evaluation.bootstrap import bootstrap_ci, paired_bootstrap_difference
from sarcomakit.experiments.protocol import plan_training_cases, without_model_selection
from sarcomakit.experiments.setup import case_dice, experiment_folds
from sarcomakit.planning.plan import Plan
from sarcomakit.reporting.markdown_report import write_markdown_report
from sarcomakit.runs.config import TrainConfig
from sarcomakit.training.api import train
from sarcomakit.training.finetuning import resolved_warmup_epochs

#: pretraining methods; every run of an experiment uses ``config.network`` (vit_mae needs unetr, simmim unetr or
#: swinunetr, mae and crmae any network)
PRETRAINING = ("mae", "crmae", "vit_mae", "simmim")
METHODS = ("scratch", *PRETRAINING)
#: the networks a transformer method pretrains (the others pretrain any registry network)
METHOD_NETWORKS = {"vit_mae": ("unetr",), "simmim": ("unetr", "swinunetr")}


def labelled_subsets(train_ids: Sequence[str], counts: Sequence[int | str], seed: int,
                     fold: int) -> dict[str, list[str]]:
    """The labelled training cases per count (``all``: every one), nested, the same for every method."""
    order = [train_ids[i] for i in np.random.default_rng((seed, fold)).permutation(len(train_ids))]
    subsets = {}
    for count in counts:
        n = len(order) if count == "all" else int(count)
        subsets[str(count)] = sorted(order[:min(n, len(order))])
    return subsets


def _run_manifest(manifest: Manifest, train_ids: Sequence[str], val_ids: Sequence[str]) -> Manifest:
    """The cohort of one run, with its split fixed in the ``fold`` field (1: training, 0: validation)."""
    by_id = {c.case_id: c for c in manifest.cases}
    cases = [dataclasses.replace(by_id[c], fold=1) for c in train_ids] + \
        [dataclasses.replace(by_id[c], fold=0) for c in val_ids]
    return Manifest(channels=manifest.channels, cases=cases, labels=manifest.labels, source=manifest.source)


def _pretrain(method: str, manifest: Manifest, plan: Plan, config: TrainConfig, run_dir: Path,
              preprocessed: Path, console: Console) -> Path:
    """Pretrain ``method`` on ``manifest``'s cases (a fifth held out, at least one, to validate reconstruction)."""
    if not (run_dir / "fold_0" / "summary.json").is_file():
        console.rule(f"pretraining {method} ({run_dir.name})")
        folds = min(5, len(manifest.cases))
        train(manifest, plan, run_dir, folds=(0,), config=config.updated(task=method, task_options={},
                                                                         n_folds=max(2, folds)),
              resume=True, preprocessed_dir=preprocessed, console=console)
    return run_dir


def run_ssl_experiment(manifest: Manifest, out_dir: str | Path, *, plan: Plan | None = None, n_folds: int = 5,
                       config: TrainConfig | None = None, labelled: Sequence[int | str] = (2, 4, 8, "all"),
                       methods: Sequence[str] = ("scratch", "mae", "crmae"), pretrain_epochs: int | None = None,
                       unlabelled: Manifest | None = None, n_bootstrap: int = 1000,
                       console: Console | None = None) -> pd.DataFrame:
    """Run the experiment (module docstring) and return the comparison table.

    Args:
        manifest: the labelled cohort (cases without a label are used for pretraining only).
        out_dir: the experiment folder (resumable).
        plan: one plan for every fold. Default: each fold is planned on its own training cases (never on its
            validation cases; :mod:`sarcomakit.experiments.protocol`), and pretraining uses the fold's plan.
        n_folds: cross-validation folds.
        config: training options shared by every segmentation run and the pretraining runs (``init_parts``,
            ``freeze_epochs`` and ``warmup_epochs`` apply to fine-tuning; scratch gets the same warm-up).
        labelled: numbers of labelled training cases (``all``: every labelled training case of the fold).
        methods: ``scratch`` and pretraining methods (:data:`PRETRAINING`; the transformer ones need the network of
            :data:`METHOD_NETWORKS` as ``config.network``).
        pretrain_epochs: epochs of pretraining (default: ``config.epochs``).
        unlabelled: an external pool to pretrain on once, instead of each fold's training cases.
    """
    console = console or Console(stderr=True)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or "scratch" not in methods:
        raise UserInputError(f"methods must include scratch and come from {', '.join(METHODS)} (got {list(methods)}).",
                             fix="e.g. --methods scratch,mae,crmae.")
    config = config or TrainConfig()
    misfits = [m for m in methods if config.network not in METHOD_NETWORKS.get(m, (config.network,))]
    if misfits:
        raise UserInputError(f"{', '.join(misfits)} cannot pretrain a {config.network}; every method of the "
                             "experiment trains the same network.",
                             fix="use --network unetr (vit_mae, simmim) or swinunetr (simmim), or drop "
                                 f"{', '.join(misfits)}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folds = experiment_folds(out, lambda: make_folds(manifest, n_folds, config.seed))
    labelled_ids = {c.case_id for c in manifest.cases if c.label is not None}
    warmup = resolved_warmup_epochs(config.updated(init_checkpoint="pretrained"))
    finetune = without_model_selection(config.updated(task="segmentation", task_options={}, n_folds=2,
                                                      warmup_epochs=warmup))
    pretrain_config = config.updated(epochs=pretrain_epochs)

    rows: list[dict[str, Any]] = []
    for k, fold in enumerate(folds):
        train_ids = [c for c in fold["train"] if c in labelled_ids]
        val_ids = [c for c in fold["val"] if c in labelled_ids]
        fold_plan = plan or plan_training_cases(manifest, fold["train"], out / "plans" / f"fold_{k}")[0]
        preprocessed = out / "preprocessed" / ("given_plan" if plan is not None else f"fold_{k}")
        pretrained: dict[str, Path] = {}
        for method in (m for m in methods if m != "scratch"):
            pool = unlabelled or manifest.subset(fold["train"])
            where = out / "pretrain" / method / (f"pool_fold_{k}" if unlabelled is not None else f"fold_{k}")
            pretrained[method] = _pretrain(method, pool, fold_plan, pretrain_config, where, preprocessed, console)
        for count, subset in labelled_subsets(train_ids, labelled, config.seed, k).items():
            for method in methods:
                run_dir = out / "runs" / method / f"n{count}" / f"fold_{k}"
                dice_file = run_dir / "dice.json"
                if not dice_file.is_file():
                    console.rule(f"fold {k}: {method} on {len(subset)} labelled case(s)")
                    run_config = finetune if method == "scratch" else finetune.updated(
                        init_checkpoint=str(pretrained[method]))
                    train(_run_manifest(manifest, subset, val_ids), fold_plan, run_dir, folds=(0,),
                          config=run_config, resume=True, preprocessed_dir=preprocessed, console=console)
                    write_json(dice_file, dict(zip(val_ids, case_dice(run_dir, fold_plan, run_config, val_ids,
                                                                         preprocessed), strict=True)))
                for case_id, dice in json.loads(dice_file.read_text(encoding="utf-8")).items():
                    rows.append({"method": method, "labelled": count, "n_cases": len(subset), "fold": k,
                                 "case_id": case_id, "dice": dice})
    per_case = pd.DataFrame(rows)
    write_text(out / "dice.csv", per_case.to_csv(index=False))
    table = compare_dice(per_case, methods, [str(c) for c in labelled], n_bootstrap=n_bootstrap, seed=config.seed)
    write_text(out / "comparison.csv", table.to_csv(index=False))
    plot_dice_vs_labels(table, out / "dice_vs_labels.png")
    write_text(out / "comparison.md", comparison_markdown(table)
               + "\n![Dice against the number of labelled cases](dice_vs_labels.png)\n")
    settings = {"methods": list(methods), "labelled": [str(c) for c in labelled], "folds": len(folds),
                "seed": config.seed, "pretrain_epochs": pretrain_config.epochs, "unlabelled_pool": bool(unlabelled),
                "cohort": str(manifest.source) if manifest.source else None}
    write_json(out / "experiment.json", settings)
    write_markdown_report(out / "comparison.md", title="Self-supervised pretraining: scratch vs pretrained",
                          metadata=settings)
    return table


def compare_dice(per_case: pd.DataFrame, methods: Sequence[str], counts: Sequence[str], *, n_bootstrap: int = 1000,
                 seed: int = 0) -> pd.DataFrame:
    """Mean Dice with a bootstrap 95% interval per method and labelled count, and the paired difference against
    scratch on the same validation cases (bootstrap interval and p-value)."""
    out = []
    for count in counts:
        at = per_case[per_case["labelled"].astype(str) == count]
        scratch = at[at["method"] == "scratch"].set_index(["fold", "case_id"])["dice"]
        for method in methods:
            mine = at[at["method"] == method].set_index(["fold", "case_id"])["dice"]
            if mine.empty:
                continue
            low, high = bootstrap_ci(mine.to_numpy(), n_resamples=n_bootstrap, seed=seed) if len(mine) > 1 \
                else (float("nan"), float("nan"))
            per_fold = at.loc[at["method"] == method].groupby("fold")["n_cases"].first()
            row = {"labelled": count, "n_cases": float(at.loc[at["method"] == method, "n_cases"].mean()),
                   "n_cases_per_fold": "/".join(dict.fromkeys(str(int(n)) for n in per_fold)),
                   "method": method, "cases": len(mine), "dice": float(mine.mean()), "dice_ci_low": low,
                   "dice_ci_high": high}
            if method != "scratch":
                paired = scratch.reindex(mine.index)
                if len(mine) > 1:
                    difference = paired_bootstrap_difference(mine.to_numpy(), paired.to_numpy(),
                                                             n_resamples=n_bootstrap, seed=seed)
                    row.update({"difference": difference["difference"], "difference_ci_low": difference["ci_low"],
                                "difference_ci_high": difference["ci_high"], "p_value": difference["p_value"]})
                else:
                    row["difference"] = float(mine.iloc[0] - paired.iloc[0])
            out.append(row)
    return pd.DataFrame(out)


def comparison_markdown(table: pd.DataFrame) -> str:
    """The comparison as a Markdown table (Dice and differences against scratch, in Dice points x100); the
    labelled count is followed by the labelled cases of each fold (``all (6/10)`` for folds of 6 and 10)."""
    lines = ["| labelled | method | cases | Dice [95% CI] | difference vs scratch [95% CI] | p |",
             "| --- | --- | --- | --- | --- | --- |"]
    for _, row in table.iterrows():
        dice = f"{100 * row['dice']:.1f} [{100 * row['dice_ci_low']:.1f}, {100 * row['dice_ci_high']:.1f}]"
        difference = p_value = ""
        if row["method"] != "scratch" and pd.notna(row.get("difference")):
            difference = f"{100 * row['difference']:+.1f}"
            if pd.notna(row.get("difference_ci_low")):
                difference += f" [{100 * row['difference_ci_low']:+.1f}, {100 * row['difference_ci_high']:+.1f}]"
                p_value = f"{row['p_value']:.3f}"
        lines.append(f"| {row['labelled']} ({row['n_cases_per_fold']}) | {row['method']} | {row['cases']} | {dice} | "
                     f"{difference} | {p_value} |")
    return "\n".join(lines) + "\n"


def plot_dice_vs_labels(table: pd.DataFrame, path: Path) -> Path:
    """Mean Dice (with its interval) against the number of labelled cases, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.5))
    for method, rows in table.groupby("method", sort=False):
        rows = rows.sort_values("n_cases")
        dice = rows["dice"].to_numpy()
        axes.errorbar(rows["n_cases"].to_numpy(), dice, yerr=[dice - rows["dice_ci_low"].to_numpy(),
                                                              rows["dice_ci_high"].to_numpy() - dice],
                      marker="o", capsize=3, label=method)
    axes.set_xlabel("labelled training cases per fold (mean over folds)")
    axes.set_ylabel("Dice (validation cases)")
    axes.set_ylim(0, 1)
    axes.legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)
    return path
