"""3D DICOM series (one folder per case) -> SimpleITK image with its patient geometry.

GDCM sorts the slices by position and applies RescaleSlope/Intercept, so the volume keeps the
spacing, origin and direction the scanner wrote; masks are then checked against that geometry.
"""
from __future__ import annotations

import logging
import os
from typing import List, Tuple

import SimpleITK as sitk

from nnunet_mtl.conversion.masks import ConversionError

log = logging.getLogger(__name__)


def list_series(folder: str) -> List[Tuple[str, List[str]]]:
    """(series UID, sorted file names) for every series GDCM finds directly in ``folder``."""
    reader = sitk.ImageSeriesReader()
    out = []
    for uid in reader.GetGDCMSeriesIDs(folder) or ():
        out.append((uid, list(reader.GetGDCMSeriesFileNames(folder, uid))))
    return out


def is_series_dir(folder: str) -> bool:
    return os.path.isdir(folder) and bool(list_series(folder))


def _pick_series(folder: str) -> Tuple[str, List[str]]:
    series = list_series(folder)
    if not series:
        raise ConversionError(f"{folder}: no DICOM series found in this folder")
    series.sort(key=lambda s: -len(s[1]))
    if len(series) > 1:
        log.warning("%s: %d DICOM series found; using the largest (%s, %d files)",
                    folder, len(series), series[0][0], len(series[0][1]))
    return series[0]


def read_dicom_series(folder: str) -> sitk.Image:
    """The largest series in ``folder`` as a 3D image (geometry from the DICOM headers)."""
    _, files = _pick_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    try:
        img = reader.Execute()
    except RuntimeError as e:
        first_line = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        raise ConversionError(f"{folder}: cannot read DICOM series ({first_line})") from None
    return img


def series_modality(folder: str) -> str:
    """The Modality tag of the series (e.g. 'CT'), '' when unreadable: picks nnU-Net's normalisation."""
    import pydicom
    try:
        _, files = _pick_series(folder)
        return str(pydicom.dcmread(files[0], stop_before_pixels=True).get("Modality", "")).upper()
    except Exception:
        return ""
