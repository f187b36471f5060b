"""A tiny multi-site cohort for the federated tests (the tiny cohort with its cases spread over sites)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sarcomakit.data.manifest import Manifest
from sarcomakit.planning.plan import Plan, plan_cohort
from sarcomakit.runs.config import TrainConfig
from tiny_cohorts import write_tiny_cohort

TINY = TrainConfig(patch_size=[16, 32, 32], batch_size=2, optimizer="adamw", learning_rate=3e-3, augmentation="none",
                   num_workers=0, network_options={"channels": [4, 8], "num_res_units": 1}, device="cpu", amp=False,
                   sw_overlap=0.0)


def multi_site_cohort(root: Path, sites: list[str], *, blank_t2_site: str | None = None) -> tuple[Manifest, Plan]:
    """``len(sites)`` cases, case i at ``sites[i]``; the cases of ``blank_t2_site`` lose their T2 image (a site
    whose channels differ from the plan's)."""
    manifest = write_tiny_cohort(root / "cohort", n_cases=len(sites))
    plan = plan_cohort(manifest, root / "plan.json", show_progress=False)
    cases = []
    for case, site in zip(manifest.cases, sites, strict=True):
        images = dict(case.images)
        if site == blank_t2_site:
            images.pop("T2")
        cases.append(dataclasses.replace(case, site=site, images=images))
    path = root / "cohort" / "sites.csv"
    Manifest(channels=manifest.channels, cases=cases).save(path)
    return Manifest.load(path), plan
