"""Conventional nnU-Net-style planning: fingerprint -> plan -> preprocessing, and its inverse.

Example:
    >>> from sarcomakit.data.manifest import Manifest  # doctest: +SKIP
    >>> plan = plan_cohort(Manifest.load("cohort/manifest.csv"), "cohort/plan.json")  # doctest: +SKIP
    >>> preprocess_cohort(Manifest.load("cohort/manifest.csv"), plan, "cohort/preprocessed")  # doctest: +SKIP
"""

from sarcomakit.planning.fingerprint import (
    CaseFingerprint,
    Fingerprint,
    IntensityStatistics,
    compute_fingerprint,
)
from sarcomakit.planning.normalize import ChannelNormalization
from sarcomakit.planning.plan import Plan, estimate_memory_mb, make_plan, plan_cohort
from sarcomakit.planning.preprocess import (
    PreprocessedCase,
    preprocess_case,
    preprocess_cohort,
    restore_to_input_geometry,
)

__all__ = [
    "CaseFingerprint",
    "ChannelNormalization",
    "Fingerprint",
    "IntensityStatistics",
    "Plan",
    "PreprocessedCase",
    "compute_fingerprint",
    "estimate_memory_mb",
    "make_plan",
    "plan_cohort",
    "preprocess_case",
    "preprocess_cohort",
    "restore_to_input_geometry",
]
