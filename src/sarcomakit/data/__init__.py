"""Cohort data: the manifest, importers, validation and synthetic cohorts."""

from sarcomakit.data.manifest import GRADES, Case, Manifest

__all__ = ["GRADES", "Case", "Manifest"]
