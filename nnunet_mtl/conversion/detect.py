"""One entry point for every input layout: detect which one a folder is, convert it, report repairs.

The pipeline CLI calls ``convert``; the layout modules stay independent of each other and
of how the user names folders (``images`` or ``imagesTr``, ``masks`` or ``labelsTr``).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional, Sequence

from nnunet_mtl.conversion.generic_layout import ReadOptions, convert_generic, image_kind, scan_folder
from nnunet_mtl.conversion.masks import ConversionError, ConversionReport, ConversionResult
from nnunet_mtl.conversion.pancreas_layout import convert_pancreas, is_pancreas_layout
from nnunet_mtl.conversion.radiograph import DEFAULT_CLIP
from nnunet_mtl.targets import TargetSpecError, load_spec_file

__all__ = ["convert", "convert_with_report", "detect_layout", "ConversionError", "ConversionReport", "LAYOUTS"]

log = logging.getLogger(__name__)

LAYOUTS = ("auto", "pancreas", "generic", "radiograph", "dicom_series")
IMAGE_DIRS = ("images", "imagesTr")
MASK_DIRS = ("masks", "labelsTr")
TEST_DIRS = ("test_images", "imagesTs")
LABELS_CSV = "labels.csv"
KIND_OF_LAYOUT = {"radiograph": "2d", "dicom_series": "series"}


def _first_dir(root: str, names: Sequence[str]) -> Optional[str]:
    for n in names:
        if os.path.isdir(os.path.join(root, n)):
            return os.path.join(root, n)
    return None


def detect_layout(input_dir: str) -> str:
    """'pancreas' (train/<class>/ folders) or 'generic' (images/ or imagesTr/, or images at the top)."""
    if not os.path.isdir(input_dir):
        raise ConversionError(f"{input_dir}: input folder not found")
    if is_pancreas_layout(input_dir):
        return "pancreas"
    if _first_dir(input_dir, IMAGE_DIRS):
        return "generic"
    raise ConversionError(f"{input_dir}: cannot tell the layout: expected train/<class>/ folders "
                          f"(pancreas layout) or an images/ (imagesTr/) folder with a labels CSV")


def _pancreas_classes(spec_json: Optional[str]):
    """Target name and class names from a spec file, when the user wants to fix them."""
    if not spec_json:
        return "subtype", None
    try:
        spec = load_spec_file(spec_json)
    except TargetSpecError as e:
        raise ConversionError(str(e)) from None
    if len(spec) != 1 or not spec.targets[0].is_classification:
        raise ConversionError(f"{spec_json}: the pancreas layout carries exactly one classification target "
                              f"(the class folders); got {spec.names}")
    return spec.targets[0].name, list(spec.targets[0].classes)


def convert_with_report(input_dir: str, raw_root: str, dataset_id: int, name: str, layout: str = "auto",
                        labels_csv: Optional[str] = None, spec_json: Optional[str] = None,
                        masks_dir: Optional[str] = None, test_dir: Optional[str] = None,
                        patient_column: Optional[str] = None,
                        clip_percentiles: Optional[Sequence[float]] = DEFAULT_CLIP,
                        target_spacing: Optional[Sequence[float]] = None, overwrite: bool = False,
                        labels: Optional[Dict[str, int]] = None, channel_names: Optional[Dict[str, str]] = None,
                        image_interpolation: str = "linear") -> ConversionResult:
    """Like ``convert`` but returns the folder together with the report of what was repaired."""
    if layout not in LAYOUTS:
        raise ConversionError(f"unknown layout {layout!r} (use one of {list(LAYOUTS)})")
    options = ReadOptions(clip_percentiles=clip_percentiles, target_spacing=target_spacing,
                          image_interpolation=image_interpolation)
    if layout == "auto":
        layout = detect_layout(input_dir)
        log.info("%s: detected the %s layout", input_dir, layout)
    if layout == "pancreas":
        if labels_csv or masks_dir or patient_column:
            raise ConversionError(f"{input_dir}: the pancreas layout takes classes from folders and masks from "
                                  f"next to the images; labels_csv / masks_dir / patient_column do not apply")
        target_name, classes = _pancreas_classes(spec_json)
        return convert_pancreas(input_dir, raw_root, dataset_id, name, classes=classes, target_name=target_name,
                                labels=labels, channel_names=channel_names, options=options, overwrite=overwrite)
    images_dir = _first_dir(input_dir, IMAGE_DIRS) or input_dir
    masks_dir = masks_dir or _first_dir(input_dir, MASK_DIRS)
    test_dir = test_dir or _first_dir(input_dir, TEST_DIRS)
    labels_csv = labels_csv or os.path.join(input_dir, LABELS_CSV)
    if not os.path.isfile(labels_csv):
        raise ConversionError(f"{labels_csv}: labels CSV not found (case_id + one column per target)")
    if layout in KIND_OF_LAYOUT:
        want = KIND_OF_LAYOUT[layout]
        for path in scan_folder(images_dir).values():
            if image_kind(path) != want:
                raise ConversionError(f"{path}: layout {layout!r} expects {want} images")
    return convert_generic(images_dir, raw_root, dataset_id, name, labels_csv, masks_dir=masks_dir,
                           test_dir=test_dir, spec_json=spec_json, patient_column=patient_column, labels=labels,
                           channel_names=channel_names, options=options, overwrite=overwrite)


def convert(input_dir: str, raw_root: str, dataset_id: int, name: str, layout: str = "auto",
            labels_csv: Optional[str] = None, spec_json: Optional[str] = None, masks_dir: Optional[str] = None,
            test_dir: Optional[str] = None, patient_column: Optional[str] = None,
            clip_percentiles: Optional[Sequence[float]] = DEFAULT_CLIP,
            target_spacing: Optional[Sequence[float]] = None, overwrite: bool = False, **kwargs) -> str:
    """Convert ``input_dir`` to ``raw_root/DatasetXXX_name`` and return that folder; prints what was repaired.

    ``target_spacing`` is in numpy (z, y, x) / (y, x) order; ``clip_percentiles=None`` disables clipping of
    2D radiographs. Extra keywords: ``labels``, ``channel_names``, ``image_interpolation``."""
    result = convert_with_report(input_dir, raw_root, dataset_id, name, layout, labels_csv, spec_json, masks_dir,
                                 test_dir, patient_column, clip_percentiles, target_spacing, overwrite, **kwargs)
    summary = result.report.summary()
    log.info("%s\n%s", result.folder, summary)
    print(f"{result.folder}: {summary}")
    return result.folder
