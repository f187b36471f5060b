"""Cross-validation splits: given folds, whole sites, stratified sites, plain k-fold."""

import pytest

from sarcomakit.core.errors import UserInputError
from sarcomakit.data.folds import make_folds
from sarcomakit.data.manifest import Case, Manifest


def _cohort(n: int, sites: list[str | None] | None = None, folds: list[int | None] | None = None) -> Manifest:
    cases = [Case(f"c{i:02d}", {"CT": f"c{i}.nii.gz"}, site=(sites[i] if sites else None),
                  fold=(folds[i] if folds else None)) for i in range(n)]
    return Manifest(channels=["CT"], cases=cases)


def _check_partition(folds: list[dict], ids: list[str]) -> None:
    vals = [c for f in folds for c in f["val"]]
    assert sorted(vals) == sorted(ids)
    for f in folds:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == sorted(ids)


def test_manifest_folds_are_used_as_given() -> None:
    manifest = _cohort(6, folds=[0, 1, 2, 0, 1, 2])
    folds = make_folds(manifest, n_folds=3)
    assert folds[1]["val"] == ["c01", "c04"]
    _check_partition(folds, manifest.case_ids)


def test_sites_are_kept_whole_when_there_are_enough() -> None:
    sites = [f"s{i % 5}" for i in range(20)]
    manifest = _cohort(20, sites=sites)
    folds = make_folds(manifest, n_folds=5, seed=1)
    _check_partition(folds, manifest.case_ids)
    site_of = dict(zip(manifest.case_ids, sites, strict=True))
    for f in folds:
        assert not {site_of[c] for c in f["train"]} & {site_of[c] for c in f["val"]}


def test_few_sites_are_spread_evenly_over_folds() -> None:
    sites = ["A"] * 10 + ["B"] * 10
    manifest = _cohort(20, sites=sites)
    folds = make_folds(manifest, n_folds=5)
    _check_partition(folds, manifest.case_ids)
    for f in folds:
        assert sorted(s for c, s in zip(manifest.case_ids, sites, strict=True) if c in f["val"]) == ["A", "A", "B", "B"]


def test_plain_kfold_is_deterministic_for_a_seed() -> None:
    manifest = _cohort(10)
    assert make_folds(manifest, 5, seed=3) == make_folds(manifest, 5, seed=3)
    assert make_folds(manifest, 5, seed=3) != make_folds(manifest, 5, seed=4)


def test_too_few_cases_is_a_user_error() -> None:
    with pytest.raises(UserInputError, match="cannot be split"):
        make_folds(_cohort(3), n_folds=5)


def test_clinical_folds_spread_grades_and_events() -> None:
    manifest = _cohort(30)
    for i, case in enumerate(manifest.cases):
        case.grade = ("low", "intermediate", "high")[i % 3]
        case.event = int(i % 2 == 0)
    folds = make_folds(manifest, n_folds=5, seed=2, clinical=True)
    _check_partition(folds, manifest.case_ids)
    by_id = {c.case_id: c for c in manifest.cases}
    for f in folds:
        val = [by_id[c] for c in f["val"]]
        assert {c.grade for c in val} == {"low", "intermediate", "high"}
        assert 0 < sum(c.event for c in val) < len(val)
