"""``write_dicom_outputs``: the SEG and the SR of one case, written atomically next to each other."""
from __future__ import annotations

import os
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl.dicom_outputs.seg import build_seg
from nnunet_mtl.dicom_outputs.source import mask_in_source_geometry, read_sources
from nnunet_mtl.dicom_outputs.sr import build_sr
from nnunet_mtl.io_utils import atomic_save_image
from nnunet_mtl.prediction_table import CASE_COLUMN
from nnunet_mtl.targets import TargetSpec


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
