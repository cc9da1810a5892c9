"""Per-case head outputs -> ``predictions.csv`` / ``predictions.json`` in an output folder.

Each case's row is appended, as the case finishes, to an append-only record
(``OUT/.predictions.jsonl``: one JSON line per case, flushed and fsynced) with the model it came
from and its input (``prediction_provenance``). ``publish`` turns the record into the tables and
``predictions_provenance.json`` atomically, with only the rows still valid (current model, current
input, mask present). A killed run loses at most the cases in flight; every write happens under one
file lock, so ``-num_parts/-part_id`` processes (and re-runs) can share a folder.
"""
from __future__ import annotations

import csv
import fcntl
import json
import os
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, List, Mapping, Optional

import numpy as np

from nnunet_mtl import prediction_table
from nnunet_mtl.conversion.file_names import predicted_mask_endings
from nnunet_mtl.io_utils import atomic_write_json, atomic_write_text
from nnunet_mtl.targets import TargetSpec

CSV_NAME, JSON_NAME = "predictions.csv", "predictions.json"
LOCK_NAME = ".predictions.lock"
RECORD_NAME = ".predictions.jsonl"
PROVENANCE_NAME = "predictions_provenance.json"
SIDE_ENDINGS = (".npz", ".pkl")  # nnU-Net's probability files next to a mask


class PredictionRecord:
    """The append-only record of one output folder; the latest line of a case is its row."""

    def __init__(self, folder: str, spec: TargetSpec):
        self.folder, self.spec = folder, spec
        self.path = os.path.join(folder, RECORD_NAME)
        self.lock_path = os.path.join(folder, LOCK_NAME)

    def append(self, case_id: str, outputs: Mapping[str, np.ndarray], model: str, source: Mapping,
               calibrated: bool = False, review: Optional[Mapping[str, str]] = None) -> None:
        """Record one finished case (``review``: its conformal columns); on disk (fsynced) when this returns."""
        line = json.dumps({"case_id": case_id, "model": model, "input": dict(source), "calibrated": bool(calibrated),
                           "outputs": {k: np.asarray(v, np.float64).reshape(-1).tolist() for k, v in outputs.items()},
                           "review": dict(review or {})})
        with _locked(self.lock_path), open(self.path, "ab+") as f:
            f.seek(0, os.SEEK_END)
            cut = f.tell() > 0 and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n"  # a line cut short by a kill
            f.write(("\n" if cut else "").encode() + line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def latest(self) -> Dict[str, dict]:
        with _locked(self.lock_path):
            return self._read()

    def _read(self) -> Dict[str, dict]:
        """case id -> its latest line; a line cut short by a kill is ignored."""
        out: Dict[str, dict] = {}
        if not os.path.isfile(self.path):
            return out
        with open(self.path) as f:
            for text in f:
                try:
                    entry = json.loads(text)
                    out[entry["case_id"]] = entry
                except (ValueError, KeyError, TypeError):
                    continue
        return out

    def remove(self, case_ids: Iterable[str]) -> None:
        """Drop these cases' lines (their inputs are gone)."""
        gone = set(case_ids)
        with _locked(self.lock_path):
            kept = [e for cid, e in self._read().items() if cid not in gone]
            self._rewrite(kept)

    def publish(self, valid: Callable[[str, dict], bool], provenance: Mapping) -> str:
        """Write predictions.csv|json from the valid latest lines, and predictions_provenance.json
        (``provenance`` plus each row's input); compacts the record. Returns the CSV path."""
        csv_path = os.path.join(self.folder, CSV_NAME)
        with _locked(self.lock_path):
            latest = self._read()
            self._rewrite(list(latest.values()))
            rows = {cid: e for cid, e in latest.items() if valid(cid, e)}
            prediction_table.write(csv_path, os.path.join(self.folder, JSON_NAME), self.spec,
                                   [prediction_table.make_row(self.spec, cid, e["outputs"], e.get("calibrated", False),
                                                              e.get("review"))
                                    for cid, e in rows.items()])
            atomic_write_json(os.path.join(self.folder, PROVENANCE_NAME),
                              {**provenance, "cases": {cid: e["input"] for cid, e in sorted(rows.items())}})
        return csv_path

    def _rewrite(self, entries: List[dict]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(e) + "\n" for e in entries))


def table_case_ids(folder: str) -> List[str]:
    """Case ids in an existing predictions.csv (any columns; empty when there is none)."""
    path = os.path.join(folder, CSV_NAME)
    if not os.path.isfile(path):
        return []
    with open(path, newline="", encoding="utf-8-sig") as f:
        return [r.get(prediction_table.CASE_COLUMN) or "" for r in csv.DictReader(f)]


def remove_case_files(folder: str, case_id: str, file_ending: str) -> None:
    """The case's mask (either format, ``file_names.predicted_mask_endings``) and probability files."""
    for ending in predicted_mask_endings(file_ending) + SIDE_ENDINGS:
        path = os.path.join(folder, case_id + ending)
        if os.path.isfile(path):
            os.remove(path)


def replace_case_files(folder: str, case_id: str, staged_mask: str, file_ending: str) -> str:
    """Put a case's finished mask (and the probability files nnU-Net wrote beside it, if any) in place of its old
    files: the mask by one rename over the old one, then the old files of other endings removed. Returns the
    mask's final path."""
    staging = os.path.dirname(staged_mask)
    final = os.path.join(folder, os.path.basename(staged_mask))
    os.replace(staged_mask, final)
    for ending in predicted_mask_endings(file_ending) + SIDE_ENDINGS:
        path = os.path.join(folder, case_id + ending)
        new = os.path.join(staging, case_id + ending)
        if os.path.isfile(new):
            os.replace(new, path)
        elif path != final and os.path.isfile(path):
            os.remove(path)
    return final


def merge_into_folder(folder: str, spec: TargetSpec, outputs: Mapping[str, Dict[str, np.ndarray]],
                      calibrated: bool = False, review: Optional[Mapping[str, Mapping[str, str]]] = None) -> str:
    """Add or replace these cases' rows in folder/predictions.csv|json, without provenance (nnU-Net's
    own entry points called directly; ``inference.predict_folder`` goes through the record).
    ``calibrated``: these cases' probabilities are temperature-scaled; ``review``: case -> its conformal columns;
    rows already there keep theirs."""
    csv_path = os.path.join(folder, CSV_NAME)
    with _locked(os.path.join(folder, LOCK_NAME)):
        rows = {}
        if os.path.isfile(csv_path):
            try:
                for cid, entry in prediction_table.read(csv_path, spec).items():
                    rows[cid] = prediction_table.make_row(spec, cid, _entry_outputs(spec, entry), entry["calibrated"],
                                                          entry["review"])
                    rows[cid].update(entry.get("checks", {}))  # the case checks' columns stay
            except Exception as e:
                raise RuntimeError(f"{csv_path}: existing predictions table does not match this model ({e}); "
                                   f"move it away or choose another output folder") from None
        for cid, out in outputs.items():
            rows[cid] = prediction_table.make_row(spec, cid, out, calibrated, (review or {}).get(cid))
        prediction_table.write(csv_path, os.path.join(folder, JSON_NAME), spec, list(rows.values()))
    return csv_path


def _entry_outputs(spec: TargetSpec, entry: dict) -> Dict[str, np.ndarray]:
    return {t.name: entry["probs"][t.name] if t.is_classification else np.array([entry[t.name]]) for t in spec}


@contextmanager
def _locked(lock_path: str):
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
