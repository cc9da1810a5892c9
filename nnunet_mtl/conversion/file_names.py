"""Image file endings and nnU-Net's channel suffix, spelled once.

nnU-Net names the input channels of case ``CASE`` ``CASE_0000``, ``CASE_0001``, ... and its masks
``CASE``; every place that turns a file name into a case id goes through here. A predicted mask is
``CASE<file_ending>`` (nnU-Net's export) or ``CASE.png`` (masks of PNG/JPG/BMP/TIFF inputs brought
back to the input's format, ``mask_outputs``): ``predicted_mask`` is the one answer to "which file
is case X's mask", for resume, evaluation, reports and DICOM outputs alike.
"""
from __future__ import annotations

import glob
import os
import re
from typing import List, Optional, Sequence, Tuple

VOLUME_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
RASTER_ENDINGS = (".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg")
# masks must be stored losslessly in one file: no JPEG, no .mhd header with a separate raw file
MASK_ENDINGS = (".nii.gz", ".nii", ".png", ".mha", ".nrrd", ".tif", ".tiff", ".bmp")
IMAGE_ENDINGS = VOLUME_ENDINGS + RASTER_ENDINGS
PNG_MASK_ENDING = ".png"  # a 2D raster input's mask, in its input's format (lossless, labels as pixel values)
VALIDATED_WEIGHTS = "validated_weights.json"  # fold_k/validation/: the U-Net weights the validation ran with
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


def predicted_mask_endings(file_ending: str) -> Tuple[str, ...]:
    """Endings a case's predicted mask can have: the model's (nnU-Net's export), then PNG."""
    return tuple(dict.fromkeys((file_ending, PNG_MASK_ENDING)))


def predicted_mask(folder: str, case_id: str, file_ending: str) -> Optional[str]:
    """Path of case ``case_id``'s predicted mask in ``folder`` (either ending), None when it has none."""
    for ending in predicted_mask_endings(file_ending):
        path = os.path.join(folder, case_id + ending)
        if os.path.isfile(path):
            return path
    return None


def trained_folds(folder: str, checkpoint: str) -> List[int]:
    """The folds of a model folder (``fold_k``) that hold ``checkpoint``."""
    return sorted(int(os.path.basename(d)[5:]) for d in glob.glob(os.path.join(folder, "fold_*"))
                  if os.path.basename(d)[5:].isdigit() and os.path.isfile(os.path.join(d, checkpoint)))


def safe_name(text) -> str:
    """``text`` as a file-name part: runs of anything but letters, digits, ``_ . -`` become one ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).strip("_") or "x"
