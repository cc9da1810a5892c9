"""Outputs made after prediction from the files the predictor left in its output folder.

- ``write_dicom_folder``: ``OUT/dicom/<case>/<case>_seg.dcm`` + ``<case>_sr.dcm`` for every case
  whose input was DICOM (a radiograph file or a series folder, as recorded in
  ``OUT/.converted_inputs/conversions.json``); the other cases are named in one line and skipped.
- ``write_report_folder``: ``OUT/report/index.html`` + ``cases/<case>.html|png``, with the
  Grad-CAM overlay of ``OUT/explanations/`` when ``--explain`` ran.

Both read only what prediction wrote (``predictions.csv``, the masks, the converted inputs and
their manifest) and the model folder's ``dataset.json`` / ``plans.json`` (for a frozen-heads folder: its
``frozen_heads.json`` and the stock model's ``dataset.json``), so they can be re-run on a finished output folder.
"""
from __future__ import annotations

import csv
import glob
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Mapping

from nnunet_mtl.conversion.provenance import load_manifest
from nnunet_mtl.dataset_spec import DatasetSpec, targets_from_plans
from nnunet_mtl.conversion.file_names import predicted_mask, safe_name
from nnunet_mtl.inference.folders import CONVERTED_INPUTS
from nnunet_mtl.io_utils import read_json
from nnunet_mtl.prediction_table import CALIBRATED_COLUMN, CASE_COLUMN, YES
from nnunet_mtl.inference.record import CSV_NAME
from nnunet_mtl.targets import TargetSpec

log = logging.getLogger(__name__)

DICOM_DIR = "dicom"
REPORT_DIR = "report"
EXPLANATIONS_DIR = "explanations"
SEG_TYPES = ("binary", "fractional")


@dataclass
class ModelFacts:
    """What the post-prediction outputs need from a model folder."""
    spec: TargetSpec
    file_ending: str
    has_masks: bool
    label_values: Dict[str, int] = field(default_factory=dict)   # structure name -> value in the exported mask

    @classmethod
    def from_model_folder(cls, model_dir: str) -> "ModelFacts":
        """Any model folder of ours (trained, or made by ``nnunet_mtl_add_heads``)."""
        dataset_json = read_json(os.path.join(model_dir, "dataset.json"))
        spec = targets_from_plans(read_json(os.path.join(model_dir, "plans.json")))
        return cls(spec, dataset_json["file_ending"], DatasetSpec.from_dataset_json(dataset_json).has_masks,
                   exported_label_values(dataset_json))


def exported_label_values(dataset_json: Mapping) -> Dict[str, int]:
    """Structure name -> its value in nnU-Net's exported masks (region-based datasets export the
    i-th region as ``regions_class_order[i]``); background left out."""
    labels = dataset_json.get("labels", {})
    order = dataset_json.get("regions_class_order")
    named = [(k, v) for k, v in labels.items() if not (isinstance(v, int) and v == 0)]
    if order:
        return {k: int(o) for (k, _), o in zip(named, order)}
    return {k: int(v) for k, v in named if isinstance(v, int)}


def read_rows(output_dir: str) -> List[dict]:
    """``predictions.csv``'s rows as written (strings), in case order."""
    path = os.path.join(output_dir, CSV_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no predictions to make outputs from; predict first")
    with open(path, newline="", encoding="utf-8-sig") as f:
        return sorted(csv.DictReader(f), key=lambda r: r[CASE_COLUMN])


def case_sources(output_dir: str) -> Dict[str, List[str]]:
    """Case id -> the user's input paths, from the converted-input manifest ({} when nothing was converted:
    inputs already in nnU-Net's format are not DICOM)."""
    return {cid: list(rec.get("sources", [])) for cid, rec in
            load_manifest(os.path.join(output_dir, CONVERTED_INPUTS)).items()}


# --------------------------------------------------------------------------------------------- DICOM
STALE_DIR = ".stale"  # outputs of an earlier run that this run was not asked to make


def retire_unrequested(output_dir: str, requested: Mapping[str, bool]) -> List[str]:
    """Move the folders an earlier run made (``DICOM_DIR``, ``REPORT_DIR``, ``EXPLANATIONS_DIR``) that this run
    was not asked to make (``requested[name]`` false) to ``OUT/.stale/<name>`` (one earlier copy kept), one line
    each: they describe earlier masks and rows, and a report would show stale Grad-CAM overlays. Returns what
    was moved."""
    moved = []
    for name in (DICOM_DIR, REPORT_DIR, EXPLANATIONS_DIR):
        path = os.path.join(output_dir, name)
        if requested.get(name) or not os.path.isdir(path):
            continue
        target = os.path.join(output_dir, STALE_DIR, name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(path, target)
        print(f"{path}: from an earlier run, not asked for this time; moved to {target}")
        moved.append(target)
    return moved


def write_dicom_folder(model_dir: str, output_dir: str, seg_type: str = "binary") -> Dict[str, Dict[str, str]]:
    """SEG + SR per DICOM case into ``output_dir/dicom/<case>/``; returns case -> {"seg", "sr"} paths.

    ``seg_type='fractional'`` needs nnU-Net's ``.npz`` probabilities (``--save_probabilities``).
    A case whose objects cannot be made (e.g. a source without the UIDs a derived object must
    reference) is reported in one line and skipped; the other cases are still written."""
    from nnunet_mtl.outputs.dicom.source import DicomOutputError, dicom_source_files
    from nnunet_mtl.outputs.dicom.writer import write_case_outputs
    if seg_type not in SEG_TYPES:
        raise ValueError(f"DICOM SEG type must be one of {SEG_TYPES}, got {seg_type!r}")
    model = ModelFacts.from_model_folder(model_dir)
    sources = case_sources(output_dir)
    written: Dict[str, Dict[str, str]] = {}
    not_dicom: List[str] = []
    for row in read_rows(output_dir):
        cid = row[CASE_COLUMN]
        source = (sources.get(cid) or [None])[0]
        if source is None or dicom_source_files(source) is None:
            not_dicom.append(cid)
            continue
        mask = predicted_mask(output_dir, cid, model.file_ending) if model.has_masks else None
        if model.has_masks and mask is None:
            print(f"{cid}: no predicted mask {os.path.join(output_dir, cid + model.file_ending)}; SR only")
        probs = os.path.join(output_dir, cid + ".npz") if seg_type == "fractional" and mask else None
        if probs is not None and not os.path.isfile(probs):
            raise FileNotFoundError(f"{probs}: a fractional DICOM SEG needs the probabilities (--save_probabilities)")
        try:
            written[cid] = write_case_outputs(source, mask, model.label_values, row,
                                              os.path.join(output_dir, DICOM_DIR, cid), model.spec,
                                              probabilities_file=probs,
                                              calibrated=row.get(CALIBRATED_COLUMN) == YES)
        except DicomOutputError as e:
            print(f"{cid}: no DICOM SEG/SR: {e}")
    if not_dicom:
        shown = ", ".join(not_dicom[:5]) + (", ..." if len(not_dicom) > 5 else "")
        print(f"{len(not_dicom)} case(s) whose input was not DICOM, no DICOM SEG/SR: {shown}")
    if written:
        print(f"{os.path.join(output_dir, DICOM_DIR)}: DICOM SEG/SR for {len(written)} case(s)")
    return written


# --------------------------------------------------------------------------------------------- report
def gradcam_overlays(output_dir: str, case_ids, spec: TargetSpec) -> Dict[str, str]:
    """Case id -> the Grad-CAM overlay PNG of its first classification target that has one
    (``--explain`` writes ``explanations/<case>_<target>-<class>_<method>_overlay.png``)."""
    root = os.path.join(output_dir, EXPLANATIONS_DIR)
    out = {}
    for cid in case_ids:
        for t in spec.classification_targets:
            stem = glob.escape(f"{cid}_{safe_name(t.name)}-")
            found = sorted(glob.glob(os.path.join(root, stem + "*_overlay.png"))
                           + glob.glob(os.path.join(root, glob.escape(cid), stem + "*_overlay.png")))
            if found:
                out[cid] = found[0]
                break
    return out


def write_report_folder(model_dir: str, output_dir: str, image_folder: str) -> str:
    """``output_dir/report/``: a page per case (image = ``image_folder/<case>_0000.nii.gz``, the
    converted input nnU-Net read; mask outline; Grad-CAM overlay when ``--explain`` ran) and the
    index over every case of ``predictions.csv``; returns the index path."""
    from nnunet_mtl.outputs.report.folder import write_folder_report
    model = ModelFacts.from_model_folder(model_dir)
    rows = read_rows(output_dir)
    case_ids = [r[CASE_COLUMN] for r in rows]
    images = {c: p for c in case_ids if os.path.isfile(p := os.path.join(image_folder, f"{c}_0000.nii.gz"))}
    masks = None
    if model.has_masks:
        masks = {c: p for c in case_ids if (p := predicted_mask(output_dir, c, model.file_ending))}
    calibrated = bool(rows) and all(r.get(CALIBRATED_COLUMN) == YES for r in rows)
    index = write_folder_report(os.path.join(output_dir, REPORT_DIR), os.path.join(output_dir, CSV_NAME),
                                model.spec, images, mask_files=masks,
                                cam_pngs=gradcam_overlays(output_dir, case_ids, model.spec),
                                label_names=model.label_values, calibrated=calibrated)
    print(f"{index}: review pages for {len(images)} of {len(rows)} case(s)")
    return index

