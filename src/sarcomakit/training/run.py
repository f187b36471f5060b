"""The run folder: everything needed to reproduce training and to predict later.

```
RUN/
  plan.json        the plan the data were preprocessed with (the contract with inference)
  config.json      the resolved training configuration
  manifest.json    the cohort the run was trained on (paths as given)
  splits.json      the cross-validation folds (case ids)
  fold_K/          checkpoint_best.pt, checkpoint_last.pt, history.csv, train.log, summary.json
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sarcomakit.data.manifest import Manifest
from sarcomakit.errors import UserInputError
from sarcomakit.planning.plan import Plan
from sarcomakit.training.config import TrainConfig
from sarcomakit.training.folds import make_folds, save_folds


@dataclass
class RunFolder:
    """Paths and contents of a run folder."""

    root: Path

    @property
    def plan_path(self) -> Path:
        return self.root / "plan.json"

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def splits_path(self) -> Path:
        return self.root / "splits.json"

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold_{fold}"

    def plan(self) -> Plan:
        return Plan.load(self.plan_path)

    def config(self) -> TrainConfig:
        return TrainConfig.load(self.config_path)

    def splits(self) -> list[dict[str, list[str]]]:
        return json.loads(self.splits_path.read_text())

    def trained_folds(self, checkpoint: str = "best") -> dict[int, Path]:
        """Checkpoints by fold number, for the folds that have one."""
        found = {}
        for folder in sorted(self.root.glob("fold_*")):
            path = folder / f"checkpoint_{checkpoint}.pt"
            if path.is_file() and folder.name[5:].isdigit():
                found[int(folder.name[5:])] = path
        return found

    @classmethod
    def open(cls, root: str | Path) -> RunFolder:
        """An existing run folder (one with plan.json and config.json)."""
        run = cls(Path(root))
        if not run.plan_path.is_file() or not run.config_path.is_file():
            raise UserInputError("is not a sarcomakit run folder (plan.json/config.json missing).", path=run.root,
                                 fix="give the folder written by 'sarcomakit train'.")
        return run

    @classmethod
    def prepare(cls, root: str | Path, manifest: Manifest, plan: Plan, config: TrainConfig, *,
                stratify_clinical: bool = False) -> RunFolder:
        """Create the run folder, or check that an existing one was made with the same plan and config.

        The splits are made once and kept, so that every fold of a run (and a resumed fold) uses them; with
        ``stratify_clinical`` (the task's requirement) they are also stratified by grade and event.
        """
        run = cls(Path(root))
        run.root.mkdir(parents=True, exist_ok=True)
        if run.plan_path.exists():
            if run.plan().model_dump() != plan.model_dump():
                raise UserInputError("was trained with a different plan.", path=run.plan_path,
                                     fix="use a new run folder, or the same plan file as before.")
        else:
            plan.save(run.plan_path)
        if run.config_path.exists():
            old = run.config()
            if old.model_dump(exclude={"epochs", "device", "num_workers"}) != \
                    config.model_dump(exclude={"epochs", "device", "num_workers"}):
                raise UserInputError("was trained with other training options.", path=run.config_path,
                                     fix="use a new run folder, or the same options (only --epochs may change).")
        config.save(run.config_path)
        if not run.splits_path.exists():
            save_folds(make_folds(manifest, config.n_folds, config.seed, clinical=stratify_clinical),
                       run.splits_path)
        if not (run.root / "manifest.json").exists():
            manifest.save(run.root / "manifest.json")
        return run
