"""Which model made each mask in a prediction folder, from which input: so a rerun skips only its own work.

``predict`` skips cases whose mask already exists (an interrupted cohort run resumes). A mask is only
"already done" when this model, with these options, made it from this very input. So each written mask
gets a :class:`~sarcomakit.core.step_record.StepRecord` (``.sarcomakit/predictions/{case_id}.json`` beside
it) holding the model key (the SHA-256 of the checkpoints used and of the options that change the output)
and the content digests of the case's input images. On a rerun:

- same model and same input: the case is skipped;
- same model, another input (an image re-exported in place): the case is predicted again;
- a mask made by another model or with other options, or a mask without a record (written by something
  else, perhaps by hand): the run stops before predicting anything, naming the cases, because going on
  would either mix two models' masks in one folder or overwrite files it did not make. ``--overwrite``
  (or another folder) is the user's explicit choice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.provenance import examples, file_identity, json_digest
from sarcomakit.core.step_record import StepRecord
from sarcomakit.data.manifest import Case

STEP = "predictions"


def model_key(checkpoints: Sequence[str | Path], options: Mapping[str, Any]) -> str:
    """SHA-256 of the checkpoints' contents (in order) and of the options that change the masks."""
    return json_digest({"checkpoints": [file_identity(p)["sha256"] for p in checkpoints], "options": dict(options)})


class PredictionRecord:
    """The records of one prediction folder for one model.

    Args:
        out_dir: the prediction folder.
        key: :func:`model_key` of the model predicting now.
        channels: the plan's channels (the input images that count).
        mask_name: the mask file name of a case id.
    """

    def __init__(self, out_dir: str | Path, key: str, channels: Sequence[str],
                 mask_name: Callable[[str], str] = lambda case_id: f"{case_id}.nii.gz") -> None:
        self.out_dir = Path(out_dir)
        self.key = key
        self.channels = list(channels)
        self.mask_name = mask_name
        self.records = StepRecord(self.out_dir, STEP)

    def _inputs(self, case: Case) -> dict[str, Path]:
        return {ch: case.images[ch] for ch in self.channels if ch in case.images}

    def check_folder(self, cases: Sequence[Case]) -> None:
        """Refuse a folder that holds masks, for these cases, that another model made or that have no record."""
        foreign, other_model = [], []
        for case in cases:
            if not (self.out_dir / self.mask_name(case.case_id)).exists():
                continue
            stored = self.records.stored(case.case_id)
            if stored is None:
                foreign.append(case.case_id)
            elif stored.get("options") != json_digest(self.key):
                other_model.append(case.case_id)
        fix = "predict into another folder, or add --overwrite to replace them."
        if other_model:
            raise UserInputError(f"it holds masks made by another model or with other options "
                                 f"({len(other_model)} case(s): {examples(other_model)}).", path=self.out_dir, fix=fix)
        if foreign:
            raise UserInputError(f"it holds masks that sarcomakit did not record writing ({len(foreign)} case(s): "
                                 f"{examples(foreign)}).", path=self.out_dir, fix=fix)

    def is_current(self, case: Case, also: Sequence[Path] = ()) -> bool:
        """True when this model made the case's mask (and the ``also`` files exist) from the same input."""
        return self.records.is_current(case.case_id, self._inputs(case), self.key,
                                       outputs=[self.out_dir / self.mask_name(case.case_id), *also])

    def save(self, case: Case) -> None:
        """Record that this model has just written the case's mask from its current input."""
        self.records.save(case.case_id, self._inputs(case), self.key)
