"""Per-case head outputs -> ``predictions.csv`` / ``predictions.json`` in an output folder, merged
under a file lock with the rows already there, so ``-num_parts/-part_id`` processes (and re-runs
that skip finished cases) can share a folder."""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from typing import Dict, Mapping

import numpy as np

from nnunet_mtl import prediction_table
from nnunet_mtl.targets import TargetSpec

CSV_NAME, JSON_NAME = "predictions.csv", "predictions.json"
LOCK_NAME = ".predictions.lock"


def merge_into_folder(folder: str, spec: TargetSpec, outputs: Mapping[str, Dict[str, np.ndarray]],
                      calibrated: bool = False) -> str:
    """Add or replace these cases' rows in folder/predictions.csv|json (``calibrated``: these cases'
    probabilities are temperature-scaled; rows already there keep their own flag); return the CSV path."""
    csv_path = os.path.join(folder, CSV_NAME)
    with _locked(os.path.join(folder, LOCK_NAME)):
        rows = {}
        if os.path.isfile(csv_path):
            try:
                for cid, entry in prediction_table.read(csv_path, spec).items():
                    rows[cid] = prediction_table.make_row(spec, cid, _entry_outputs(spec, entry), entry["calibrated"])
            except Exception as e:
                raise RuntimeError(f"{csv_path}: existing predictions table does not match this model ({e}); "
                                   f"move it away or choose another output folder") from None
        for cid, out in outputs.items():
            rows[cid] = prediction_table.make_row(spec, cid, out, calibrated)
        prediction_table.write(csv_path, os.path.join(folder, JSON_NAME), spec, list(rows.values()))
    return csv_path


def _entry_outputs(spec: TargetSpec, entry: dict) -> Dict[str, np.ndarray]:
    return {t.name: entry["probs"][t.name] if t.is_classification else np.array([entry[t.name]]) for t in spec}


@contextmanager
def _locked(lock_path: str):
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
