"""The annotation server's datastore: images and their labels in a folder, written atomically, labels kept in versions.

Layout (MONAI Label's local datastore layout, so an existing MONAI Label studies folder can be served)::

    STUDIES/
      <id>.nii.gz                      an image (NIfTI, NRRD or MetaImage; uploads are stored as NIfTI
                                       or as the NRRD/MetaImage they came as)
      labels/<tag>/<id>.nii.gz         the current label of that image under ``tag`` (``final`` is the
                                       annotator's saved mask)
      labels/<tag>/versions/<id>/NNNN.nii.gz
                                       every label ever saved under ``tag``, numbered from 1; the current
                                       one is the highest and equals ``labels/<tag>/<id>.nii.gz``
      .sarcomakit/info/<id>.json       what the server knows about the image (upload time, who saved
                                       which label, which strategy picked it)

Why so: a crash mid-write must never leave a half-written image or label under its final name (every
file goes through :mod:`sarcomakit.core.io.atomic`), saving a label again must not destroy the previous
annotation (versions are never overwritten), and a restarted server must find everything again from the
folder alone (no database). Image ids and tags become file names, so they are checked against a strict
pattern (:func:`check_id`): no path separators, no ``..``, nothing absolute.

Every upload is read back through :func:`sarcomakit.core.io.image.read_image` before it is stored: a
corrupt, truncated or unsupported file is refused with a :class:`~sarcomakit.core.errors.UserInputError`
and the datastore is left exactly as it was.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.io.image import read_image, write_image

#: What an image id, a label tag or a session id may look like: a letter or digit first, then letters, digits,
#: spaces, ``.``, ``_``, ``-`` or ``+``; at most 128 characters and never ``..``.
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._+-]{0,127}")
#: Upload suffixes accepted, longest first (a zip holds one DICOM series).
UPLOAD_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".zip")
#: Suffixes under which images are stored.
STORED_SUFFIXES = (".nii.gz", ".nrrd", ".mha")
FINAL_TAG = "final"
_INFO_DIR = ".sarcomakit/info"


def check_id(value: str, what: str = "image id") -> str:
    """Return ``value`` when it is a safe id (see :data:`ID_PATTERN`); raise :class:`UserInputError` otherwise."""
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value) or ".." in value or value != value.strip():
        raise UserInputError(f"invalid {what} {value!r}: use letters, digits, spaces, '.', '_', '-' or '+', "
                             "starting with a letter or digit (no path separators, no '..').")
    return value


def upload_suffix(filename: str) -> str:
    """The accepted suffix of an uploaded file's name; raises :class:`UserInputError` for other formats."""
    name = filename.lower()
    for suffix in UPLOAD_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise UserInputError(f"unsupported file type {Path(filename).name!r}.",
                         fix=f"upload one of {', '.join(UPLOAD_SUFFIXES)} (a .zip holds one DICOM series).")


def id_from_filename(filename: str) -> str:
    """An image id made from an uploaded file's name (its stem with unsafe characters replaced)."""
    stem = Path(filename.replace("\\", "/")).name
    for suffix in UPLOAD_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    cleaned = re.sub(r"[^A-Za-z0-9._+-]", "_", stem).strip("._-+") or "image"
    return check_id(cleaned.replace("..", "_")[:128])


def read_upload(path: Path, suffix: str) -> sitk.Image:
    """Read an uploaded file (a zip is unpacked and read as a DICOM series); refuses damaged data."""
    if suffix != ".zip":
        return read_image(path)
    with tempfile.TemporaryDirectory(prefix="sarcomakit-dicom-") as folder:
        try:
            with zipfile.ZipFile(path) as archive:
                for member in archive.infolist():
                    target = (Path(folder) / member.filename).resolve()
                    if not target.is_relative_to(Path(folder).resolve()):
                        raise UserInputError(f"the zip file holds an unsafe path {member.filename!r}.")
                archive.extractall(folder)
        except zipfile.BadZipFile as error:
            raise UserInputError(f"the zip file is damaged: {error}.") from error
        series = sorted({p.parent for p in Path(folder).rglob("*") if p.is_file()})
        if not series:
            raise UserInputError("the zip file is empty.", fix="zip the folder of one DICOM series.")
        return read_image(series[0])


@dataclass(frozen=True)
class LabelVersion:
    """One saved label: its tag, version number (from 1) and file."""

    tag: str
    version: int
    path: Path


class Datastore:
    """Images and labels under ``root`` (see the module docstring); safe to share between server threads.

    Args:
        root: the studies folder (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ images
    def image_ids(self) -> list[str]:
        """The ids of the stored images, sorted."""
        ids = []
        for path in self.root.iterdir():
            if path.is_file() and not path.name.startswith("."):
                for suffix in STORED_SUFFIXES:
                    if path.name.endswith(suffix) and ID_PATTERN.fullmatch(path.name[: -len(suffix)]):
                        ids.append(path.name[: -len(suffix)])
        return sorted(set(ids))

    def image_path(self, image_id: str) -> Path:
        """The stored file of ``image_id``; raises :class:`KeyError` when there is none."""
        check_id(image_id)
        for suffix in STORED_SUFFIXES:
            path = self.root / f"{image_id}{suffix}"
            if path.is_file():
                return path
        raise KeyError(image_id)

    def has_image(self, image_id: str) -> bool:
        try:
            self.image_path(image_id)
        except KeyError:
            return False
        return True

    def read_image(self, image_id: str) -> sitk.Image:
        """The stored image of ``image_id`` (:class:`KeyError` when unknown)."""
        return read_image(self.image_path(image_id))

    def add_image(self, upload: Path, filename: str, image_id: str | None = None, *,
                  user: str | None = None) -> str:
        """Check and store an uploaded image; returns its id.

        The upload is read fully first (a corrupt file raises :class:`UserInputError` and changes nothing).
        NIfTI and zipped DICOM are stored as ``.nii.gz``, NRRD and MetaImage as they came; uploading an id
        again replaces its image and keeps its labels.
        """
        suffix = upload_suffix(filename)
        image_id = check_id(image_id) if image_id else id_from_filename(filename)
        image = read_upload(upload, suffix)
        if image.GetDimension() != 3:
            raise UserInputError(f"the image has {image.GetDimension()} dimensions; the server segments 3D volumes.")
        stored = ".nrrd" if suffix == ".nrrd" else ".mha" if suffix == ".mha" else ".nii.gz"
        with self._lock:
            write_image(image, self.root / f"{image_id}{stored}")
            for other in STORED_SUFFIXES:
                if other != stored and (self.root / f"{image_id}{other}").exists():
                    (self.root / f"{image_id}{other}").unlink()
            self.update_info(image_id, {"uploaded": time.time(), "uploaded_by": user, "filename": Path(filename).name})
        return image_id

    def remove_image(self, image_id: str) -> None:
        """Delete an image with all its labels and versions (:class:`KeyError` when unknown)."""
        with self._lock:
            path = self.image_path(image_id)
            for tag in self.tags():
                self._remove_label_files(image_id, tag)
            path.unlink()
            (self.root / _INFO_DIR / f"{image_id}.json").unlink(missing_ok=True)

    # ------------------------------------------------------------------ labels
    def tags(self) -> list[str]:
        folder = self.root / "labels"
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and ID_PATTERN.fullmatch(p.name)) \
            if folder.is_dir() else []

    def label_path(self, image_id: str, tag: str = FINAL_TAG) -> Path:
        """The current label of ``image_id`` under ``tag``; :class:`KeyError` when there is none."""
        path = self.root / "labels" / check_id(tag, "tag") / f"{check_id(image_id)}.nii.gz"
        if not path.is_file():
            raise KeyError(f"{image_id}/{tag}")
        return path

    def label_versions(self, image_id: str, tag: str = FINAL_TAG) -> list[LabelVersion]:
        """Every saved version of the label, oldest first."""
        folder = self._versions_dir(image_id, tag)
        versions = []
        if folder.is_dir():
            for path in folder.glob("*.nii.gz"):
                stem = path.name[: -len(".nii.gz")]
                if stem.isdigit():
                    versions.append(LabelVersion(tag, int(stem), path))
        return sorted(versions, key=lambda v: v.version)

    def save_label(self, image_id: str, label: sitk.Image | np.ndarray, tag: str = FINAL_TAG, *,
                   user: str | None = None, params: dict[str, Any] | None = None) -> LabelVersion:
        """Store a label of ``image_id`` as a new version and make it the current one.

        The label must lie on the image's grid (same size; its geometry is replaced by the image's so the
        stored label matches the image exactly); values are stored as uint8.

        Raises:
            KeyError: unknown image.
            UserInputError: a label of another size, or with values outside 0-255.
        """
        check_id(tag, "tag")
        with self._lock:
            reference = self.read_image(image_id)
            array = sitk.GetArrayFromImage(label) if isinstance(label, sitk.Image) else np.asarray(label)
            expected = tuple(reversed(reference.GetSize()))
            if array.shape != expected:
                raise UserInputError(f"the label has shape {array.shape} (z, y, x) but the image {image_id} has "
                                     f"{expected}.", fix="save a label drawn on this image's grid.")
            if array.size and (np.min(array) < 0 or np.max(array) > 255):
                raise UserInputError("label values must lie in 0-255.")
            mask = sitk.GetImageFromArray(array.astype(np.uint8))
            mask.CopyInformation(reference)
            previous = self.label_versions(image_id, tag)
            version = (previous[-1].version if previous else 0) + 1
            path = write_image(mask, self._versions_dir(image_id, tag) / f"{version:04d}.nii.gz")
            write_image(mask, self.root / "labels" / tag / f"{image_id}.nii.gz")
            info = self.info(image_id)
            labels = dict(info.get("labels", {}))
            labels[tag] = {"version": version, "saved": time.time(), "saved_by": user, "params": params or {}}
            self.update_info(image_id, {"labels": labels})
        return LabelVersion(tag, version, path)

    def remove_label(self, image_id: str, tag: str) -> None:
        """Delete the label of ``image_id`` under ``tag`` with its versions (:class:`KeyError` when none)."""
        with self._lock:
            self.label_path(image_id, tag)
            self._remove_label_files(image_id, tag)
            info = self.info(image_id)
            labels = {k: v for k, v in info.get("labels", {}).items() if k != tag}
            self.update_info(image_id, {"labels": labels})

    def _remove_label_files(self, image_id: str, tag: str) -> None:
        (self.root / "labels" / tag / f"{image_id}.nii.gz").unlink(missing_ok=True)
        shutil.rmtree(self._versions_dir(image_id, tag), ignore_errors=True)

    def _versions_dir(self, image_id: str, tag: str) -> Path:
        return self.root / "labels" / check_id(tag, "tag") / "versions" / check_id(image_id)

    # ------------------------------------------------------------------ info
    def info(self, image_id: str) -> dict[str, Any]:
        """What the server recorded about the image (empty for an image put in the folder by hand)."""
        import json

        path = self.root / _INFO_DIR / f"{check_id(image_id)}.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def update_info(self, image_id: str, updates: dict[str, Any]) -> dict[str, Any]:
        """Merge ``updates`` into the image's recorded info (atomically) and return it."""
        with self._lock:
            info = {**self.info(image_id), **updates}
            write_json(self.root / _INFO_DIR / f"{check_id(image_id)}.json", info)
        return info

    def status(self, image_id: str) -> str:
        """``final`` (a final label is saved), ``in progress`` (another tag is saved) or ``unlabelled``."""
        tags = [tag for tag in self.tags() if (self.root / "labels" / tag / f"{image_id}.nii.gz").is_file()]
        if FINAL_TAG in tags:
            return "final"
        return "in progress" if tags else "unlabelled"

    def labelled_ids(self, tag: str = FINAL_TAG) -> list[str]:
        return [i for i in self.image_ids() if (self.root / "labels" / tag / f"{i}.nii.gz").is_file()]

    def unlabelled_ids(self) -> list[str]:
        final = set(self.labelled_ids())
        return [i for i in self.image_ids() if i not in final]

    # ------------------------------------------------------------------ MONAI Label views
    def to_json(self) -> dict[str, Any]:
        """MONAI Label's ``/datastore/?output=all`` shape: ``objects`` by id, each with ``image`` and ``labels``."""
        objects = {}
        for image_id in self.image_ids():
            path = self.image_path(image_id)
            ext = next(s for s in STORED_SUFFIXES if path.name.endswith(s))
            info = self.info(image_id)
            labels = {}
            for tag in self.tags():
                if (self.root / "labels" / tag / f"{image_id}.nii.gz").is_file():
                    labels[tag] = {"ext": ".nii.gz", "info": info.get("labels", {}).get(tag, {})}
            objects[image_id] = {"image": {"ext": ext, "info": {k: v for k, v in info.items() if k != "labels"}},
                                 "labels": labels, "status": self.status(image_id)}
        return {"name": self.root.name, "description": "sarcomakit annotation datastore", "images_dir": "",
                "labels_dir": "labels", "objects": objects}

    def summary(self) -> dict[str, Any]:
        """MONAI Label's default ``/datastore/`` answer: totals and label tag counts."""
        tags = {tag: len(self.labelled_ids(tag)) for tag in self.tags()}
        return {"total": len(self.image_ids()), "completed": len(self.labelled_ids()), "label_tags": tags}

    def datalist(self) -> list[dict[str, str]]:
        """MONAI Label's ``output=train`` view: image and final label paths of the labelled images."""
        return [{"image": str(self.image_path(i)), "label": str(self.label_path(i))} for i in self.labelled_ids()]
