"""Import an nnU-Net raw dataset folder (``DatasetXXX_Name``) as a cohort manifest.

The folder layout nnU-Net v2 expects::

    dataset.json            channel_names {"0": "T1", ...}, labels {"background": 0, ...}, file_ending
    imagesTr/{case}_{XXXX}{file_ending}    one file per case and channel XXXX (0000, 0001, ...)
    labelsTr/{case}{file_ending}
    imagesTs/{case}_{XXXX}{file_ending}    optional, cases without labels

nnU-Net v1's ``dataset.json`` (``modality`` {"0": "MRI"} and ``labels`` {"0": "background"}) is
accepted too. The manifest points at the files where they are; nothing is copied or modified.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.importers._common import raise_problems, read_json_object, unique_names
from sarcomakit.data.manifest import Case, Manifest

CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def read_dataset_json(dataset_dir: Path) -> tuple[list[str], dict[str, int], str]:
    """Channel names (in channel-index order), the label map (name -> value) and the file ending.

    Raises:
        UserInputError: ``dataset.json`` is missing or lacks the channel or label declarations.
    """
    path = dataset_dir / "dataset.json"
    data = read_json_object(path, fix="point at an nnU-Net raw dataset folder (it holds dataset.json, "
                            "imagesTr/ and labelsTr/).")
    return parse_declarations(data, path)


def parse_declarations(data: dict[str, Any], path: Path) -> tuple[list[str], dict[str, int], str]:
    """Channel names, label map and file ending from a parsed nnU-Net (v1/v2) or MSD ``dataset.json``."""
    declared = data.get("channel_names", data.get("modality"))
    if not isinstance(declared, dict) or not declared:
        raise UserInputError("declares no channels ('channel_names' in nnU-Net v2, 'modality' in v1).",
                             path=path, fix='add e.g. "channel_names": {"0": "T1", "1": "T2FS"}.')
    try:
        order = sorted(declared, key=int)
    except ValueError as exc:
        raise UserInputError(f"channel keys {list(declared)} are not channel indices.", path=path,
                             fix='key channels by index: {"0": "T1", "1": "T2FS"}.') from exc
    if [int(k) for k in order] != list(range(len(order))):
        raise UserInputError(f"channel indices {order} are not 0..{len(order) - 1}.", path=path,
                             fix="number channels consecutively from 0.")
    channels = unique_names(str(declared[k]) for k in order)
    labels = _label_map(data.get("labels"), path)
    ending = str(data.get("file_ending", ".nii.gz"))
    if not ending.startswith("."):
        ending = "." + ending
    return channels, labels, ending


def _label_map(raw: Any, path: Path) -> dict[str, int]:
    if not isinstance(raw, dict) or not raw:
        raise UserInputError("declares no labels.", path=path, fix='add "labels": {"background": 0, "tumour": 1}.')
    if all(str(k).strip().lstrip("-").isdigit() for k in raw) and all(isinstance(v, str) for v in raw.values()):
        return {str(name): int(value) for value, name in raw.items()}  # v1: value -> name
    labels: dict[str, int] = {}
    for name, value in raw.items():
        if isinstance(value, list | tuple):
            raise UserInputError(f"label '{name}' is a region ({value}); region-based labels are not "
                                 "supported.", path=path, fix="declare one integer value per label.")
        try:
            labels[str(name)] = int(value)
        except (TypeError, ValueError) as exc:
            raise UserInputError(f"label '{name}' has a non-integer value {value!r}.", path=path,
                                 fix="give each label an integer value.") from exc
    return labels


def _scan_images(folder: Path, ending: str, n_channels: int, problems: list[str]) -> dict[str, dict[int, Path]]:
    """Files of ``folder`` grouped by case and channel index; naming problems appended to ``problems``."""
    cases: dict[str, dict[int, Path]] = {}
    for file in sorted(folder.iterdir()):
        if file.name.startswith(".") or not file.is_file():
            continue
        if not file.name.endswith(ending):
            problems.append(f"{folder.name}/{file.name} does not end with the declared file_ending '{ending}'")
            continue
        match = CHANNEL_SUFFIX.match(file.name[: -len(ending)])
        if match is None:
            problems.append(f"{folder.name}/{file.name} lacks the _XXXX channel suffix")
            continue
        index = int(match["channel"])
        if index >= n_channels:
            problems.append(f"{folder.name}/{file.name} is channel {index} but dataset.json declares "
                            f"{n_channels} channel(s)")
            continue
        cases.setdefault(match["case"], {})[index] = file
    for case_id, files in cases.items():
        missing = [f"{case_id}_{i:04d}{ending}" for i in range(n_channels) if i not in files]
        if missing:
            problems.append(f"case {case_id} has no {folder.name}/{', '.join(missing)}")
    return cases


def import_nnunet_raw(dataset_dir: str | Path, out_manifest: str | Path | None = None,
                      include_test: bool = False) -> Manifest:
    """Build a manifest from an nnU-Net raw dataset folder.

    Args:
        dataset_dir: the ``DatasetXXX_Name`` folder.
        out_manifest: where to save the manifest (``.csv`` or ``.json``); not saved when None.
        include_test: also list the cases of ``imagesTs/`` (without labels; ``extra["split"] = "test"``).

    Returns:
        The manifest: one case per training case (and test case), channels named as in dataset.json.

    Raises:
        UserInputError: a missing ``dataset.json`` or ``imagesTr/``, files that do not follow the naming
            scheme, a case missing a channel file or its label. All such problems are listed together.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise UserInputError("is not a folder.", path=root, fix="point at an nnU-Net raw dataset folder.")
    channels, labels, ending = read_dataset_json(root)
    images_tr = root / "imagesTr"
    if not images_tr.is_dir():
        raise UserInputError("has no imagesTr/ folder.", path=root, fix="point at an nnU-Net raw dataset folder.")
    problems: list[str] = []
    training = _scan_images(images_tr, ending, len(channels), problems)
    labels_tr = root / "labelsTr"
    label_files = {}
    if labels_tr.is_dir():
        label_files = {f.name[: -len(ending)]: f for f in labels_tr.iterdir()
                       if f.is_file() and f.name.endswith(ending) and not f.name.startswith(".")}
    for case_id in training:
        if case_id not in label_files:
            problems.append(f"case {case_id} has no labelsTr/{case_id}{ending}")
    for case_id in sorted(set(label_files) - set(training)):
        problems.append(f"labelsTr/{case_id}{ending} has no images in imagesTr/")
    test: dict[str, dict[int, Path]] = {}
    if include_test and (root / "imagesTs").is_dir():
        test = _scan_images(root / "imagesTs", ending, len(channels), problems)
        for case_id in sorted(set(test) & set(training)):
            problems.append(f"case {case_id} is in both imagesTr/ and imagesTs/")
    if not training and not test:
        problems.append(f"imagesTr/ holds no *_0000{ending} files")
    raise_problems(problems, what="is not a valid nnU-Net raw dataset", path=root,
                   fix="name files {case}_{XXXX}" + ending + " in imagesTr/ (one per channel) and {case}"
                   + ending + " in labelsTr/, as nnU-Net v2 expects.")

    cases = []
    for split, found in (("train", training), ("test", test)):
        for case_id in sorted(found):
            files = found[case_id]
            extra = {"split": split} if include_test else {}
            cases.append(Case(case_id=case_id, images={ch: files[i].resolve() for i, ch in enumerate(channels)},
                              label=label_files[case_id].resolve() if split == "train" else None, extra=extra))
    manifest = Manifest(channels=channels, cases=cases, labels=labels)
    if out_manifest is not None:
        manifest.source = manifest.save(out_manifest)
    return manifest
