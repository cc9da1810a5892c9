"""Single-frame 2D DICOM files (CR/DX radiographs) as float grey pixels.

Radiographs come with vendor-specific grey scales: DICOM stores raw detector values
(RescaleSlope/Intercept) and MONOCHROME1 images are stored inverted. Reading them here into
one convention (bright = dense) keeps nnU-Net's normalisation meaningful across sources;
``image_readers`` then clips to intensity percentiles.
"""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from nnunet_mtl.conversion.masks import ConversionError

DICOM_EXTS = (".dcm", ".dicom")
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def is_dicom_file(path: str) -> bool:
    """By extension, or for extension-less files by the 'DICM' magic at byte 128."""
    if path.lower().endswith(DICOM_EXTS):
        return os.path.isfile(path)
    if os.path.splitext(path)[1] or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def _spacing(ds) -> Optional[Tuple[float, float]]:
    """Pixel spacing in (y, x) (DICOM: row spacing, column spacing), None when not stored."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return float(value[0]), float(value[1])
    return None


def read_dicom_pixels(path: str) -> Tuple[np.ndarray, Optional[Tuple[float, float]]]:
    """Rescaled, MONOCHROME1-inverted pixels (y, x) and the pixel spacing in (y, x), or None."""
    import pydicom
    try:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array
    except Exception as e:  # pydicom raises many types for unreadable or compressed data
        raise ConversionError(f"{path}: cannot read DICOM pixel data ({type(e).__name__}: {e})") from None
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ConversionError(f"{path}: multi-frame DICOM ({frames} frames) is not a 2D radiograph; "
                              f"put 3D series as one folder per case")
    arr = pixels.astype(np.float32)
    if arr.ndim == 3:  # RGB DICOM (SamplesPerPixel 3): luma
        arr = arr[..., :3] @ LUMA
    if arr.ndim != 2:
        raise ConversionError(f"{path}: expected a 2D image, got shape {arr.shape}")
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    return arr, _spacing(ds)


def read_dicom_mask(path: str) -> Tuple[np.ndarray, Optional[Tuple[float, float]]]:
    """A 2D DICOM mask's stored values (no rescaling) and spacing (y, x) if known."""
    import pydicom
    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as e:
        raise ConversionError(f"{path}: cannot read DICOM mask ({type(e).__name__}: {e})") from None
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    return arr, (float(spacing[0]), float(spacing[1])) if spacing else None
