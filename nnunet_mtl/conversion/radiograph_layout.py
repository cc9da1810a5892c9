"""The generic layout restricted to 2D images (PNG/JPG/BMP/TIFF or single-frame DICOM CR/DX)."""
from nnunet_mtl.conversion.generic_layout import GenericLayout


class RadiographLayout(GenericLayout):
    name = "radiograph"
    expected_kind = "2d"
    auto_detect = False
