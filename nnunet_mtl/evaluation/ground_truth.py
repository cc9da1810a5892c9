"""Where the true image-level values come from: a labels CSV, a dataset.json ``mtl`` block (read
through ``DatasetSpec``) or the class subfolders of the pancreas challenge layout.

Without an explicit spec, kinds and class order come from the predictions CSV header, so the
positive class and the probability columns match the model. Label rows for cases that are not
evaluated are ignored later (a labels CSV often covers the whole dataset).
"""
from __future__ import annotations

import csv
from typing import Mapping, Optional

from nnunet_mtl import prediction_table
from nnunet_mtl.dataset_spec import DatasetSpec
from nnunet_mtl.evaluation.discovery import find_masks
from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.targets import (CLASSIFICATION, MISSING_TOKENS, CaseTable, Target, TargetSpec, TargetSpecError,
                                load_spec_file, read_labels_csv)


def prediction_header_spec(csv_path: str) -> TargetSpec:
    """The targets (kinds, class order) a predictions CSV carries."""
    try:
        return prediction_table.read_header_spec(csv_path)
    except TargetSpecError as e:
        raise EvaluationError(str(e)) from None


def _spec_for_labels_csv(labels_csv: str, header: TargetSpec) -> Optional[TargetSpec]:
    """The predicted targets that have a labels column, with the model's kinds and class order
    (None -> let ``read_labels_csv`` infer). A target may have missing labels when a cell is empty."""
    try:
        with open(labels_csv, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return None  # read_labels_csv reports it
    columns = set(rows[0]) if rows else set()
    common = [t for t in header if t.name in columns]
    if not common:
        return None
    missing = {t.name: any(str(r.get(t.name) or "").strip().lower() in MISSING_TOKENS for r in rows) for t in common}
    return TargetSpec(tuple(Target(t.name, t.kind, classes=t.classes, allow_missing=missing[t.name]) for t in common))


def folder_labels(groups: Mapping[str, str], header: Optional[TargetSpec]) -> CaseTable:
    """Class of each case from its subfolder name (pancreas challenge layout)."""
    cls_targets = header.classification_targets if header is not None else []
    if len(cls_targets) == 1:
        target = cls_targets[0]
    elif not cls_targets:
        target = Target("subtype", CLASSIFICATION, classes=tuple(sorted(set(groups.values()))))
    else:
        raise EvaluationError("the predictions have several classification targets; subfolder names can "
                              "label only one: give --labels_csv or --dataset_json")
    try:
        return CaseTable.from_mapping(TargetSpec((target,)), {c: {target.name: g} for c, g in groups.items()},
                                      source="ground-truth subfolders")
    except TargetSpecError as e:
        raise EvaluationError(str(e)) from None


def load_labels(labels_csv: Optional[str] = None, dataset_json: Optional[Mapping] = None,
                spec_json: Optional[str] = None, prediction_csv: Optional[str] = None,
                gt_dir: Optional[str] = None) -> Optional[CaseTable]:
    """The GT table from a labels CSV, a dataset.json ``mtl`` block or subtype folders (in that order);
    None when none of them is given."""
    try:
        spec = load_spec_file(spec_json) if spec_json else None
        header = prediction_header_spec(prediction_csv) if prediction_csv else None
        if labels_csv:
            if spec is None and header is not None:
                spec = _spec_for_labels_csv(labels_csv, header)
            return read_labels_csv(labels_csv, spec)
        if dataset_json is not None:
            table = DatasetSpec.from_dataset_json(dataset_json).table
            if spec is not None:
                table = CaseTable.from_mapping(spec, table.to_json(), source="dataset.json")
            return table
    except TargetSpecError as e:
        raise EvaluationError(str(e)) from None
    if gt_dir and prediction_csv:
        _, groups = find_masks(gt_dir)
        if groups:
            return folder_labels(groups, spec or header)
    return None
