"""What an evaluation's numbers came from: ``metrics.json``'s ``provenance`` block.

- ``predictions``: per folder the predictions came from (the masks' folder, the CSV's folder), the
  model that made them, read from its ``predictions_provenance.json`` (``prediction_merge``): its
  ``model_key`` and identity (checkpoints, step size, mirroring, aggregation, calibration); null where
  the folder has none (predictions not written by ``nnunet_mtl_predict`` / the pipeline).
- ``ground_truth``: the mask folder, where the labels came from, and a hash of the labels' content.
- ``files``: every file read (GT masks, predicted masks, the CSV, the labels file) by path, size,
  mtime and SHA-256 (``prediction_provenance.file_identity``).
- ``settings``: what changes the numbers (bootstrap, seed, thresholds, regions, targets, labels).
- ``key``: a fingerprint of the models, the files' contents, the labels and the settings: equal keys,
  equal inputs and settings (a file only touched or copied elsewhere keeps it).

Predictions from more than one model are refused before anything is scored (``check_one_model``):
masks and CSV from folders recorded with different models, a case whose latest recorded prediction
(``.predictions.jsonl``) is from another model than the folder's provenance says (an unfinished
re-run), CSV rows the provenance does not list (rows added by another run).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Iterable, Mapping, Optional

from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.io_utils import read_json
from nnunet_mtl.inference.record import PROVENANCE_NAME, PredictionRecord
from nnunet_mtl.inference.provenance import file_identity


def folder_provenance(folder: str) -> Optional[dict]:
    """The folder's ``predictions_provenance.json`` (None when it has none)."""
    path = os.path.join(folder, PROVENANCE_NAME)
    if not os.path.isfile(path):
        return None
    try:
        data = read_json(path)
    except (OSError, ValueError) as e:
        raise EvaluationError(f"{path}: unreadable ({e})") from None
    if not isinstance(data, dict) or "model_key" not in data:
        raise EvaluationError(f"{path}: not a predictions provenance file (no model_key)")
    return data


def prediction_folders(pred_dir: Optional[str], prediction_csv: Optional[str]) -> Dict[str, str]:
    """role -> folder of each prediction source ('masks', 'csv')."""
    out = {}
    if pred_dir is not None:
        out["masks"] = os.path.abspath(pred_dir)
    if prediction_csv is not None:
        out["csv"] = os.path.dirname(os.path.abspath(prediction_csv))
    return out


def check_one_model(folders: Mapping[str, str], cases: Iterable[str], csv_cases: Iterable[str] = ()) -> None:
    """One line (``EvaluationError``) when the evaluated predictions come from more than one model."""
    cases, csv_cases = sorted(set(cases)), sorted(set(csv_cases))
    seen: Dict[str, str] = {}  # model key -> where it was found
    for folder in sorted(set(folders.values())):
        prov = folder_provenance(folder)
        if prov is None:
            continue
        seen.setdefault(prov["model_key"], f"{os.path.join(folder, PROVENANCE_NAME)}")
        record = PredictionRecord(folder, None)
        latest = record.latest() if os.path.isfile(record.path) else {}
        for cid in cases:
            entry = latest.get(cid)
            if entry is not None and entry.get("model") != prov["model_key"]:
                raise EvaluationError(f"{folder}: case {cid!r} was last predicted by model {entry.get('model')}, "
                                      f"but {PROVENANCE_NAME} names model {prov['model_key']} (an unfinished re-run?); "
                                      f"predict again into this folder to finish it")
        if folders.get("csv") == folder:
            unlisted = [c for c in csv_cases if c not in prov.get("cases", {})]
            if unlisted:
                raise EvaluationError(f"{folder}: {len(unlisted)} row(s) of predictions.csv (first {unlisted[0]!r}) "
                                      f"are not from the model {PROVENANCE_NAME} names; predict again into a "
                                      f"new folder")
    if len(seen) > 1:
        (k1, w1), (k2, w2) = sorted(seen.items())[:2]
        raise EvaluationError(f"the predictions come from two models: {k1} ({w1}) and {k2} ({w2}); "
                              f"evaluate one model's masks and table together")


def evaluation_provenance(folders: Mapping[str, str], gt_dir: Optional[str], gt_paths: Mapping[str, str],
                          pred_paths: Mapping[str, str], prediction_csv: Optional[str], labels,
                          labels_source: Optional[str], settings: Mapping) -> dict:
    """metrics.json's ``provenance`` block (see the module docstring)."""
    predictions = {}
    for role, folder in folders.items():
        prov = folder_provenance(folder)
        predictions[role] = {"folder": folder, "model_key": prov["model_key"] if prov else None,
                             "model": prov.get("model") if prov else None}
    labels_json = labels.to_json() if labels is not None else None
    block = {
        "predictions": predictions,
        "ground_truth": {"gt_dir": os.path.abspath(gt_dir) if gt_dir else None,
                         "labels_source": os.path.abspath(labels_source) if labels_source else None,
                         "labels_sha256": _hash(labels_json) if labels_json is not None else None},
        "files": {"ground_truth_masks": {c: file_identity(p) for c, p in sorted(gt_paths.items())},
                  "predicted_masks": {c: file_identity(p) for c, p in sorted(pred_paths.items())},
                  "prediction_csv": file_identity(prediction_csv) if prediction_csv else None,
                  "labels": file_identity(labels_source) if labels_source and os.path.isfile(labels_source)
                  else None},
        "settings": dict(settings),
    }
    block["key"] = _hash({"models": {r: p["model_key"] for r, p in predictions.items()},
                          "labels": block["ground_truth"]["labels_sha256"], "settings": block["settings"],
                          "files": {role: _content(ids) for role, ids in block["files"].items()}})
    return block


def _content(ids):
    """The content part of file identities (a copied or touched file keeps its key)."""
    if ids is None or "sha256" in ids:
        return ids and ids["sha256"]
    return {c: i["sha256"] for c, i in ids.items()}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
