"""Synthetic multi-modal sarcoma cohorts: a procedural thigh with a tumour, acquired at several sites.

Submodules: :mod:`.fields` (smooth random fields), :mod:`.anatomy` (limb), :mod:`.tumour`,
:mod:`.scene` (tumour and distracting findings on a grid), :mod:`.acquisition` (site protocols and
grids), :mod:`.contrast` (T1, T2FS, PET, CT physics), :mod:`.clinical` (grade, survival) and
:mod:`.cohort` (cases and cohorts on disk).
"""

from sarcomakit.data.synthetic.anatomy import Tissue
from sarcomakit.data.synthetic.cohort import (
    CaseDesign,
    SyntheticCase,
    case_id_of,
    design_case,
    make_synthetic_case,
    make_synthetic_cohort,
    render_case,
)
from sarcomakit.data.synthetic.contrast import CHANNELS

__all__ = ["CHANNELS", "CaseDesign", "SyntheticCase", "Tissue", "case_id_of", "design_case",
           "make_synthetic_case", "make_synthetic_cohort", "render_case"]
