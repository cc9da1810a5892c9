"""2D radiographs from PNG/JPG or single-frame DICOM (CR/DX) as float grey images.

Radiographs come with vendor-specific grey scales: DICOM stores raw detector values
(RescaleSlope/Intercept) and MONOCHROME1 images are stored inverted, and a few burnt-in
labels or collimator edges dominate the intensity range. Reading them here into one
convention (bright = dense, clipped to intensity percentiles) keeps nnU-Net's
normalisation meaningful across sources.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple

import numpy as np

from nnunet_mtl.conversion.masks import ConversionError

PIL_EXTS = (".png", ".jpg", ".jpeg")
DICOM_EXTS = (".dcm", ".dicom")
DEFAULT_CLIP = (0.5, 98.5)
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def is_dicom_file(path: str) -> bool:
    """By extension, or for extension-less files by the 'DICM' magic at byte 128."""
    if path.lower().endswith(DICOM_EXTS):
        return True
    if os.path.splitext(path)[1] or not os.path.isfile(path):
        return False
    with open(path, "rb") as f:
        head = f.read(132)
    return head[128:132] == b"DICM"


def is_2d_file(path: str) -> bool:
    return path.lower().endswith(PIL_EXTS) or is_dicom_file(path)


def clip_to_percentiles(arr: np.ndarray, percentiles: Optional[Sequence[float]]) -> np.ndarray:
    if percentiles is None:
        return arr
    lo_p, hi_p = float(percentiles[0]), float(percentiles[1])
    if not 0 <= lo_p < hi_p <= 100:
        raise ConversionError(f"clip percentiles must satisfy 0 <= low < high <= 100, got {list(percentiles)}")
    lo, hi = np.percentile(arr, [lo_p, hi_p])
    return np.clip(arr, lo, hi)


def read_pil_pixels(path: str, grey: bool = True) -> np.ndarray:
    """Pixel values as stored; colour images become grey (luma) when ``grey``. Masks pass
    ``grey=False`` so palette PNGs keep their indices as labels."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            if grey and im.mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LA", "P"):
                rgb = np.asarray(im.convert("RGB"), dtype=np.float32)
                return rgb @ LUMA
            arr = np.asarray(im)
    except (OSError, ValueError) as e:
        raise ConversionError(f"{path}: cannot read image ({e})") from None
    if arr.ndim == 3:
        arr = _single_channel(arr, path)
    return arr


def _single_channel(arr: np.ndarray, path: str) -> np.ndarray:
    first = arr[..., 0]
    if any(not np.array_equal(first, arr[..., c]) for c in range(1, min(arr.shape[-1], 3))):
        raise ConversionError(f"{path}: a colour mask is not supported; store label values as grey levels")
    return first


def read_dicom_pixels(path: str) -> Tuple[np.ndarray, Optional[Tuple[float, float]]]:
    """Rescaled, MONOCHROME1-inverted pixels and the pixel spacing in (y, x), or None if not stored."""
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
    if arr.ndim == 3:  # RGB DICOM (SamplesPerPixel 3)
        arr = arr[..., :3] @ LUMA
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    arr = arr * slope + intercept
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = arr.max() + arr.min() - arr
    spacing = None
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(tag)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            spacing = (float(value[0]), float(value[1]))  # DICOM: row spacing (y), column spacing (x)
            break
    return arr, spacing


def read_radiograph(path: str, clip_percentiles: Optional[Sequence[float]] = DEFAULT_CLIP
                    ) -> Tuple[np.ndarray, Optional[Tuple[float, float]]]:
    """A 2D grey image as float32 (y, x), clipped to percentiles, and its spacing (y, x) if the file has one."""
    if is_dicom_file(path):
        arr, spacing = read_dicom_pixels(path)
    else:
        arr, spacing = read_pil_pixels(path).astype(np.float32), None
    if arr.ndim != 2:
        raise ConversionError(f"{path}: expected a 2D image, got shape {arr.shape}")
    return clip_to_percentiles(arr, clip_percentiles).astype(np.float32), spacing


def read_mask_2d(path: str) -> Tuple[np.ndarray, Optional[Tuple[float, float]]]:
    """A 2D mask's stored values (no rescaling or clipping) and spacing (y, x) if known."""
    if is_dicom_file(path):
        import pydicom
        try:
            ds = pydicom.dcmread(path)
            arr = ds.pixel_array
        except Exception as e:
            raise ConversionError(f"{path}: cannot read DICOM mask ({type(e).__name__}: {e})") from None
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        return arr, (float(spacing[0]), float(spacing[1])) if spacing else None
    return read_pil_pixels(path, grey=False), None
