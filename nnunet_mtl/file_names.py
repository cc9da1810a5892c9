"""Image file endings and nnU-Net's channel suffix, spelled once.

nnU-Net names the input channels of case ``CASE`` ``CASE_0000``, ``CASE_0001``, ... and its masks
``CASE``; every place that turns a file name into a case id goes through here.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
RASTER_ENDINGS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
# masks must be stored losslessly in one file: no JPEG, no .mhd header with a separate raw file
MASK_ENDINGS = (".nii.gz", ".nii", ".png", ".mha", ".nrrd", ".tif", ".tiff", ".bmp")
IMAGE_ENDINGS = VOLUME_ENDINGS + RASTER_ENDINGS
CHANNEL_SUFFIX = re.compile(r"_\d{4}$")
CHANNEL_DIGITS = 4


def strip_ending(name: str, endings: Sequence[str] = IMAGE_ENDINGS) -> Optional[str]:
    """``name`` without the first of ``endings`` it ends with (case-insensitive); None when none fits."""
    low = name.lower()
    for ending in endings:
        if low.endswith(ending):
            return name[: -len(ending)]
    return None


def strip_channel(stem: str) -> str:
    """``CASE_0000`` -> ``CASE``; other stems unchanged."""
    return CHANNEL_SUFFIX.sub("", stem)


def has_channel_suffix(stem: str) -> bool:
    return CHANNEL_SUFFIX.search(stem) is not None


def channel_file(case_id: str, channel: int, ending: str) -> str:
    """File name of one input channel in nnU-Net's layout: ``CASE_0000.nii.gz``."""
    return f"{case_id}_{channel:0{CHANNEL_DIGITS}d}{ending}"


def case_name(path: str) -> str:
    """Case id of an image path: ``dir/CASE_0000.nii.gz`` -> ``CASE``; unknown endings are kept."""
    name = os.path.basename(path.rstrip(os.sep))
    return strip_channel(strip_ending(name) or name)
