"""Cases to fit heads on, and their pool sums cached on disk, one ``.npz`` per case.

Layout: ``<root>/<U-Net weights hash>/<case id>.npz``: the features depend only on the U-Net's weights (not on
the heads, which fitting rewrites) and on the case's preprocessed files, whose signature (path, size, mtime)
each file stores; a case whose files changed, or whose cached sums lack a pool now asked for, is pooled again.
"""
from __future__ import annotations

import glob
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

from nnunet_mtl.io_utils import atomic_write_text
from nnunet_mtl.model.pooling import PoolRequest, Sums, sum_keys

SIGNATURE_KEY = "__source_signature__"


def file_signature(paths: Sequence[str]) -> str:
    """Absolute path, size and mtime (ns) of each file, as one string."""
    parts = []
    for p in sorted(paths):
        st = os.stat(p)
        parts.append(f"{os.path.abspath(p)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


@dataclass
class CaseSource:
    """One case: its id, a signature of its input files, and how to get its preprocessed array."""
    case_id: str
    signature: str
    load: Callable  # (predictor) -> np.ndarray [C, *spatial], preprocessed with the model's plans


def preprocessed_cases(folder: str, case_ids: Optional[Iterable[str]] = None) -> List[CaseSource]:
    """Cases of an nnU-Net preprocessed data folder (e.g. ``.../nnUNetPlans_3d_fullres``)."""
    dataset = infer_dataset_class(folder)(folder, list(case_ids) if case_ids is not None else None)

    def loader(key):
        def load(_predictor):
            data = dataset.load_case(key)[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(data[:])
        return load

    sources = []
    for key in sorted(dataset.identifiers):
        files = [f for f in glob.glob(os.path.join(folder, glob.escape(key) + ".*"))
                 if os.path.basename(f).split(".", 1)[0] == key]
        sources.append(CaseSource(key, file_signature(files), loader(key)))
    return sources


class FeatureCache:
    """Read/write the pool sums of one U-Net (one key) under ``root``."""

    def __init__(self, root: str, key: str, description: Optional[dict] = None):
        self.folder = os.path.join(root, key[:16])
        os.makedirs(self.folder, exist_ok=True)
        info = os.path.join(self.folder, "model.json")
        if description is not None and not os.path.isfile(info):
            atomic_write_text(info, json.dumps({**description, "unet_sha256": key}, indent=1))

    def path(self, case_id: str) -> str:
        return os.path.join(self.folder, f"{case_id}.npz")

    def load(self, case_id: str, signature: str, request: PoolRequest) -> Optional[Sums]:
        """The cached sums, or None when absent, unreadable, from other input files, or missing a requested pool."""
        path = self.path(case_id)
        if not os.path.isfile(path):
            return None
        try:
            with np.load(path) as z:
                if str(z[SIGNATURE_KEY]) != signature:
                    return None
                return {k: torch.from_numpy(z[k]) for k in sum_keys(request)}
        except (OSError, ValueError, KeyError):
            return None

    def save(self, case_id: str, signature: str, sums: Dict[str, torch.Tensor]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".npz")
        os.close(fd)
        try:
            np.savez(tmp, **{k: v.detach().cpu().numpy() for k, v in sums.items()},
                     **{SIGNATURE_KEY: np.array(signature)})
            os.replace(tmp, self.path(case_id))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
