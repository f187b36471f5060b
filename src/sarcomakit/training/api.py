"""Train a segmentation model on a manifest with a plan: the library call behind ``sarcomakit train``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from sarcomakit.core import distributed
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_text
from sarcomakit.data.manifest import Manifest
from sarcomakit.planning.plan import Plan
from sarcomakit.planning.preprocess import PreprocessedCase, preprocess_cohort
from sarcomakit.runs.config import TrainConfig
from sarcomakit.runs.folder import RunFolder
from sarcomakit.tasks import build_task
from sarcomakit.training.fold import FoldResult, train_fold


@dataclass
class TrainResult:
    """The trained folds by index, and the cases left out because they failed preprocessing (id -> reason)."""

    folds: dict[int, FoldResult]
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """The cohort exit policy: 1 when any case failed (the others were trained on), else 0."""
        return 1 if self.failures else 0


def load_preprocessed(folder: Path, case_ids: Sequence[str]) -> list[PreprocessedCase]:
    return [PreprocessedCase.load(folder, cid) for cid in case_ids]


def train(manifest: Manifest, plan: Plan, run_dir: str | Path, *, folds: Sequence[int] = (0,),
          config: TrainConfig | None = None, resume: bool = False, preprocessed_dir: str | Path | None = None,
          time_limit_s: float | None = None, early_stopping: int | None = None,
          console: Console | None = None, overwrite: bool = False) -> TrainResult:
    """Preprocess (cached, resumable) and train the given folds of a run.

    Args:
        manifest: the training cohort (cases with labels, unless the task learns without them).
        plan: the conventional plan from :func:`sarcomakit.planning.plan_cohort`.
        run_dir: the run folder (see :mod:`sarcomakit.runs.folder`).
        folds: which cross-validation folds to train.
        config: training options; defaults to :class:`TrainConfig` ().
        resume: continue folds that have a last checkpoint.
        preprocessed_dir: where preprocessed arrays are cached (default ``run_dir/preprocessed``).
        time_limit_s, early_stopping: see :func:`sarcomakit.training.fold.train_fold`.
        overwrite: remove an earlier run in ``run_dir`` (folds, splits, cache) and start fresh; without it,
            a folder built from other inputs is refused (see :mod:`sarcomakit.runs.folder`).

    Returns:
        The result of each trained fold, and the cases that could not be preprocessed (left out).
    """
    console = console or Console(stderr=True)
    config = config or TrainConfig()
    task = build_task(config, manifest)
    needs = task.requirements
    used = [c.case_id for c in manifest.cases if c.label is not None or not needs.needs_labels]
    if len(used) < 2:
        if not needs.needs_labels:
            raise UserInputError("the manifest has fewer than two cases; nothing to train on.",
                                 path=manifest.source, fix="add cases to the manifest.")
        raise UserInputError("fewer than two cases have a label; nothing to train on.", path=manifest.source,
                             fix="add label paths to the manifest.")
    manifest = manifest.subset(used)
    distributed.init_from_environment(config.device)
    failures: dict[str, str] = {}
    if distributed.is_main():  # one process prepares the run folder and the cache; the others wait for it
        run = RunFolder.prepare(run_dir, manifest, plan, config, stratify_clinical=needs.stratify_clinical,
                                overwrite=overwrite)
        cache = Path(preprocessed_dir) if preprocessed_dir else run.root / "preprocessed"
        outcome = preprocess_cohort(manifest, plan, cache, allow_missing_channels=needs.allow_missing_channels)
        if outcome.failures:
            outcome.print_summary(console)
        failures = outcome.failures
    failures = distributed.broadcast_object(failures)
    run = RunFolder(Path(run_dir))
    cache = Path(preprocessed_dir) if preprocessed_dir else run.root / "preprocessed"
    usable = set(used) - set(failures)
    splits = run.splits()
    results: dict[int, FoldResult] = {}
    for fold in folds:
        if not 0 <= fold < len(splits):
            raise UserInputError(f"fold {fold} does not exist; the run has {len(splits)} folds.",
                                 path=run.splits_path, fix=f"use --fold between 0 and {len(splits) - 1}.")
        train_ids = [c for c in splits[fold]["train"] if c in usable]
        val_ids = [c for c in splits[fold]["val"] if c in usable]
        if distributed.is_main():
            console.print(f"fold {fold}: {len(train_ids)} training and {len(val_ids)} validation cases")
        results[fold] = train_fold(load_preprocessed(cache, train_ids), load_preprocessed(cache, val_ids), plan,
                                   config, run.fold_dir(fold), fold=fold, task=task, resume=resume,
                                   time_limit_s=time_limit_s, early_stopping=early_stopping, console=console)
    if distributed.is_main():
        _collect_out_of_fold(run)
    return TrainResult(folds=results, failures=failures)


def _collect_out_of_fold(run: RunFolder) -> None:
    """Gather the folds' out-of-fold predictions (multi-task runs) into ``RUN/oof_predictions.csv``."""
    parts = sorted(run.root.glob("fold_*/oof_predictions.csv"))
    if not parts:
        return
    header, lines = "", []
    for part in parts:
        rows = part.read_text(encoding="utf-8").splitlines()
        header = header or rows[0]
        lines.extend(rows[1:])
    write_text(run.root / "oof_predictions.csv", "\n".join([header, *lines]) + "\n")
