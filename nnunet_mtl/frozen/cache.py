"""On-disk cache of pooled encoder features, one ``.npz`` per case.

Layout: ``<cache_dir>/<model key>/<case id>.npz``. The model key hashes what decides the features:
each checkpoint file used (absolute path, size, mtime) and the sliding-window settings, so a
retrained or replaced checkpoint gets a new key instead of stale features. Each file also stores
the signature of the case's input files; a case whose input changed is recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from typing import Dict, Optional, Sequence

import numpy as np

FORMAT_VERSION = 1
SIGNATURE_KEY = "__source_signature__"


def file_signature(paths: Sequence[str]) -> str:
    """Absolute path, size and mtime (ns) of each file, as one string."""
    parts = []
    for p in sorted(paths):
        st = os.stat(p)
        parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def model_key(model_folder: str, folds: Sequence, checkpoint: str, settings: dict) -> str:
    """Short hash of the checkpoints' identity and the extraction settings."""
    files = [os.path.join(model_folder, f"fold_{f}", checkpoint) for f in folds]
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: checkpoint not found")
    ident = {"checkpoints": file_signature(files), "settings": settings, "version": FORMAT_VERSION}
    return hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


class FeatureCache:
    """Read/write the pooled features of one model (one key) under ``root``."""

    def __init__(self, root: str, key: str, description: Optional[dict] = None):
        self.folder = os.path.join(root, key)
        os.makedirs(self.folder, exist_ok=True)
        if description is not None:
            info = os.path.join(self.folder, "model.json")
            if not os.path.isfile(info):
                _atomic_write(info, json.dumps(description, indent=1).encode())

    def path(self, case_id: str) -> str:
        return os.path.join(self.folder, f"{case_id}.npz")

    def load(self, case_id: str, signature: str) -> Optional[Dict[str, np.ndarray]]:
        """The cached features, or None when absent, unreadable or computed from other input files."""
        path = self.path(case_id)
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path) as z:
                if str(z[SIGNATURE_KEY]) != signature:
                    return None
                return {k: z[k] for k in z.files if k != SIGNATURE_KEY}
        except (OSError, ValueError, KeyError):
            return None

    def save(self, case_id: str, signature: str, features: Dict[str, np.ndarray]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, **features, **{SIGNATURE_KEY: np.array(signature)})
            os.replace(tmp, self.path(case_id))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _atomic_write(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
