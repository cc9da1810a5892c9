"""The source DICOM instances of one case, in the order a mask's frames follow.

nnU-Net's masks come back in the geometry of the converted image: for a series, SimpleITK's
(z, y, x) volume with the slices in GDCM's order; for a radiograph, the (rows, columns) pixel
array. ``mask_in_source_geometry`` maps such a mask onto the source instances by patient
coordinates (never by file order), and refuses a mask whose grid does not match.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from nnunet_mtl.conversion.dicom_file import is_dicom_file

POSITION_TOLERANCE_MM = 1e-2
# Type 2 patient/study attributes (present, may be empty) that anonymised exports often drop and
# highdicom copies into derived objects; filled with empty values on the in-memory copy only.
TYPE2_DEFAULTS = {"PatientName": "", "PatientID": "", "PatientBirthDate": "", "PatientSex": "",
                  "StudyDate": "", "StudyTime": "", "ReferringPhysicianName": "", "StudyID": "",
                  "AccessionNumber": ""}
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class DicomOutputError(ValueError):
    """Source instances or a mask that cannot make a DICOM output; the message names the case or file."""


def dicom_source_files(path: str) -> Optional[List[str]]:
    """The DICOM files behind one case input (a DICOM file, or a folder holding a series), or None
    when the input is not DICOM (the caller skips the case with one line)."""
    if os.path.isfile(path):
        return [path] if is_dicom_file(path) else None
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path))
        files = [f for f in files if os.path.isfile(f) and is_dicom_file(f)]
        return files or None
    return None


def read_sources(files: Sequence[str]) -> List[Dataset]:
    """The instances in slice order: one radiograph, or one series sorted along its slice normal
    (ascending, as GDCM sorts). All must share the series, orientation and grid."""
    if not files:
        raise DicomOutputError("no source DICOM files given")
    datasets = [pydicom.dcmread(f) for f in files]
    for f, ds in zip(files, datasets):
        missing = [kw for kw in REQUIRED_UIDS if not ds.get(kw)]
        if missing:
            raise DicomOutputError(f"{f}: no {', '.join(missing)}; derived DICOM objects must reference it")
        for kw, value in TYPE2_DEFAULTS.items():
            if kw not in ds:
                setattr(ds, kw, value)
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomOutputError(f"{f}: multi-frame source ({ds.NumberOfFrames} frames) is not supported; "
                                   f"DICOM outputs need a single-frame radiograph or a series of single-frame slices")
    if len(datasets) == 1:
        return datasets
    first = datasets[0]
    for f, ds in zip(files, datasets):
        if ds.get("SeriesInstanceUID") != first.get("SeriesInstanceUID"):
            raise DicomOutputError(f"{f}: belongs to another series than {files[0]}")
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            raise DicomOutputError(f"{f}: a series slice without ImagePositionPatient/ImageOrientationPatient")
        if not np.allclose(_floats(ds.ImageOrientationPatient), _floats(first.ImageOrientationPatient), atol=1e-4):
            raise DicomOutputError(f"{f}: slice orientation differs from {files[0]}")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise DicomOutputError(f"{f}: {ds.Rows}x{ds.Columns} pixels, {files[0]} has {first.Rows}x{first.Columns}")
    normal = slice_normal(first)
    return sorted(datasets, key=lambda ds: float(np.dot(_floats(ds.ImagePositionPatient), normal)))


def slice_normal(ds: Dataset) -> np.ndarray:
    iop = _floats(ds.ImageOrientationPatient)
    return np.cross(iop[:3], iop[3:])


def _floats(values) -> np.ndarray:
    return np.array([float(v) for v in values], dtype=np.float64)


def mask_in_source_geometry(mask, datasets: Sequence[Dataset]) -> np.ndarray:
    """``(frames, rows, columns)`` with frame k on ``datasets[k]``.

    Args:
        mask: a SimpleITK image (the nnU-Net output read back: its geometry is checked against the
            source positions) or an array already in source order: ``(rows, columns)`` or
            ``(frames, rows, columns)``; a trailing class axis is allowed (fractional outputs).
        datasets: ``read_sources`` output.
    """
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - SimpleITK comes with nnU-Net
        sitk = None
    if sitk is not None and isinstance(mask, sitk.Image):
        return _from_image(mask, datasets)
    arr = np.asarray(mask)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    if arr.ndim >= 2 and arr.shape[:2] == (rows, cols) and len(datasets) == 1 and arr.ndim == 2:
        arr = arr[None]
    if arr.shape[:3] != (len(datasets), rows, cols):
        raise DicomOutputError(f"mask of shape {arr.shape} does not match {len(datasets)} source frame(s) of "
                               f"{rows}x{cols} pixels")
    return arr


def source_slice_indices(image, datasets: Sequence[Dataset]) -> List[int]:
    """For each source instance, the index along the image's slice axis (numpy axis 0) that lies on
    it; raises when a source slice is not a slice of the image (other origin, spacing, orientation).
    A radiograph (one instance, or a 2D image) maps to [0] after its grid is checked."""
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    size_yx = tuple(image.GetSize()[:2][::-1])
    if size_yx != (rows, cols):
        raise DicomOutputError(f"mask grid {size_yx} does not match the source's {rows}x{cols} pixels")
    if image.GetDimension() == 2 or len(datasets) == 1:
        if image.GetDimension() == 3 and image.GetSize()[2] != 1:
            raise DicomOutputError(f"a {image.GetSize()[2]}-slice mask for a single-frame source")
        return [0]
    n_slices = image.GetSize()[2]
    spacing = np.array(image.GetSpacing())
    out = []
    for ds in datasets:
        idx = np.array(image.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient]))
        k = int(round(idx[2]))
        off = np.abs(idx - np.array([0.0, 0.0, k])) * spacing
        if not (0 <= k < n_slices) or np.any(off > POSITION_TOLERANCE_MM + 1e-3 * spacing):
            raise DicomOutputError(f"source slice {ds.get('SOPInstanceUID')} at {list(ds.ImagePositionPatient)} "
                                   f"is not a slice of the mask (continuous index {idx.round(3).tolist()})")
        out.append(k)
    return out


def _from_image(image, datasets: Sequence[Dataset]) -> np.ndarray:
    import SimpleITK as sitk
    arr = sitk.GetArrayFromImage(image)
    arr = arr[None] if arr.ndim == 2 else arr
    return arr[source_slice_indices(image, datasets)]
