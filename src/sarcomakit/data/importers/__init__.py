"""Importers that build a cohort manifest from the formats users already have.

- :func:`import_nnunet_raw`: an nnU-Net raw dataset folder (v2, and v1's ``dataset.json``);
- :func:`import_msd`: a Medical Segmentation Decathlon task (4D images split per channel);
- :func:`import_dicom`: DICOM studies with an RTSTRUCT, converted to NIfTI with the ROI as label;
- :func:`import_table`: a CSV/XLSX with one image path per channel;
- :func:`merge_clinical`: a hospital's clinical spreadsheet merged into an existing manifest.

Importing a TCIA-style sarcoma collection (MR T1/T2FS and PET/CT studies with RTSTRUCT contours
named ``GTV_Mass``, plus a clinical spreadsheet)::

    sarcomakit import dicom STS_DICOM/ sts/ --roi GTV_Mass \
        --channel 'T1=description:T1' --channel 'T2FS=description:STIR|T2.*FS' \
        --channel 'PET=modality:PT' --channel 'CT=modality:CT'
    sarcomakit import clinical sts/manifest.csv clinical.xlsx sts/manifest_clinical.csv --mapping map.json
    sarcomakit validate sts/manifest_clinical.csv

with ``map.json`` such as ``{"id_column": "Patient ID", "grade": {"column": "Grade", "map": {"G1": "low",
"G2": "intermediate", "G3": "high"}}, "survival_time": {"column": "Days to last follow-up"},
"event": {"column": "Status", "map": {"D": 1, "NED": 0, "AWD": 0}}}``. Channels from a study with
another frame of reference than the contoured series (MR vs PET/CT) are resampled by scanner
coordinates and flagged in the manifest's ``unregistered`` column: register them first when they
must overlap voxel for voxel.
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
