"""Cross-validation splits by case, grouped by site when the cohort has enough sites.

Rules, in order:
1. when every case has a ``fold`` in the manifest, those folds are used as given;
2. with a ``site`` per case and at least ``n_folds`` sites, sites are kept whole (GroupKFold):
   a validation fold only holds hospitals the model never saw in training;
3. with fewer sites than folds, the folds are stratified by site (each fold mixes sites alike),
   because whole-site folds are impossible; this is said in a warning;
4. otherwise a shuffled KFold.

With ``clinical=True`` (multi-task runs) the folds are also stratified by grade and event, so that
every validation fold holds each grade and some deaths: StratifiedGroupKFold on the
grade-and-event stratum, with sites as groups when there are enough of them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold

from sarcomakit.core.errors import UserInputError
from sarcomakit.core.io.atomic import write_json
from sarcomakit.data.manifest import Manifest

log = logging.getLogger(__name__)


def _merge_rare(strata: list[str], n_folds: int) -> list[str]:
    """Strata with fewer members than folds are pooled, so that stratification stays possible."""
    counts = {s: strata.count(s) for s in set(strata)}
    return [s if counts[s] >= n_folds else "_rare" for s in strata]


def clinical_strata(manifest: Manifest) -> list[str]:
    """One label per case combining grade and event (``unknown`` where missing)."""
    return [f"{c.grade or 'unknown'}|{'unknown' if c.event is None else c.event}" for c in manifest.cases]


def make_folds(manifest: Manifest, n_folds: int = 5, seed: int = 0, *,
               clinical: bool = False) -> list[dict[str, list[str]]]:
    """Return ``n_folds`` splits as ``[{"train": [...ids], "val": [...ids]}, ...]`` (rules in the module docstring)."""
    ids = np.array(manifest.case_ids)
    if len(ids) < n_folds:
        raise UserInputError(f"{len(ids)} cases cannot be split into {n_folds} folds.",
                             path=manifest.source, fix="use fewer folds (--folds) or add cases.")
    given = [c.fold for c in manifest.cases if c.fold is not None]
    if len(given) == len(manifest.cases):
        folds = sorted(set(given))
        return [{"train": [c.case_id for c in manifest.cases if c.fold != k],
                 "val": [c.case_id for c in manifest.cases if c.fold == k]} for k in folds]
    sites = [c.site for c in manifest.cases]
    known_sites = [s for s in sites if s is not None]
    every_site = len(known_sites) == len(sites)
    index = np.arange(len(ids))
    enough_sites = every_site and len(set(sites)) >= n_folds
    if clinical:
        strata = _merge_rare(clinical_strata(manifest), n_folds)
        groups = sites if enough_sites else list(ids)
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(index, strata, groups=groups))
    elif enough_sites:
        order = np.random.default_rng(seed).permutation(len(ids))  # GroupKFold is deterministic: shuffle first
        splitter = GroupKFold(n_splits=n_folds)
        splits = [(order[tr], order[va]) for tr, va in splitter.split(index, groups=np.array(sites)[order])]
    elif every_site and len(set(sites)) > 1:
        log.warning("only %d sites for %d folds: folds are stratified by site instead of grouped by it",
                    len(set(sites)), n_folds)
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(index, _merge_rare(known_sites, n_folds)))
    else:
        splits = list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(index))
    return [{"train": sorted(ids[tr].tolist()), "val": sorted(ids[va].tolist())} for tr, va in splits]


def save_folds(folds: list[dict[str, list[str]]], path: str | Path) -> Path:
    return write_json(path, folds)
