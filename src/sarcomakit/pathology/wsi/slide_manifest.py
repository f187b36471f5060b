"""The slide manifest: which slides make the cohort, their labels, patients and optional folds.

A CSV with columns ``slide_id, path, label, patient_id`` and optionally ``fold``. Relative paths are
resolved against the CSV's folder. A folder of slides, or one slide file, can stand in for a manifest
when labels are not needed (tiling, embedding, prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from sarcomakit.core.errors import UserInputError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
REQUIRED_COLUMNS = ("slide_id", "path")


@dataclass(frozen=True)
class SlideRecord:
    """One slide: its id, file, label (None when unlabelled), patient (defaults to the slide id), fold."""

    slide_id: str
    path: Path
    label: str | None = None
    patient_id: str = ""
    fold: int | None = None


@dataclass
class SlideManifest:
    """The slides of a cohort and the ordered class list their labels come from."""

    slides: list[SlideRecord]
    classes: list[str] = field(default_factory=list)
    source: Path | None = None

    def __len__(self) -> int:
        return len(self.slides)

    @property
    def ids(self) -> list[str]:
        return [s.slide_id for s in self.slides]

    def label_index(self, slide: SlideRecord) -> int:
        """Class index of a labelled slide."""
        if slide.label is None or slide.label not in self.classes:
            raise UserInputError(f"slide {slide.slide_id!r} has label {slide.label!r}, not in the class list "
                                 f"{self.classes}.", path=self.source,
                                 fix="correct the label or add the class to --classes.")
        return self.classes.index(slide.label)

    def labelled(self) -> SlideManifest:
        """The slides that carry a label."""
        return SlideManifest([s for s in self.slides if s.label is not None], self.classes, self.source)

    def subset(self, ids: Sequence[str]) -> SlideManifest:
        wanted = set(ids)
        return SlideManifest([s for s in self.slides if s.slide_id in wanted], self.classes, self.source)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([{"slide_id": s.slide_id, "path": str(s.path), "label": s.label,
                              "patient_id": s.patient_id, "fold": s.fold} for s in self.slides])

    def save(self, path: str | Path) -> Path:
        """Write the manifest as CSV (atomically)."""
        from sarcomakit.core.io.atomic import atomic_path

        with atomic_path(path) as tmp:
            self.to_frame().to_csv(tmp, index=False)
        return Path(path)


def _clean(value: object) -> str | None:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    text = str(value).strip()
    return text or None


def load_slide_manifest(path: str | Path, classes: Sequence[str] | None = None, require_labels: bool = False,
                        check_files: bool = True) -> SlideManifest:
    """Read and validate a slide manifest CSV.

    Args:
        path: the CSV file.
        classes: the class list; labels outside it are errors. Default: the sorted labels found.
        require_labels: every slide must have a label (training).
        check_files: every slide file must exist.

    Returns:
        The :class:`SlideManifest`.

    Raises:
        UserInputError: a missing column, a slide listed twice, a missing label or file, a label outside
            the class list, a non-integer fold; the message names the slide.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError("slide manifest not found.", path=path, fix="give a CSV with slide_id,path,label,"
                                                                         "patient_id columns or a slide folder.")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as exc:  # unreadable CSV: the user's file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserInputError(f"cannot be read as a slide manifest CSV ({reason}).", path=path,
                             fix=f"give a CSV with slide_id,path,label,patient_id columns, a folder of slides or "
                                 f"one slide file ({', '.join(SLIDE_SUFFIXES[:4])}, ...).") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise UserInputError(f"slide manifest lacks column(s) {missing}; found {list(frame.columns)}.", path=path,
                             fix="columns are slide_id, path, label, patient_id and optionally fold.")
    records: list[SlideRecord] = []
    seen: dict[str, int] = {}
    for row_number, row in enumerate(frame.to_dict("records"), start=2):
        slide_id = _clean(row.get("slide_id"))
        if slide_id is None:
            raise UserInputError(f"row {row_number} has no slide_id.", path=path)
        if slide_id in seen:
            raise UserInputError(f"slide {slide_id!r} is listed twice (rows {seen[slide_id]} and {row_number}).",
                                 path=path, fix="keep one row per slide.")
        seen[slide_id] = row_number
        raw_path = _clean(row.get("path"))
        if raw_path is None:
            raise UserInputError(f"slide {slide_id!r} has no path.", path=path)
        slide_path = Path(raw_path).expanduser()
        if not slide_path.is_absolute():
            slide_path = (path.parent / slide_path).resolve()
        if check_files and not slide_path.is_file():
            raise UserInputError(f"file of slide {slide_id!r} not found: {slide_path}.", path=path,
                                 fix="correct the path (relative paths are read from the manifest's folder).")
        label = _clean(row.get("label"))
        if require_labels and label is None:
            raise UserInputError(f"slide {slide_id!r} has no label.", path=path, fix="label every slide.")
        fold_text = _clean(row.get("fold"))
        try:
            fold = int(float(fold_text)) if fold_text is not None else None
        except ValueError as exc:
            raise UserInputError(f"slide {slide_id!r} has fold {fold_text!r}, not an integer.", path=path) from exc
        patient = _clean(row.get("patient_id")) or slide_id
        records.append(SlideRecord(slide_id, slide_path, label, patient, fold))
    found = sorted({r.label for r in records if r.label is not None})
    class_list = list(classes) if classes else found
    for record in records:
        if record.label is not None and record.label not in class_list:
            raise UserInputError(f"slide {record.slide_id!r} has label {record.label!r}, not in the class list "
                                 f"{class_list}.", path=path, fix="correct the label or the class list.")
    return SlideManifest(records, class_list, path)


def is_slide_path(path: Path) -> bool:
    """True when ``path`` has the suffix of a whole-slide image format."""
    return path.suffix.lower() in SLIDE_SUFFIXES


def manifest_from_folder(folder: str | Path) -> SlideManifest:
    """An unlabelled manifest of the slide files in ``folder`` (ids are the file names without suffix)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if is_slide_path(p) and p.is_file())
    if not files:
        raise UserInputError(f"no slide files ({', '.join(SLIDE_SUFFIXES[:4])}, ...) in the folder.", path=folder)
    return SlideManifest([SlideRecord(p.stem, p.resolve(), None, p.stem) for p in files], [], folder)


def manifest_from_slide(path: str | Path) -> SlideManifest:
    """An unlabelled one-slide manifest (id: the file name without suffix)."""
    path = Path(path)
    return SlideManifest([SlideRecord(path.stem, path.resolve(), None, path.stem)], [], path)


def load_slides(source: str | Path, classes: Sequence[str] | None = None, require_labels: bool = False,
                check_files: bool = True) -> SlideManifest:
    """A manifest from a CSV file, a folder of slides or a single slide file (the last two unlabelled)."""
    source = Path(source)
    if source.is_dir() or (source.is_file() and is_slide_path(source)):
        kind = "folder" if source.is_dir() else "single slide"
        if require_labels:
            raise UserInputError(f"training needs labels: give a slide manifest CSV, not a {kind}.", path=source,
                                 fix="list the slides with their labels in a CSV (slide_id,path,label,patient_id).")
        return manifest_from_folder(source) if source.is_dir() else manifest_from_slide(source)
    return load_slide_manifest(source, classes, require_labels, check_files)
