"""What a prediction came from: the model (per fold its checkpoint, the settings that change results)
and, per case, its input (source files and their content).

A row in the prediction record (``prediction_merge``) is kept by a re-run only while both still
hold: a retrained fold, another step size, mirroring or backend, refitted heads (written into the checkpoints), a changed or reconverted
input make the case out of date. Checkpoints are identified by path, size and mtime (cheap; a
retraining rewrites them); a predictor not loaded from a model folder by its weights' hash.
Input files by SHA-256, recomputed only when size or mtime changed (as ``conversion/provenance``).
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence

from nnunet_mtl.conversion.provenance import content_hash, load_manifest, source_stat

if TYPE_CHECKING:  # the engine imports this module's neighbours; only its type is named here
    from nnunet_mtl.inference.predictor import nnUNetPredictorMTL


def model_identity(predictor: "nnUNetPredictorMTL") -> dict:
    """Everything about the loaded model and settings that changes a case's mask or row."""
    files = predictor.checkpoint_files
    if files:
        checkpoints = [{"path": os.path.abspath(p), "size": os.stat(p).st_size, "mtime_ns": os.stat(p).st_mtime_ns}
                       for p in files]
    else:
        checkpoints = [{"weights_sha256": _weights_hash(predictor)}]
    return {"checkpoints": checkpoints,
            "step_size": float(predictor.tile_step_size),
            "use_mirroring": bool(predictor.use_mirroring),
            "backend": predictor.backend,  # OpenVINO's logits differ from torch's by ~1e-5
            "targets": predictor.spec.to_json(),
            "calibration": None if predictor.calibration is None
            else {k: float(v) for k, v in sorted(predictor.calibration.temperatures.items())}}


def model_key(identity: Mapping) -> str:
    """A short fingerprint of ``model_identity``: equal keys, equal results."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_files(model_dir: str, folds: Sequence, checkpoint: str) -> List[str]:
    """The checkpoint file of each fold (``fold_all`` for 'all')."""
    return [os.path.join(model_dir, f"fold_{f}", checkpoint) for f in folds]


def input_identities(prepared, previous: Mapping[str, dict]) -> Dict[str, dict]:
    """Per case of a ``PreparedInputs``: its sources, their SHA-256 and the conversion settings.
    Converted inputs take both from the conversion manifest; inputs read in place (nnU-Net's layout)
    are hashed here, reusing ``previous`` (the last recorded identity) while size and mtime are equal."""
    manifest = load_manifest(prepared.folder)
    out = {}
    for cid, sources in prepared.sources.items():
        sources = [os.path.abspath(p) for p in sources]
        record = manifest.get(cid)
        if record and record.get("sources") == sources:
            out[cid] = {"sources": sources, "sha256": list(record["sha256"]), "settings": record.get("settings")}
            continue
        old = previous.get(cid) or {}
        stats = [source_stat(p) for p in sources]
        same = old.get("sources") == sources and old.get("stat") == stats
        hashes = list(old["sha256"]) if same else [content_hash(p) for p in sources]
        out[cid] = {"sources": sources, "stat": stats, "sha256": hashes, "settings": None}
    return out


def file_identity(path: str) -> dict:
    """One file (or DICOM-series folder) as a record of what was read: path, size, mtime and SHA-256."""
    size, mtime_ns = source_stat(path)
    return {"path": os.path.abspath(path), "size": size, "mtime_ns": mtime_ns, "sha256": content_hash(path)}


def same_input(recorded: Optional[Mapping], current: Mapping) -> bool:
    if not recorded:
        return False
    return all(recorded.get(k) == current.get(k) for k in ("sources", "sha256", "settings"))


def _weights_hash(predictor) -> str:
    h = hashlib.sha256()
    params = predictor.list_of_parameters or [predictor.mtl_network.state_dict()]
    for state in params:
        for name in sorted(state):
            h.update(name.encode())
            h.update(state[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
