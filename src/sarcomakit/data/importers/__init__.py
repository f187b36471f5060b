"""Importers that build a cohort manifest from the formats users already have.

- :func:`import_nnunet_raw`: an nnU-Net raw dataset folder (v2, and v1's ``dataset.json``);
- :func:`import_msd`: a Medical Segmentation Decathlon task (4D images split per channel);
- :func:`import_dicom`: DICOM studies with an RTSTRUCT, converted to NIfTI with the ROI as label;
- :func:`import_table`: a CSV/XLSX with one image path per channel;
- :func:`merge_clinical`: a hospital's clinical spreadsheet merged into an existing manifest.
"""

from sarcomakit.data.importers.dicom import import_dicom, scan_dicom_folder
from sarcomakit.data.importers.msd import import_msd
from sarcomakit.data.importers.nnunet import import_nnunet_raw
from sarcomakit.data.importers.rtstruct import rasterise_roi, read_structure_set
from sarcomakit.data.importers.table import (
    ClinicalMapping,
    TableMapping,
    import_table,
    load_table_mapping,
    merge_clinical,
)

__all__ = [
    "ClinicalMapping",
    "TableMapping",
    "import_dicom",
    "import_msd",
    "import_nnunet_raw",
    "import_table",
    "load_table_mapping",
    "merge_clinical",
    "rasterise_roi",
    "read_structure_set",
    "scan_dicom_folder",
]
