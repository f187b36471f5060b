"""Small helpers shared by the importers: case-id and channel-name hygiene, problem lists."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sarcomakit.core.errors import UserInputError

MAX_LISTED = 8


def sanitise_case_id(raw: str) -> str:
    """A case id safe in file names and CSV cells: letters, digits, ``.``, ``_`` and ``-`` only.

    Example:
        >>> sanitise_case_id(" STS 001/a ")
        'STS_001_a'
    """
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", str(raw).strip()).strip("._")
    return text or "case"


def unique_names(names: Iterable[str]) -> list[str]:
    """Make names unique by suffixing repeats (``MRI, MRI`` -> ``MRI, MRI_2``), keeping order."""
    seen: dict[str, int] = {}
    out = []
    for name in names:
        base = str(name).strip() or "channel"
        seen[base] = seen.get(base, 0) + 1
        out.append(base if seen[base] == 1 else f"{base}_{seen[base]}")
    return out


def raise_problems(problems: list[str], *, what: str, path: Path, fix: str) -> None:
    """Raise one :class:`UserInputError` listing all ``problems`` (the first few), if any."""
    if not problems:
        return
    listed = "; ".join(problems[:MAX_LISTED])
    more = f"; and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    raise UserInputError(f"{what}: {listed}{more}.", path=path, fix=fix)


def read_json_object(path: Path, *, fix: str) -> dict[str, Any]:
    """Read a JSON file that must hold an object, with a clear error for a missing or broken file."""
    if not path.is_file():
        raise UserInputError("file not found.", path=path, fix=fix)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise UserInputError(f"is not valid JSON ({exc.msg}, line {exc.lineno}).", path=path,
                             fix="repair the JSON syntax.") from exc
    if not isinstance(data, dict):
        raise UserInputError("does not hold a JSON object.", path=path, fix=fix)
    return data
