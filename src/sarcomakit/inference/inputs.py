"""What ``sarcomakit predict`` accepts as input, turned into cases: a manifest, a folder, or one case.

- a manifest (``.csv`` / ``.json``);
- a folder of images named nnU-Net style, ``{case}_{XXXX}.nii.gz`` with one index per channel in the
  plan's channel order (a single-channel plan also takes plain ``{case}.nii.gz`` files);
- one case: a single image file (single-channel plans), or one file per channel given as
  ``T1=a.nii.gz,T2FS=b.nii.gz``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.image import is_image_path
from sarcomakit.data.manifest import Case, Manifest

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<index>\d{4})$")


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def cases_from_input(source: str | Path, channels: list[str], *, allow_missing: bool = False) -> list[Case]:
    """Resolve a predict input into cases whose images cover ``channels`` (or, with ``allow_missing``,
    at least one of them)."""
    text = str(source)
    if "=" in text and not Path(text).exists():
        images: dict[str, Path] = {}
        for item in text.split(","):
            if "=" not in item:
                raise UserInputError(f"'{item}' is not CHANNEL=path.", fix="write T1=a.nii.gz,T2FS=b.nii.gz.")
            name, value = item.split("=", 1)
            images[name.strip()] = Path(value.strip())
        return [_checked(Case(case_id=_stem(next(iter(images.values()))), images=images), channels, Path(text),
                         allow_missing)]
    path = Path(text)
    if not path.exists():
        raise UserInputError("input not found.", path=path, fix="give a manifest, a folder of images or an image.")
    if path.is_file() and path.suffix.lower() in (".csv", ".json"):
        manifest = Manifest.load(path)
        return [_checked(c, channels, path, allow_missing) for c in manifest.cases]
    if path.is_file():
        if len(channels) != 1:
            raise UserInputError(f"one image given but the model needs {len(channels)} channels "
                                 f"({', '.join(channels)}).", path=path,
                                 fix="give CH=path pairs separated by commas, a folder or a manifest.")
        return [Case(case_id=_stem(path), images={channels[0]: path})]
    grouped: dict[str, dict[str, Path]] = defaultdict(dict)
    for file in sorted(p for p in path.iterdir() if p.is_file() and is_image_path(p)):
        match = _CHANNEL_SUFFIX.match(_stem(file))
        if match:
            index = int(match["index"])
            if index < len(channels):
                grouped[match["case"]][channels[index]] = file
        elif len(channels) == 1:
            grouped[_stem(file)][channels[0]] = file
    if not grouped:
        raise UserInputError("folder holds no images named {case}_{XXXX}.nii.gz.", path=path,
                             fix="name one file per channel with a 4-digit channel index, as nnU-Net does.")
    return [_checked(Case(case_id=cid, images=imgs), channels, path, allow_missing)
            for cid, imgs in sorted(grouped.items())]


def manifest_from_input(source: str | Path, channels: list[str], *, allow_missing: bool = False) -> Manifest:
    """A manifest as given, or the cases of a folder or of one case (:func:`cases_from_input`) as an unlabelled
    cohort with ``channels``: what ``sarcomakit pretrain`` reads."""
    path = Path(str(source))
    if path.is_file() and path.suffix.lower() in (".csv", ".json"):
        return Manifest.load(path)
    cases = cases_from_input(source, channels, allow_missing=allow_missing)
    return Manifest(channels=list(channels), cases=cases, source=path if path.exists() else None)


def _checked(case: Case, channels: list[str], where: Path, allow_missing: bool) -> Case:
    missing = [ch for ch in channels if ch not in case.images]
    if missing and (not allow_missing or len(missing) == len(channels)):
        raise UserInputError(f"case {case.case_id} lacks channel(s) {', '.join(missing)} that the model needs.",
                             path=where, fix=f"provide {', '.join(channels)} for every case.")
    return case
