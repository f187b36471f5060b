"""Export a cohort manifest as an nnU-Net v2 raw dataset, to benchmark against nnU-Net on the same cases.

Writes ``Dataset{ID:03d}_{name}/`` with ``dataset.json`` (``channel_names``, ``labels``,
``numTraining``, ``file_ending``), ``imagesTr/{case}_{i:04d}.nii.gz``, ``labelsTr/{case}.nii.gz``
for labelled cases, and ``imagesTs/`` for cases without a label. The folder is built under a
temporary name and renamed when complete. NIfTI inputs are copied byte for byte; other formats
are converted with SimpleITK (geometry kept).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from sarcomakit.data.manifest import Manifest
from sarcomakit.errors import UserInputError
from sarcomakit.io.atomic import atomic_dir, write_json
from sarcomakit.io.image import read_image, write_image

FILE_ENDING = ".nii.gz"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")


def _place(source: Path, target: Path) -> None:
    if source.name.lower().endswith(FILE_ENDING):
        shutil.copyfile(source, target)
    else:
        write_image(read_image(source), target)


def export_nnunet_raw(manifest: Manifest, out_dir: str | Path, dataset_id: int = 501,
                      name: str = "Sarcoma") -> Path:
    """Write the cohort as an nnU-Net v2 raw dataset folder.

    Args:
        manifest: the cohort; every case needs every declared channel.
        out_dir: the ``nnUNet_raw`` folder that receives ``Dataset{ID:03d}_{name}``.
        dataset_id: nnU-Net's dataset number (1..999).
        name: the dataset name (letters, digits, ``_``, ``-``).

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
    return target
