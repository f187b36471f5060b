"""What an output was built from: content fingerprints of its inputs, recorded beside it and checked on reruns.

Reruns and resumes reuse what a folder already holds (a plan, cross-validation splits, checkpoints,
preprocessed arrays, predictions). That is only sound when those were built from the same inputs: a
model resumed on another case list, or a plan reused for another training set, evaluates on cases it
has seen. So every such output records a fingerprint of its inputs, and a rerun compares it with the
inputs it is given before reusing anything.

Input files are identified by the SHA-256 of their bytes, not by path, size or modification time: a
cohort copied to another disk or machine (new paths, new times) is still the same cohort, while a
file re-exported in place with new content is not, whatever its time stamp says. Hashing reads each
file once (about 1 GB/s, a fraction of what preprocessing the same file costs). To keep reruns cheap,
the record also keeps each file's resolved path, size and ``mtime_ns``; a file whose three still
match is trusted to have the recorded digest and is not read again (the rule ``git``'s index uses).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sarcomakit.data.manifest import CLINICAL_FIELDS, Case, Manifest

EXAMPLES = 3
"""How many ids a message names before it says "...": enough to act on, short enough for one line."""


def json_digest(value: Any) -> str:
    """SHA-256 of ``value`` as canonical JSON (sorted keys, no spaces; other types through ``str``)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def array_digest(array: Any) -> str:
    """SHA-256 of an array's dtype, shape and values (a torch tensor or anything ``np.asarray`` takes)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    values = np.ascontiguousarray(np.asarray(array))
    digest = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


def file_identity(path: str | Path, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"path", "size", "mtime_ns", "sha256"}`` of a file (``sha256`` None when it does not exist); a folder (a
    DICOM series) gets a digest of its files' names and contents.

    Args:
        path: the file.
        known: a previous identity of it; when its path, size and ``mtime_ns`` still match, its digest
            is returned without reading the file.
    """
    resolved = Path(path).expanduser().resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return {"path": str(resolved), "size": None, "mtime_ns": None, "sha256": None}
    if resolved.is_dir():  # a DICOM series folder is one image: its identity is that of every file in it
        files = sorted(f for f in resolved.rglob("*") if f.is_file())
        digest = hashlib.sha256()
        for file in files:
            with open(file, "rb") as handle:
                digest.update(f"{file.relative_to(resolved)}\0".encode())
                digest.update(hashlib.file_digest(handle, "sha256").digest())
        return {"path": str(resolved), "size": sum(f.stat().st_size for f in files),
                "mtime_ns": max((f.stat().st_mtime_ns for f in files), default=0), "sha256": digest.hexdigest()}
    identity = {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if known and known.get("sha256") and all(known.get(k) == v for k, v in identity.items()):
        return {**identity, "sha256": known["sha256"]}
    with open(resolved, "rb") as handle:
        return {**identity, "sha256": hashlib.file_digest(handle, "sha256").hexdigest()}


def case_files(case: Case, channels: Sequence[str],
               known: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict[str, Any] | None]:
    """Identity of each channel's image and of the label (key ``"label"``); None where the case has none."""
    known = known or {}
    paths: dict[str, Path | None] = {ch: case.images.get(ch) for ch in channels}
    paths["label"] = case.label
    return {name: None if path is None else file_identity(path, known.get(name)) for name, path in paths.items()}


def case_fields(case: Case) -> dict[str, Any]:
    """The case's row without its file paths: clinical fields, and extra columns as text.

    Extra columns are compared as text so that the same cohort read from its CSV (strings) and from its
    JSON manifest (numbers) is the same cohort.
    """
    fields = {name: getattr(case, name) for name in CLINICAL_FIELDS}
    return {**fields, **{k: v if isinstance(v, dict) else str(v) for k, v in case.extra.items()}}


def case_record(case: Case, channels: Sequence[str],
                known: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"fields": digest of the row without paths, "files": identity per channel and label}`` of one case."""
    return {"fields": json_digest(case_fields(case)),
            "files": case_files(case, channels, (known or {}).get("files"))}


def manifest_record(manifest: Manifest, known: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The manifest's content: channels, label map and :func:`case_record` by case id.

    Args:
        manifest: the cohort.
        known: a previous record's ``cases`` (their file identities spare reading unchanged files).
    """
    known = known or {}
    return {"channels": list(manifest.channels), "labels": dict(manifest.labels),
            "cases": {c.case_id: case_record(c, manifest.channels, known.get(c.case_id)) for c in manifest.cases}}


def file_digests(files: Mapping[str, Mapping[str, Any] | None]) -> dict[str, str | None]:
    """Only the content digests of :func:`case_files` (paths and times do not make a file another file)."""
    return {name: None if identity is None else identity.get("sha256") for name, identity in files.items()}


def content_digest(record: Mapping[str, Any]) -> str:
    """SHA-256 of a :func:`manifest_record`'s content: what changes it changes the cohort, nothing else does."""
    cases = {cid: {"fields": c["fields"], "files": file_digests(c["files"])} for cid, c in record["cases"].items()}
    return json_digest({"channels": record["channels"], "labels": record["labels"], "cases": cases})


def changed_cases(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, list[str]]:
    """For the cases in both records whose content differs: what differs (channel names, ``label``, ``fields``)."""
    changes: dict[str, list[str]] = {}
    for cid in sorted(set(old) & set(new)):
        before, after = old[cid], new[cid]
        what = [name for name in dict.fromkeys([*before["files"], *after["files"]])
                if file_digests(before["files"]).get(name) != file_digests(after["files"]).get(name)]
        if before["fields"] != after["fields"]:
            what.append("clinical fields")
        if what:
            changes[cid] = what
    return changes


def examples(ids: Iterable[str]) -> str:
    """The first few ids, comma separated, with "..." when there are more."""
    ids = list(ids)
    return ", ".join(ids[:EXAMPLES]) + (", ..." if len(ids) > EXAMPLES else "")


def describe_id_change(old: Iterable[str], new: Iterable[str], noun: str = "cases") -> str | None:
    """One phrase saying how two id lists differ (None when they hold the same ids).

    Example: ``"30 cases then, 39 now: 12 added (STS_030, STS_031, STS_032, ...), 3 removed (STS_001, ...)"``.
    """
    before, after = set(old), set(new)
    if before == after:
        return None
    added, removed = sorted(after - before), sorted(before - after)
    parts = [f"{len(added)} added ({examples(added)})" if added else "",
             f"{len(removed)} removed ({examples(removed)})" if removed else ""]
    return f"{len(before)} {noun} then, {len(after)} now: " + ", ".join(p for p in parts if p)


def describe_value_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str | None:
    """The keys whose values differ, as ``"key: old then, new now"`` (None when none does)."""
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k)]
    if not keys:
        return None
    shown = [f"{k}: {json.dumps(old.get(k), default=str)} then, {json.dumps(new.get(k), default=str)} now"
             for k in keys[:EXAMPLES]]
    return "; ".join(shown) + ("; ..." if len(keys) > EXAMPLES else "")
