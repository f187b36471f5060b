"""What keeps an experiment's evaluation cases out of its planning and model selection.

An experiment scores each fold's validation cases, so those cases are its test set: nothing of them may
shape the model scored on them.

- **Planning.** The fingerprint behind a plan reads every case it is given: spacings (the target spacing),
  shapes (the patch), and for CT the intensities under the tumour mask (the clipping bounds). A plan made on
  the whole cohort would give every fold the held-out cases' spacing and, through the labels, their tumour
  intensities; under a site or spacing shift that is exactly what the shift is meant to withhold. Each fold
  is therefore planned on its training cases alone (:func:`plan_training_cases`).
- **Model selection.** Keeping the epoch with the best validation score picks the epoch by the test cases.
  Experiments keep the last epoch, as nnU-Net's cross-validation does (:func:`without_model_selection`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sarcomakit.core.step_record import StepRecord
from sarcomakit.data.manifest import Manifest
from sarcomakit.planning.fingerprint import Fingerprint
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.runs.config import TrainConfig

PLAN_STEP = "fold-plan"


def without_model_selection(config: TrainConfig) -> TrainConfig:
    """The config with the last epoch kept (no epoch chosen by the validation fold, which is scored)."""
    return config.updated(checkpoint_selection="last")


def plan_training_cases(manifest: Manifest, train_ids: Sequence[str], folder: str | Path, *,
                        num_samples_per_case: int = 10000, seed: int = 0) -> tuple[Plan, Fingerprint]:
    """The plan and fingerprint of one fold, made from its training cases only.

    Written to ``folder/plan.json`` and ``folder/fingerprint.json`` and reused on a rerun only when they were
    made from the same cases with the same image and label files (content digests); otherwise planned again.

    Args:
        manifest: the cohort the ids refer to.
        train_ids: the fold's training cases (the only ones read).
        folder: where the fold's plan goes.
    """
    folder = Path(folder)
    training = manifest.subset(sorted(train_ids))
    files = {f"{case.case_id}/{name}": path for case in training.cases
             for name, path in [*case.images.items(), ("label", case.label)] if path is not None}
    options = {"cases": training.case_ids, "samples": num_samples_per_case, "seed": seed}
    record = StepRecord(folder, PLAN_STEP)
    plan_path, fingerprint_path = folder / "plan.json", folder / "fingerprint.json"
    if record.is_current("plan", files, options, outputs=[plan_path, fingerprint_path]):
        return Plan.load(plan_path), Fingerprint.load(fingerprint_path)
    plan = plan_cohort(training, plan_path, num_samples_per_case=num_samples_per_case, seed=seed,
                       show_progress=False)
    record.save("plan", files, options)
    return plan, Fingerprint.load(fingerprint_path)
