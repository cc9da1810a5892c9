"""``write_dicom_outputs``: the SEG and the SR of one case, written atomically next to each other;
``write_case_outputs``: the same from the files the predictor has (case input, mask file, probabilities)."""
from __future__ import annotations

import logging
import os
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl.outputs.dicom.seg import build_seg
from nnunet_mtl.outputs.dicom.source import (dicom_source_files, mask_in_source_geometry, read_sources,
                                             source_slice_indices)
from nnunet_mtl.outputs.dicom.sr import build_sr
from nnunet_mtl.io_utils import atomic_save_image
from nnunet_mtl.prediction_table import CASE_COLUMN
from nnunet_mtl.targets import TargetSpec

log = logging.getLogger(__name__)


def write_dicom_outputs(source_dicom_files: Sequence[str], mask, label_names: Mapping[str, object],
                        predictions_row: Optional[Mapping], out_dir: str, spec: Optional[TargetSpec] = None, *,
                        probabilities: Optional[np.ndarray] = None, calibrated: bool = False,
                        case_id: Optional[str] = None) -> Dict[str, str]:
    """Write ``<case>_seg.dcm`` (when ``mask`` is given) and ``<case>_sr.dcm`` (when a row and spec are).

    Args:
        source_dicom_files: the case's DICOM input (one radiograph, or the files of one series).
        mask: the predicted label map: a SimpleITK image read from nnU-Net's output (mapped onto the
            source slices by patient coordinates) or an array already in source order, ``(rows, cols)``
            or ``(frames, rows, cols)``; None for classification-only models.
        label_names: ``dataset.json`` ``labels``.
        predictions_row: the case's ``predictions.csv`` row (``prediction_table.make_row``).
        spec: the target spec (needed for the SR).
        probabilities: optional ``(frames, rows, cols, n_classes)`` in source order -> a fractional SEG.
        calibrated: whether the row's probabilities are calibrated (recorded in the SR).
        case_id: file name stem; default the row's ``case_id``.
    Returns:
        ``{"seg": path, "sr": path}`` for what was written.
    """
    datasets = read_sources(source_dicom_files)
    case = case_id or (predictions_row or {}).get(CASE_COLUMN) or "case"
    paths = {}
    if mask is not None:
        mask_src = mask_in_source_geometry(mask, datasets)
        probs = None if probabilities is None else mask_in_source_geometry(probabilities, datasets)
        seg = build_seg(datasets, mask_src, label_names, probabilities=probs)
        paths["seg"] = _save(seg, os.path.join(out_dir, f"{case}_seg.dcm"))
    if predictions_row is not None and spec is not None:
        sr = build_sr(datasets, predictions_row, spec, calibrated=calibrated)
        paths["sr"] = _save(sr, os.path.join(out_dir, f"{case}_sr.dcm"))
    return paths


def _save(ds, path: str) -> str:
    atomic_save_image(lambda tmp: ds.save_as(tmp, enforce_file_format=True), path)
    return path


def write_case_outputs(case_input: str, mask_file: Optional[str], label_names: Mapping[str, object],
                       predictions_row: Optional[Mapping], out_dir: str, spec: Optional[TargetSpec] = None, *,
                       probabilities_file: Optional[str] = None, calibrated: bool = False) -> Dict[str, str]:
    """The predictor's entry point for one case; ``{}`` (and one log line) when the input is not DICOM.

    Args:
        case_input: what the user gave for the case: a DICOM file (radiograph) or a series folder.
        mask_file: nnU-Net's predicted mask (NIfTI etc., read with SimpleITK; its geometry is the
            converted image's), or None.
        probabilities_file: nnU-Net's ``--save_probabilities`` ``.npz`` (``probabilities``: (c, z, y, x)
            on the mask's grid) for a fractional SEG; None for a binary one.
    """
    files = dicom_source_files(case_input)
    if files is None:
        log.info("%s: not a DICOM input; no DICOM SEG/SR written", case_input)
        return {}
    mask = probs = None
    if mask_file is not None:
        import SimpleITK as sitk
        image = sitk.ReadImage(mask_file)
        datasets = read_sources(files)
        order = source_slice_indices(image, datasets)
        arr = sitk.GetArrayFromImage(image)
        mask = (arr[None] if arr.ndim == 2 else arr)[order]
        if probabilities_file is not None:
            with np.load(probabilities_file) as npz:
                p = np.asarray(npz["probabilities"], dtype=np.float32)
            p = p[:, None] if p.ndim == 3 else p  # (c, y, x) -> (c, 1, y, x)
            probs = np.moveaxis(p[:, order], 0, -1)
    return write_dicom_outputs(files, mask, label_names, predictions_row, out_dir, spec, probabilities=probs,
                               calibrated=calibrated)
