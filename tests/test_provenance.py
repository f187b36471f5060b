"""Input fingerprints: files are known by content, unchanged files are not read twice, changes are named."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from sarcomakit.core import provenance
from sarcomakit.core.provenance import array_digest, describe_id_change, describe_value_change, file_identity


def test_files_are_identified_by_content(tmp_path: Path) -> None:
    first = tmp_path / "a.nii.gz"
    first.write_bytes(b"voxels" * 100)
    copy = tmp_path / "elsewhere" / "a.nii.gz"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    assert file_identity(copy)["sha256"] == file_identity(first)["sha256"] == \
        hashlib.sha256(b"voxels" * 100).hexdigest()
    before = file_identity(first)
    first.write_bytes(b"VOXELS" * 100)  # same size
    os.utime(first, ns=(before["mtime_ns"] + 10**9, before["mtime_ns"] + 10**9))
    assert file_identity(first, known=before)["sha256"] != before["sha256"]
    assert file_identity(tmp_path / "gone.nii.gz")["sha256"] is None


def test_unchanged_files_are_not_read_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "image.nii.gz"
    path.write_bytes(b"x" * 1000)
    known = file_identity(path)

    def no_reading(*args: object) -> None:
        raise AssertionError("the file was read again")

    monkeypatch.setattr(provenance.hashlib, "file_digest", no_reading)
    assert file_identity(path, known=known) == known
    os.utime(path, ns=(known["mtime_ns"] + 10**9, known["mtime_ns"] + 10**9))  # touched: read again
    with pytest.raises(AssertionError, match="read again"):
        file_identity(path, known=known)


def test_array_digest_sees_values_dtype_and_shape() -> None:
    values = np.arange(12, dtype=np.float32)
    assert array_digest(values) == array_digest(values.copy())
    assert array_digest(values) != array_digest(values.reshape(3, 4))
    assert array_digest(values) != array_digest(values.astype(np.float64))
    changed = values.copy()
    changed[5] += 1e-3
    assert array_digest(values) != array_digest(changed)


def test_changes_are_described_in_one_short_phrase() -> None:
    old = [f"c{i:02d}" for i in range(30)]
    new = old[3:] + [f"n{i:02d}" for i in range(12)]
    assert describe_id_change(old, new) == ("30 cases then, 39 now: 12 added (n00, n01, n02, ...), "
                                            "3 removed (c00, c01, c02)")
    assert describe_id_change(old, list(reversed(old))) is None
    assert describe_value_change({"lr": 0.1, "seed": 0}, {"lr": 0.2, "seed": 0}) == "lr: 0.1 then, 0.2 now"
    assert describe_value_change({"a": 1}, {"a": 1}) is None
