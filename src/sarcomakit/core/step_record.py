"""Per-item records of what a step's output was built from, so that a resumed run redoes stale outputs.

Cohort steps skip items whose output exists (an interrupted run resumes where it stopped). An output is
only reusable if it was built from the same input files with the same options: a slide replaced under the
same id, a coordinates file tiled at another resolution or features from another encoder must be
redone. Each output therefore gets a record, ``FOLDER/.sarcomakit/STEP/ITEM.json``, with the identities of
its input files (content digests, see :mod:`sarcomakit.core.provenance`) and a digest of its options.
One file per item keeps the records safe when several processes write different items.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sarcomakit.core.io.atomic import write_json
from sarcomakit.core.provenance import file_digests, file_identity, json_digest

RECORDS = ".sarcomakit"


class StepRecord:
    """The records of one step's outputs in ``folder``.

    Example:
        >>> record = StepRecord(work, "tiles")  # doctest: +SKIP
        >>> if not record.is_current("S1", {"slide": path}, options, outputs=[coords]): ...  # doctest: +SKIP
        >>> record.save("S1", {"slide": path}, options)  # doctest: +SKIP
    """

    def __init__(self, folder: str | Path, step: str) -> None:
        self.folder = Path(folder) / RECORDS / step

    def path(self, item: str) -> Path:
        return self.folder / f"{item}.json"

    def stored(self, item: str) -> dict[str, Any] | None:
        """The item's record (None when there is none or it cannot be read)."""
        try:
            value = json.loads(self.path(item).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def describe(self, item: str, files: Mapping[str, str | Path], options: Any,
                 stored: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The record the item's output would have now; files unchanged since ``stored`` (default: the item's
        record) are not read again."""
        known = (stored if stored is not None else self.stored(item) or {}).get("files", {})
        identities = {name: file_identity(path, known.get(name)) for name, path in files.items()}
        return {"files": identities, "options": json_digest(options)}

    def is_current(self, item: str, files: Mapping[str, str | Path], options: Any,
                   outputs: Sequence[Path] = ()) -> bool:
        """True when every output exists and was recorded as built from these files' contents and options."""
        stored = self.stored(item)
        if stored is None or not all(Path(p).exists() for p in outputs):
            return False
        if stored.get("options") != json_digest(options):  # before any file is read (slides run to gigabytes)
            return False
        now = self.describe(item, files, options, stored)
        return file_digests(stored.get("files", {})) == file_digests(now["files"])

    def save(self, item: str, files: Mapping[str, str | Path], options: Any) -> None:
        """Record that the item's output has just been built from these files and options."""
        write_json(self.path(item), self.describe(item, files, options))
