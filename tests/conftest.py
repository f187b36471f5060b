"""Shared fixtures: a tiny labelled NIfTI cohort with varied geometry, written in tmp folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sarcomakit.data.manifest import Manifest
from tiny_cohorts import write_tiny_cohort

torch.set_num_threads(1)


@pytest.fixture
def tiny_cohort(tmp_path: Path) -> Manifest:
    return write_tiny_cohort(tmp_path / "cohort")
