"""Conventional baselines that learned models are compared against."""

from sarcomakit.baselines.threshold import threshold_baseline

__all__ = ["threshold_baseline"]
