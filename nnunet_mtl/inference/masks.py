"""Predicted masks in the input's format: PNG in, PNG out.

nnU-Net exports every mask in the model's file ending (NIfTI). A PNG/JPG/BMP/TIFF input was converted
into a 2D NIfTI whose array is the input's pixel array, unchanged in size and order (``image_readers``
reads the pixels as stored: no transpose, no resampling, no EXIF rotation), and nnU-Net's export gives
the mask the input's geometry. So the mask's array is already on the input's pixel grid, and written
as a PNG (lossless; 8-bit, 16-bit when a label exceeds 255; label values as pixel values) it overlays
the original image. The PNG is written atomically before the NIfTI is removed, so a kill in between
leaves two complete files, never half of one. DICOM inputs keep the model's format (they have DICOM
SEG, ``--dicom_outputs``), and so do volumes.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_mtl.conversion.file_names import PNG_MASK_ENDING
from nnunet_mtl.io_utils import atomic_save_image

MASK_FORMATS = ("input", "nifti")
DEFAULT_MASK_FORMAT = "input"


def is_raster_input(path: str) -> bool:
    """A PNG/JPG/BMP/TIFF file (read by Pillow): its mask comes back as PNG."""
    from nnunet_mtl.conversion.image_readers import NaturalImageReader, find_reader
    return isinstance(find_reader(path), NaturalImageReader)


def mask_ending(sources: Sequence[str], file_ending: str, mask_format: str = DEFAULT_MASK_FORMAT) -> str:
    """The ending of a case's final mask: PNG for a raster input under 'input', else the model's."""
    if mask_format not in MASK_FORMATS:
        raise ValueError(f"mask format must be one of {MASK_FORMATS}, got {mask_format!r}")
    if mask_format == "input" and sources and is_raster_input(sources[0]):
        return PNG_MASK_ENDING
    return file_ending


def to_mask_format(folder: str, case_id: str, file_ending: str, ending: str, source: str) -> str:
    """Bring the case's exported mask ``folder/CASE<file_ending>`` into ``ending``; returns its path.
    A mask whose size is not the source image's is an error naming both files."""
    exported = os.path.join(folder, case_id + file_ending)
    if ending == file_ending:
        return exported
    target = os.path.join(folder, case_id + ending)
    arr = sitk.GetArrayFromImage(sitk.ReadImage(exported))
    if arr.ndim == 3 and arr.shape[0] == 1:  # a 2D image stored as a one-slice volume
        arr = arr[0]
    size = _raster_size(source)
    if arr.ndim != 2 or arr.shape != size:
        raise RuntimeError(f"{exported}: mask of shape {arr.shape} does not match its input {source} "
                           f"({size[0]} x {size[1]} pixels)")
    write_png_mask(arr, target)
    os.remove(exported)
    return target


def write_png_mask(arr: np.ndarray, path: str) -> None:
    """Label values as pixel values, losslessly (8-bit when they fit, else 16-bit)."""
    from PIL import Image
    arr = np.asarray(arr)
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise ValueError(f"{path}: label values {arr.min()}..{arr.max()} do not fit a PNG mask")
    arr = arr.astype(np.uint8 if not arr.size or arr.max() <= 255 else np.uint16)
    atomic_save_image(lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"), path)


def read_mask_array(path: str, reader_writer=None) -> np.ndarray:
    """A predicted mask in nnU-Net's array layout ((z, y, x); 2D as (1, y, x)): PNG through Pillow,
    other files through ``reader_writer`` (nnU-Net's image reader of the model) or SimpleITK."""
    if path.lower().endswith(PNG_MASK_ENDING):
        from PIL import Image
        with Image.open(path) as im:
            return np.asarray(im)[None]
    if reader_writer is not None:
        return reader_writer.read_seg(path)[0][0]
    arr = sitk.GetArrayFromImage(sitk.ReadImage(path))
    return arr[None] if arr.ndim == 2 else arr


def _raster_size(path: str) -> tuple:
    """(height, width) of a raster image, from its header."""
    from PIL import Image
    with Image.open(path) as im:
        return im.size[1], im.size[0]
