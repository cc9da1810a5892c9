"""The generic layout restricted to 3D DICOM series, one folder per case."""
from nnunet_mtl.conversion.generic_layout import GenericLayout


class DicomSeriesLayout(GenericLayout):
    name = "dicom_series"
    expected_kind = "series"
    auto_detect = False
