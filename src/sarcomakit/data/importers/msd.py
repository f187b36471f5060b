"""Import a Medical Segmentation Decathlon task from its ``dataset.json``.

MSD's ``dataset.json`` declares ``modality`` ({"0": "FLAIR", "1": "T1w", ...}), ``labels``
({"0": "background", "1": "tumour"}), ``training`` ([{"image": "./imagesTr/x.nii.gz",
"label": "./labelsTr/x.nii.gz"}]) and ``test`` (["./imagesTs/y.nii.gz"]). Multi-channel images are
single 4D NIfTI files with the channels along the 4th axis: they are split here into one 3D file
per channel (``{out_dir}/images/{case}_{channel}.nii.gz``) with the geometry of the first three
axes kept, since the rest of sarcomakit reads one 3D volume per channel. Single-channel 3D
images are referenced where they are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import SimpleITK as sitk

from sarcomakit.core.cohort_runner import run_per_case
from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.io.image import write_image
from sarcomakit.data.importers._common import raise_problems, read_json_object, sanitise_case_id
from sarcomakit.data.importers.nnunet import parse_declarations
from sarcomakit.data.manifest import Case, Manifest

MANIFEST_NAME = "manifest.csv"


def split_channels(path: Path, channels: list[str], out_dir: Path | None, case_id: str) -> dict[str, Path]:
    """Write each channel of a 4D image as a 3D NIfTI on the image's spatial grid.

    Args:
        path: a 3D or 4D image; a 3D one is returned as is (one channel).
        channels: the expected channel names, in the order of the 4th axis.
        out_dir: where the 3D files go (``{case_id}_{channel}.nii.gz``); None when no file may be written.
        case_id: the case's id, used in file names.

    Returns:
        Channel name -> 3D image path.

    Raises:
        UserInputError: unreadable file, a 4th-axis length different from the declared channel count,
            or a 4D image to split without ``out_dir``.
    """
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UserInputError("cannot be read as an image.", path=path, fix="replace the damaged file.") from exc
    size = reader.GetSize()
    n_found = 1 if len(size) == 3 else int(size[3])
    if len(size) not in (3, 4) or n_found != len(channels):
        raise UserInputError(f"has size {size}: expected {len(channels)} channel(s) {channels}.", path=path,
                             fix="check dataset.json's 'modality' against the images.")
    if len(size) == 3:
        return {channels[0]: path.resolve()}
    if out_dir is None:
        raise UserInputError("is a 4D image, to be split into 3D files.", path=path, fix="give an output folder.")
    image = reader.Execute()
    written = {}
    for index, channel in enumerate(channels):
        # Extract collapses the 4th axis; its direction submatrix is the spatial 3x3 block.
        volume = sitk.Extract(image, [int(size[0]), int(size[1]), int(size[2]), 0], [0, 0, 0, index],
                              sitk.ExtractImageFilter.DIRECTIONCOLLAPSETOSUBMATRIX)
        target = out_dir / f"{case_id}_{channel}.nii.gz"
        write_image(volume, target)
        written[channel] = target.resolve()
    return written


def _entries(data: dict[str, Any], key: str, path: Path) -> list[dict[str, str]]:
    items = data.get(key) or []
    if not isinstance(items, list):
        raise UserInputError(f"'{key}' is not a list.", path=path, fix=f"list the {key} cases in '{key}'.")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append({"image": item})
        elif isinstance(item, dict) and "image" in item:
            out.append({k: str(v) for k, v in item.items()})
        else:
            raise UserInputError(f"'{key}' entry {item!r} has no 'image'.", path=path,
                                 fix='write entries as {"image": "./imagesTr/x.nii.gz", "label": ...}.')
    return out


def _case_id(image_path: str) -> str:
    name = Path(image_path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return sanitise_case_id(name)


def import_msd(dataset_json: str | Path, out_dir: str | Path | None = None, *, include_test: bool = False,
               out_manifest: str | Path | None = None, show_progress: bool = True) -> Manifest:
    """Build a manifest from an MSD task, splitting 4D multi-channel images into 3D files.

    Args:
        dataset_json: the task's ``dataset.json`` (paths in it are relative to its folder).
        out_dir: where split channels go (``images/``) and where the manifest is saved as
            ``manifest.csv`` unless ``out_manifest`` says otherwise. Required when any image is 4D.
        include_test: also list the ``test`` images (no labels; ``extra["split"] = "test"``).
        out_manifest: where to save the manifest; default ``{out_dir}/manifest.csv`` when ``out_dir`` is given.
        show_progress: show a progress bar while splitting.

    Returns:
        The manifest, channels named from ``modality``.

    Raises:
        UserInputError: a missing or malformed ``dataset.json``, missing image or label files (all
            listed), 4D images without ``out_dir``, or every case failing to convert.
    """
    json_path = Path(dataset_json)
    if json_path.is_dir():
        json_path = json_path / "dataset.json"
    data = read_json_object(json_path, fix="give the dataset.json of a Medical Segmentation Decathlon task.")
    root = json_path.parent
    channels, labels, _ = parse_declarations(data, json_path)
    entries = [("train", e) for e in _entries(data, "training", json_path)]
    if include_test:
        entries += [("test", e) for e in _entries(data, "test", json_path)]
    if not entries:
        raise UserInputError("lists no 'training' cases.", path=json_path, fix="check the file.")

    problems = []
    seen: set[str] = set()
    for _, entry in entries:
        case_id = _case_id(entry["image"])
        if case_id in seen:
            problems.append(f"case {case_id} is listed twice")
        seen.add(case_id)
        for key in ("image", "label"):
            if key in entry and not (root / entry[key]).is_file():
                problems.append(f"{entry[key]} not found")
    raise_problems(problems, what="lists files that are missing", path=json_path,
                   fix="keep dataset.json beside imagesTr/, labelsTr/ and imagesTs/ as distributed.")

    out = Path(out_dir) if out_dir is not None else None
    if len(channels) > 1 and out is None:
        raise UserInputError(f"has {len(channels)} channels stored as 4D images, which must be split into "
                             "3D files.", path=json_path, fix="give an output folder (out_dir).")

    def convert(item: tuple[str, dict[str, str]]) -> Case:
        split, entry = item
        case_id = _case_id(entry["image"])
        images = split_channels(root / entry["image"], channels, out / "images" if out else None, case_id)
        label = (root / entry["label"]).resolve() if "label" in entry else None
        return Case(case_id=case_id, images=images, label=label,
                    extra={"split": split} if include_test else {})

    result = run_per_case(entries, convert, name=lambda item: _case_id(item[1]["image"]),
                          description="splitting MSD channels", show_progress=show_progress)
    if result.failures:
        result.print_summary()
        if out is not None:
            write_json(out / "import_failures.json", result.failures)
    elif out is not None and (out / "import_failures.json").exists():
        (out / "import_failures.json").unlink()  # from an earlier run whose failures are now fixed
    if not result.results:
        raise UserInputError("no case could be imported: " + "; ".join(list(result.failures.values())[:3]),
                             path=json_path, fix="fix the files named above.")
    manifest = Manifest(channels=channels, cases=list(result.results.values()), labels=labels)
    target = out_manifest if out_manifest is not None else (out / MANIFEST_NAME if out is not None else None)
    if target is not None:
        manifest.source = manifest.save(target)
    return manifest
