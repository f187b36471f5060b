"""A preprocessed case is reused only when it was made from the same plan and the same input files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from sarcomakit.core.io.image import read_image, write_image
from sarcomakit.data.manifest import Manifest
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.planning.preprocess import PreprocessedCase, preprocess_cohort


def _plan(manifest: Manifest, folder: Path) -> Plan:
    return plan_cohort(manifest, folder / "plan.json", show_progress=False)


def test_cache_made_with_another_plan_is_redone(tiny_cohort: Manifest, tmp_path: Path) -> None:
    plan = _plan(tiny_cohort, tmp_path)
    cache = tmp_path / "cache"
    preprocess_cohort(tiny_cohort, plan, cache, show_progress=False)
    coarse = plan.model_copy(update={"target_spacing": [s * 2 for s in plan.target_spacing]})
    redone = preprocess_cohort(tiny_cohort, coarse, cache, show_progress=False)
    assert sorted(redone.results) == tiny_cohort.case_ids and not redone.skipped
    again = preprocess_cohort(tiny_cohort, coarse, cache, show_progress=False)
    assert sorted(again.skipped) == tiny_cohort.case_ids
    case = PreprocessedCase.load(cache, "case00")
    np.testing.assert_allclose(case.geometry.array_spacing, coarse.target_spacing, rtol=0.05)  # shape rounding


def test_case_with_new_image_content_is_redone_alone(tiny_cohort: Manifest, tmp_path: Path) -> None:
    plan = _plan(tiny_cohort, tmp_path)
    cache = tmp_path / "cache"
    preprocess_cohort(tiny_cohort, plan, cache, show_progress=False)
    path = tiny_cohort["case03"].images["T2"]
    write_image(sitk.Cast(read_image(path), sitk.sitkFloat32) + 500.0, path)  # same id and path, new content
    rerun = preprocess_cohort(tiny_cohort, plan, cache, show_progress=False)
    assert list(rerun.results) == ["case03"] and len(rerun.skipped) == len(tiny_cohort) - 1


def test_cache_follows_content_not_paths(tiny_cohort: Manifest, tmp_path: Path) -> None:
    plan = _plan(tiny_cohort, tmp_path)
    cache = tmp_path / "cache"
    preprocess_cohort(tiny_cohort, plan, cache, show_progress=False)
    moved = tmp_path / "moved"
    shutil.copytree(tiny_cohort.source.parent, moved)  # new paths and times, same bytes
    rerun = preprocess_cohort(Manifest.load(moved / "manifest.csv"), plan, cache, show_progress=False)
    assert sorted(rerun.skipped) == tiny_cohort.case_ids


def test_cached_case_without_a_record_is_redone(tiny_cohort: Manifest, tmp_path: Path) -> None:
    plan = _plan(tiny_cohort, tmp_path)
    cache = tmp_path / "cache"
    preprocess_cohort(tiny_cohort, plan, cache, show_progress=False)
    meta_path = PreprocessedCase.files(cache, "case01")["meta"]
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    del meta["properties"]["inputs"]  # as written before records existed
    meta_path.write_text(json.dumps(meta))
    rerun = preprocess_cohort(tiny_cohort, plan, cache, show_progress=False)
    assert list(rerun.results) == ["case01"]
    inputs = PreprocessedCase.load(cache, "case01").properties["inputs"]
    assert set(inputs["files"]) == {"T1", "T2", "label"} and len(inputs["plan_sha256"]) == 64
