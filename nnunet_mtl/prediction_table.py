"""The per-case predictions table (``predictions.csv`` / ``predictions.json``): one row per case.

Columns: ``case_id``; per classification target ``T``: ``T`` (predicted class name) and
``T_prob_<class>`` for every class; per regression target ``T``: ``T`` in original units.
The predictor writes it, evaluation and the notebook read it; both go through here.
"""
from __future__ import annotations

import csv
import math
from typing import Dict, List, Mapping, Sequence

import numpy as np

from nnunet_mtl.io_utils import atomic_write_csv, atomic_write_json
from nnunet_mtl.targets import TargetSpec, TargetSpecError

CASE_COLUMN = "case_id"


def prob_column(target: str, class_name: str) -> str:
    return f"{target}_prob_{class_name}"


def columns(spec: TargetSpec) -> List[str]:
    cols = [CASE_COLUMN]
    for t in spec:
        cols.append(t.name)
        if t.is_classification:
            cols.extend(prob_column(t.name, c) for c in t.classes)
    return cols


def make_row(spec: TargetSpec, case_id: str, outputs: Mapping[str, np.ndarray]) -> dict:
    """outputs: target -> class probabilities (classification) or a value in original units."""
    row = {CASE_COLUMN: case_id}
    for t in spec:
        value = np.asarray(outputs[t.name], dtype=np.float64).reshape(-1)
        if t.is_classification:
            row[t.name] = t.classes[int(np.argmax(value))]
            for c, p in zip(t.classes, value):
                row[prob_column(t.name, c)] = float(p)
        else:
            row[t.name] = float(value[0])
    return row


def write(csv_path: str, json_path: str, spec: TargetSpec, rows: Sequence[Mapping]) -> None:
    rows = sorted(rows, key=lambda r: r[CASE_COLUMN])
    atomic_write_csv(csv_path, rows, columns(spec))
    if json_path:
        atomic_write_json(json_path, {"targets": spec.to_json(), "cases": list(rows)})


def read(csv_path: str, spec: TargetSpec) -> Dict[str, dict]:
    """case_id -> {target: predicted value, 'probs': {target: np.ndarray}}; checks the columns."""
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in columns(spec) if c not in header]
        if missing:
            raise TargetSpecError(f"{csv_path}: missing column(s) {missing}")
        out = {}
        for r in reader:
            cid = r[CASE_COLUMN]
            entry = {"probs": {}}
            for t in spec:
                if t.is_classification:
                    if r[t.name] not in t.classes:
                        raise TargetSpecError(f"{csv_path}: case {cid!r}: unknown class {r[t.name]!r} for {t.name!r}")
                    entry[t.name] = r[t.name]
                    entry["probs"][t.name] = np.array([float(r[prob_column(t.name, c)]) for c in t.classes])
                else:
                    v = float(r[t.name]) if r[t.name] not in ("", None) else math.nan
                    entry[t.name] = v
            out[cid] = entry
    return out
