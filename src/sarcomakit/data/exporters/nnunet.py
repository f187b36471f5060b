"""Export a cohort manifest as an nnU-Net v2 raw dataset, to benchmark against nnU-Net on the same cases.

Writes ``Dataset{ID:03d}_{name}/`` with ``dataset.json`` (``channel_names``, ``labels``,
``numTraining``, ``file_ending``), ``imagesTr/{case}_{i:04d}.nii.gz``, ``labelsTr/{case}.nii.gz``
for labelled cases, and ``imagesTs/`` for cases without a label. When every labelled case has a
``fold``, ``splits_final.json`` (nnU-Net's cross-validation split format) is written beside
``dataset.json``: copy it to ``nnUNet_preprocessed/Dataset{ID:03d}_{name}/`` after planning so that
nnU-Net trains on the same folds. The folder is built under a temporary name and renamed when
complete. NIfTI inputs are copied byte for byte; other formats are converted with SimpleITK (geometry kept).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import atomic_dir, write_json
from sarcomakit.core.io.image import read_image, write_image
from sarcomakit.data.manifest import Manifest

FILE_ENDING = ".nii.gz"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _place(source: Path, target: Path) -> None:
    if source.name.lower().endswith(FILE_ENDING):
        shutil.copyfile(source, target)
    else:
        write_image(read_image(source), target)


def export_nnunet_raw(manifest: Manifest, out_dir: str | Path, dataset_id: int = 501,
                      name: str = "Sarcoma", *, overwrite: bool = False) -> Path:
    """Write the cohort as an nnU-Net v2 raw dataset folder.

    Args:
        manifest: the cohort; every case needs every declared channel.
        out_dir: the ``nnUNet_raw`` folder that receives ``Dataset{ID:03d}_{name}``.
        dataset_id: nnU-Net's dataset number (1..999).
        name: the dataset name (letters, digits, ``_``, ``-``).
        overwrite: replace an existing ``Dataset{ID:03d}_{name}`` (never one of another name with
            the same id, which nnU-Net would confuse with it).

    Returns:
        The path of the dataset folder.

    Raises:
        UserInputError: a bad id or name, cases missing channels or files, labels not numbered
            0..N-1 as nnU-Net requires.
    """
    if not 1 <= int(dataset_id) <= 999:
        raise UserInputError(f"dataset id {dataset_id} is out of nnU-Net's range.", fix="use an id in 1..999.")
    if not _NAME.match(name):
        raise UserInputError(f"dataset name '{name}' has characters nnU-Net folder names avoid.",
                             fix="use letters, digits, '_' or '-'.")
    values = sorted(manifest.labels.values())
    if values != list(range(len(values))) or manifest.labels.get("background", 0) != 0:
        raise UserInputError(f"labels {manifest.labels} are not background=0 and consecutive integers.",
                             path=manifest.source, fix="nnU-Net needs label values 0..N-1; relabel the masks.")
    problems = []
    for case in manifest.cases:
        for channel in manifest.channels:
            path = case.images.get(channel)
            if path is None or not path.is_file():
                problems.append(f"{case.case_id}: channel {channel} " + ("missing" if path is None else "not found"))
        if case.label is not None and not case.label.is_file():
            problems.append(f"{case.case_id}: label not found")
    if problems:
        raise UserInputError("cannot be exported: " + "; ".join(problems[:8])
                             + ("; ..." if len(problems) > 8 else "") + ".", path=manifest.source,
                             fix="run 'sarcomakit validate' on the manifest and fix the cases listed.")

    target = Path(out_dir) / f"Dataset{int(dataset_id):03d}_{name}"
    existing = Path(out_dir).glob(f"Dataset{int(dataset_id):03d}_*") if Path(out_dir).is_dir() else []
    taken = sorted(p.name for p in existing if p != target)
    if taken:
        raise UserInputError(f"dataset id {dataset_id} is already used by {taken[0]}.", path=out_dir,
                             fix="choose another --id (nnU-Net identifies datasets by number).")
    if target.exists() and not overwrite:
        raise UserInputError("already exists.", path=target, fix="remove it, choose another --id, or pass --overwrite.")
    with atomic_dir(target) as tmp:
        n_training = 0
        for case in manifest.cases:
            split = "Tr" if case.label is not None else "Ts"
            (tmp / f"images{split}").mkdir(exist_ok=True)
            for index, channel in enumerate(manifest.channels):
                _place(case.images[channel], tmp / f"images{split}" / f"{case.case_id}_{index:04d}{FILE_ENDING}")
            if case.label is not None:
                (tmp / "labelsTr").mkdir(exist_ok=True)
                _place(case.label, tmp / "labelsTr" / f"{case.case_id}{FILE_ENDING}")
                n_training += 1
        write_json(tmp / "dataset.json", {
            "name": name,
            "channel_names": {str(i): ch for i, ch in enumerate(manifest.channels)},
            "labels": dict(sorted(manifest.labels.items(), key=lambda item: item[1])),
            "numTraining": n_training,
            "file_ending": FILE_ENDING,
        })
        splits = cross_validation_splits(manifest)
        if splits:
            write_json(tmp / "splits_final.json", splits)
    return target


def cross_validation_splits(manifest: Manifest) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json`` content from the manifest's folds (empty unless all labelled cases have one).

    Fold ``k`` validates on the cases with ``fold == k`` and trains on the other labelled cases.
    """
    labelled = [c for c in manifest.cases if c.label is not None]
    if not labelled or any(c.fold is None for c in labelled):
        return []
    folds = sorted({int(c.fold) for c in labelled if c.fold is not None})
    return [{"train": [c.case_id for c in labelled if c.fold != k],
             "val": [c.case_id for c in labelled if c.fold == k]} for k in folds]
