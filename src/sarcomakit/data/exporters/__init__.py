"""Exporters that write a cohort manifest in other tools' layouts."""

from sarcomakit.data.exporters.nnunet import export_nnunet_raw

__all__ = ["export_nnunet_raw"]
