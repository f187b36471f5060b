"""The run folder: everything needed to reproduce training and to predict later.

```
RUN/
  plan.json        the plan the data were preprocessed with (the contract with inference)
  config.json      the resolved training configuration
  manifest.json    the cohort the run was trained on (paths as given)
  splits.json      the cross-validation folds (case ids)
  provenance.json  what the run was built from (see below), written last
  preprocessed/    the default cache of preprocessed cases
  fold_K/          checkpoint_best.pt, checkpoint_last.pt, history.csv, train.log, summary.json
```

Everything in a run folder was built from one set of inputs; a rerun or ``--resume`` that reused the
splits, a checkpoint or the cache with other inputs would validate or evaluate on cases the model was
trained or planned on. So ``provenance.json`` records those inputs: the sorted case ids, the content of
the manifest (label map, each case's row without paths, and the SHA-256 of each image and mask, see
:mod:`sarcomakit.core.provenance`) with its digest, the plan's digest and the training options that shape the
model (all but :data:`RESUMABLE_OPTIONS`). :meth:`RunFolder.prepare` compares it with the inputs it is
given and refuses, naming what differs, unless ``overwrite`` clears the folder first.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.provenance import (
    changed_cases,
    content_digest,
    describe_id_change,
    describe_value_change,
    examples,
    json_digest,
    manifest_record,
)
from sarcomakit.data.folds import make_folds, save_folds
from sarcomakit.data.manifest import Manifest
from sarcomakit.planning.plan import Plan
from sarcomakit.runs.config import TrainConfig

PROVENANCE_FORMAT = "sarcomakit-run-provenance"
RESUMABLE_OPTIONS = frozenset({"epochs", "device", "num_workers"})
"""Options that may change between the sessions of one run: a longer schedule, another device, other loaders."""
RUN_CONTENT = ("plan.json", "config.json", "manifest.json", "splits.json", "oof_predictions.csv", "preprocessed")
"""What :meth:`RunFolder.clear` removes besides the ``fold_*`` folders and ``provenance.json``."""
FIX = "use a new --out folder, or --overwrite to start fresh."


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

    @property
    def provenance_path(self) -> Path:
        return self.root / "provenance.json"

    def fold_dir(self, fold: int) -> Path:
        return self.root / f"fold_{fold}"

    def plan(self) -> Plan:
        return Plan.load(self.plan_path)

    def config(self) -> TrainConfig:
        return TrainConfig.load(self.config_path)

    def splits(self) -> list[dict[str, list[str]]]:
        return json.loads(self.splits_path.read_text(encoding="utf-8"))

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
                stratify_clinical: bool = False, overwrite: bool = False) -> RunFolder:
        """Create the run folder, or check that an existing one was built from these same inputs.

        The splits are made once and kept, so that every fold of a run (and a resumed fold) uses them;
        that is sound only because the folder's inputs are checked first (module docstring).

        Args:
            root: the run folder.
            manifest: the training cohort.
            plan: the plan of the run.
            config: the training options (only :data:`RESUMABLE_OPTIONS` may differ from a previous session).
            stratify_clinical: stratify new splits by grade and event too (the task's requirement).
            overwrite: remove what the folder holds from an earlier run and start fresh.

        Raises:
            UserInputError: the folder holds a run built from other cases, files, plan or options.
        """
        run = cls(Path(root))
        if overwrite:
            run.clear()
        run.root.mkdir(parents=True, exist_ok=True)
        recorded = run.recorded_inputs()
        current = run_inputs(manifest, plan, config, known=recorded.get("cases") if recorded else None)
        if recorded is not None:
            changes = describe_run_changes(recorded, current)
            if changes:
                raise UserInputError(f"was built from other inputs ({'; '.join(changes)}).", path=run.root, fix=FIX)
        if not run.plan_path.exists():
            plan.save(run.plan_path)
        config.save(run.config_path)
        if not run.splits_path.exists():
            save_folds(make_folds(manifest, config.n_folds, config.seed, clinical=stratify_clinical),
                       run.splits_path)
        if not (run.root / "manifest.json").exists():
            manifest.save(run.root / "manifest.json")
        write_json(run.provenance_path, current)  # last: refreshes the file times it keeps
        return run

    def recorded_inputs(self) -> dict[str, Any] | None:
        """What the folder was built from: ``provenance.json`` with the plan and options of ``plan.json`` and
        ``config.json``; for a run folder written before records existed, the case ids of ``splits.json``
        instead of the record; None for an empty folder.

        Raises:
            UserInputError: the record is unreadable, or the folder holds folds without the splits they used.
        """
        record: dict[str, Any] = {}
        if self.provenance_path.exists():
            try:
                record = json.loads(self.provenance_path.read_text(encoding="utf-8"))
                if record.get("format") != PROVENANCE_FORMAT:
                    raise ValueError("not a run provenance record")
            except (OSError, ValueError, AttributeError) as exc:
                raise UserInputError(f"cannot be read ({exc}).", path=self.provenance_path, fix=FIX) from exc
        elif self.splits_path.exists():
            record["case_ids"] = sorted({cid for split in self.splits() for cid in split["train"] + split["val"]})
        elif any(self.root.glob("fold_*")):
            raise UserInputError("holds trained folds but no record of the cases they were trained on.",
                                 path=self.root, fix=FIX)
        # Plan and options are read back through their models, so that a field added in a later version
        # (with a default) does not make an unchanged run look changed.
        if self.plan_path.exists():
            record["plan_sha256"] = json_digest(self.plan().model_dump(mode="json"))
        if self.config_path.exists():
            record["config"] = _shaping_options(self.config())
        return record or None

    def clear(self) -> None:
        """Remove the run's content (folds, splits, plan, config, cache, record); other files are left alone.

        The record goes last, so that an interrupted clear still refuses other inputs on the next run.
        """
        if not self.root.is_dir():
            return
        for path in [*sorted(self.root.glob("fold_*")), *(self.root / name for name in RUN_CONTENT)]:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.provenance_path.unlink(missing_ok=True)


def _shaping_options(config: TrainConfig) -> dict[str, Any]:
    """The training options that shape the model (all but :data:`RESUMABLE_OPTIONS`)."""
    return config.model_dump(mode="json", exclude=set(RESUMABLE_OPTIONS))


def run_inputs(manifest: Manifest, plan: Plan, config: TrainConfig,
               known: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance record of a run built from these inputs (layout in the module docstring).

    Args:
        known: a previous record's ``cases``: files unchanged since (same path, size and time) are not read.
    """
    content = manifest_record(manifest, known)
    return {"format": PROVENANCE_FORMAT, "version": 1, "case_ids": sorted(manifest.case_ids),
            "manifest_sha256": content_digest(content), "plan_sha256": json_digest(plan.model_dump(mode="json")),
            "config": _shaping_options(config), **content}


def describe_run_changes(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between a recorded run's inputs and the current ones, one short phrase each.

    Only what the record holds is compared (a run folder from before provenance records has no manifest content).
    """
    changes = []
    if "case_ids" in recorded and (ids := describe_id_change(recorded["case_ids"], current["case_ids"])):
        changes.append(f"cases: {ids}")
    if "channels" in recorded and recorded["channels"] != current["channels"]:
        changes.append(f"channels {', '.join(recorded['channels'])} then, {', '.join(current['channels'])} now")
    if "labels" in recorded and recorded["labels"] != current["labels"]:
        changes.append(f"label map {recorded['labels']} then, {current['labels']} now")
    if "cases" in recorded and (changed := changed_cases(recorded["cases"], current["cases"])):
        changes.append(f"{len(changed)} case(s) changed since: "
                       + examples(f"{cid} ({', '.join(what)})" for cid, what in changed.items()))
    if "plan_sha256" in recorded and recorded["plan_sha256"] != current["plan_sha256"]:
        changes.append("another plan")
    if "config" in recorded and (options := describe_value_change(recorded["config"], current["config"])):
        changes.append(f"other training options ({options})")
    return changes
