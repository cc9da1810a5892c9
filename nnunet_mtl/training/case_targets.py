"""Case-level targets for a batch, looked up by the case keys nnU-Net's dataloader returns.

``batch['keys']`` survives augmentation (transforms only touch data/target), so each sample's
image-level label is found by its case id, in 2D (slices of a case) and 3D alike.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np
import torch

from nnunet_mtl.training.losses import IGNORE_INDEX
from nnunet_mtl.targets import CaseTable


class CaseTargets:
    """Encoded targets per case: class index (-1 when missing) or float (NaN when missing)."""

    def __init__(self, table: CaseTable):
        self.spec = table.spec
        self._encoded: Dict[str, Dict[str, float]] = {}
        for cid in table.case_ids:
            row = {}
            for t in self.spec:
                v = table.value(cid, t.name)
                if t.is_classification:
                    row[t.name] = IGNORE_INDEX if v is None else t.classes.index(v)
                else:
                    row[t.name] = math.nan if v is None else float(v)
            self._encoded[cid] = row

    def for_keys(self, keys: Sequence[str]) -> Dict[str, torch.Tensor]:
        out = {}
        for t in self.spec:
            try:
                vals = [self._encoded[str(k)][t.name] for k in keys]
            except KeyError as e:
                raise KeyError(f"case {e.args[0]!r} has no image-level labels in dataset.json") from None
            out[t.name] = torch.tensor(vals, dtype=torch.long if t.is_classification else torch.float32)
        return out

    def regression_stats(self, keys: Iterable[str]) -> Dict[str, Tuple[float, float]]:
        """Mean and std of each regression target over the given (training) cases."""
        stats = {}
        for t in self.spec.regression_targets:
            vals = np.array([self._encoded[k][t.name] for k in keys], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                stats[t.name] = (0.0, 1.0)
            else:
                std = float(vals.std())
                stats[t.name] = (float(vals.mean()), std if std > 1e-8 else 1.0)
        return stats
