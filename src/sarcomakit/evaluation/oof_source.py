"""The folders that hold out-of-fold tables: an experiment folder (several methods) or a multi-task run
folder (one method), with the cohort manifest and the predicted masks around them.

An experiment folder holds ``oof_predictions.csv`` (all methods) and ``experiment.json`` (methods,
reference, folds, seed, cohort manifest, prediction folders); a multi-task run folder holds
``oof_predictions.csv`` (method ``multitask``), ``manifest.json`` and maybe ``predictions/``.
:func:`load_oof_source` reads either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sarcomakit.core.errors import SarcomakitError, UserInputError
from sarcomakit.data.manifest import Manifest
from sarcomakit.evaluation.oof import OOF_FILE, load_oof

EXPERIMENT_FILE = "experiment.json"
RUN_MANIFEST_FILE = "manifest.json"
RUN_PREDICTIONS_DIR = "predictions"


@dataclass
class OOFSource:
    """The out-of-fold predictions of an experiment folder or a multi-task run folder, with what surrounds them.

    Attributes:
        root: the folder read.
        kind: ``"experiment"`` (``experiment.json`` present) or ``"run"``.
        oof: the validated OOF table.
        methods: method names, in the experiment's order (then any other method in the table).
        reference: the experiment's reference method, or None when it does not name one.
        cohort: the cohort manifest, or None when absent or unreadable (see ``notes``).
        prediction_dirs: folder of predicted masks per method (None: no masks).
        settings: the experiment's settings (folds, seed...) for the report.
        notes: what could not be read, and why.
    """

    root: Path
    kind: str
    oof: pd.DataFrame
    methods: list[str]
    reference: str | None
    cohort: Manifest | None
    prediction_dirs: dict[str, Path | None]
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def choose_reference(self, requested: str | None = None) -> str:
        """The reference method: ``requested`` when given, else the experiment's, else ``multitask`` when
        present, else the first method.

        Raises:
            UserInputError: ``requested`` (or the experiment's reference) has no predictions here.
        """
        reference = requested or self.reference or ("multitask" if "multitask" in self.methods else self.methods[0])
        if reference not in self.methods:
            raise UserInputError(f"has no out-of-fold predictions of method {reference!r} "
                                 f"(methods: {', '.join(self.methods)}).", path=self.root / OOF_FILE,
                                 fix="pick the reference with --reference among the methods listed.")
        return reference


def load_oof_source(source_dir: str | Path) -> OOFSource:
    """Read an experiment folder (``oof_predictions.csv`` + ``experiment.json``) or a run folder
    (``oof_predictions.csv`` + ``manifest.json`` + maybe ``predictions/``).

    Relative paths in ``experiment.json`` are resolved against the experiment folder.

    Raises:
        UserInputError: the folder or its ``oof_predictions.csv`` is missing, or ``experiment.json`` is
            not valid JSON.
    """
    root = Path(source_dir)
    if not root.is_dir():
        raise UserInputError("folder not found.", path=root,
                             fix="give an experiment folder or a multi-task run folder.")
    oof_path = root / OOF_FILE
    if not oof_path.is_file():
        raise UserInputError(f"holds no {OOF_FILE}.", path=root,
                             fix="give the folder of 'sarcomakit experiment' or of a multi-task "
                                 "'sarcomakit train' run (it writes the out-of-fold predictions there).")
    oof = load_oof(oof_path)
    in_table = list(dict.fromkeys(oof["method"]))
    notes: list[str] = []
    experiment_path = root / EXPERIMENT_FILE
    if experiment_path.is_file():
        try:
            settings = json.loads(experiment_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserInputError(f"is not valid JSON ({exc.msg}, line {exc.lineno}).", path=experiment_path,
                                 fix="repair the file or rerun the experiment.") from exc
        if not isinstance(settings, dict):
            raise UserInputError("is not an experiment description (a JSON object).", path=experiment_path,
                                 fix="rerun the experiment.")
        declared = [str(m) for m in settings.get("methods") or []]
        methods = [m for m in declared if m in in_table] + [m for m in in_table if m not in declared]
        for method in declared:
            if method not in in_table:
                notes.append(f"method {method} is declared in {EXPERIMENT_FILE} but has no out-of-fold predictions.")
        reference = settings.get("reference")
        cohort = _load_cohort(_resolve(root, settings.get("cohort")), notes)
        prediction_dirs = {m: _resolve(root, (settings.get("prediction_dirs") or {}).get(m)) for m in methods}
        kind = "experiment"
    else:
        settings, methods, reference, kind = {}, in_table, None, "run"
        manifest_path = root / RUN_MANIFEST_FILE
        cohort = _load_cohort(manifest_path if manifest_path.is_file() else None, notes)
        predictions = root / RUN_PREDICTIONS_DIR
        prediction_dirs = {m: (predictions if predictions.is_dir() else None) for m in methods}
    for method, folder in prediction_dirs.items():
        if folder is not None and not folder.is_dir():
            notes.append(f"prediction folder of {method} not found: {folder}")
            prediction_dirs[method] = None
    return OOFSource(root=root, kind=kind, oof=oof, methods=methods,
                     reference=str(reference) if reference is not None else None, cohort=cohort,
                     prediction_dirs=prediction_dirs, settings=settings, notes=notes)


# ---------------------------------------------------------------------- internals
def _resolve(root: Path, value: Any) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(str(value)).expanduser()
    return path if path.is_absolute() else root / path


def _load_cohort(path: Path | None, notes: list[str]) -> Manifest | None:
    if path is None:
        notes.append("no cohort manifest: overlays are left out.")
        return None
    try:
        return Manifest.load(path)
    except SarcomakitError as exc:
        notes.append(f"cohort manifest unreadable, overlays left out: {exc}")
        return None
