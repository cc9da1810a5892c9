"""Every input layout, listed once: the CLI's ``--layout`` choices and auto-detection come from here.

Modelled on nnU-Net's ``imageio/reader_writer_registry.py``: each layout class says whether it
recognises a folder; the caller asks the registry. Detection tries the layouts in this order.
"""
from __future__ import annotations

import os
from typing import Tuple, Type

from nnunet_mtl.conversion.dicom_series_layout import DicomSeriesLayout
from nnunet_mtl.conversion.generic_layout import GenericLayout
from nnunet_mtl.conversion.layout import InputLayout
from nnunet_mtl.conversion.masks import ConversionError
from nnunet_mtl.conversion.pancreas_layout import PancreasLayout
from nnunet_mtl.conversion.radiograph_layout import RadiographLayout

LAYOUTS: Tuple[Type[InputLayout], ...] = (PancreasLayout, GenericLayout, RadiographLayout, DicomSeriesLayout)
AUTO = "auto"
LAYOUT_NAMES = (AUTO,) + tuple(layout.name for layout in LAYOUTS)


def layout_named(name: str) -> InputLayout:
    for layout in LAYOUTS:
        if layout.name == name:
            return layout()
    raise ConversionError(f"unknown layout {name!r} (use one of {list(LAYOUT_NAMES)})")


def detect_layout(input_dir: str) -> InputLayout:
    """The first auto-detectable layout that recognises ``input_dir``."""
    if not os.path.isdir(input_dir):
        raise ConversionError(f"{input_dir}: input folder not found")
    candidates = [layout() for layout in LAYOUTS if layout.auto_detect]
    for layout in candidates:
        if layout.recognises(input_dir):
            return layout
    expected = " or ".join(layout.expects for layout in candidates)
    raise ConversionError(f"{input_dir}: cannot tell the layout: expected {expected}")
