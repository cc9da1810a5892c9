"""The whole report from files on disk: the predictions table, the images, the predicted masks and,
optionally, Grad-CAM overlays (what the predictor and ``nnunet_mtl_explain`` leave behind)."""
from __future__ import annotations

import logging
from typing import Mapping, Optional

import numpy as np

from nnunet_mtl import prediction_table
from nnunet_mtl.prediction_table import CASE_COLUMN
from nnunet_mtl.outputs.report.pages import write_case_report, write_index
from nnunet_mtl.targets import TargetSpec

log = logging.getLogger(__name__)


def read_array(path: str):
    """(array in (z, y, x) / (y, x) order, spacing in the same order) via SimpleITK."""
    import SimpleITK as sitk
    image = sitk.ReadImage(path)
    return sitk.GetArrayFromImage(image), tuple(image.GetSpacing()[::-1])


def write_folder_report(out_dir: str, prediction_csv: str, spec: TargetSpec, image_files: Mapping[str, str], *,
                        mask_files: Optional[Mapping[str, str]] = None, cam_pngs: Optional[Mapping[str, str]] = None,
                        label_names: Optional[Mapping[str, int]] = None, calibrated: bool = False) -> str:
    """One page per case of ``prediction_csv`` that has an image, then the index over every case.

    Args:
        image_files: case id -> the image (first channel file, e.g. ``imagesTs/<case>_0000.nii.gz``).
        mask_files: case id -> predicted mask; leave out for classification-only models (their masks
            cover the whole image and outline nothing).
        cam_pngs: case id -> Grad-CAM overlay PNG (``explain_case(...)["overlay_png"]``).
    Returns:
        the index path.
    """
    rows = _read_rows(prediction_csv, spec)
    for row in rows:
        cid = row[CASE_COLUMN]
        if cid not in image_files:
            log.info("%s: no image for case %s; listed in the index without a page", prediction_csv, cid)
            continue
        image, spacing = read_array(image_files[cid])
        mask = read_array(mask_files[cid])[0] if mask_files and cid in mask_files else None
        write_case_report(np.asarray(image, np.float32), mask, row, spec, out_dir,
                          cam_png=(cam_pngs or {}).get(cid), calibrated=calibrated, spacing=spacing,
                          label_names=label_names)
    return write_index(out_dir, rows, spec, calibrated=calibrated)


def _read_rows(prediction_csv: str, spec: TargetSpec) -> list:
    """The table's rows as written (strings; the pages convert), after ``prediction_table`` checked them."""
    import csv
    prediction_table.read(prediction_csv, spec)
    with open(prediction_csv, newline="") as f:
        return list(csv.DictReader(f))
