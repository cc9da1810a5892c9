"""Head outputs of one case, gathered by one explicit object while nnU-Net's sliding window runs.

Life cycle, driven by the predictor (``predictor.py``) for every caller (the threaded engine,
nnU-Net's process-pool path, the trainer's final validation, Grad-CAM, quick classify)::

    collector.begin_case(case_id, aggregation)
    for each fold:     collector.begin_fold(); collector.add_tile(fg, outputs) per tile; collector.end_fold()
    heads = collector.end_case()          # CaseHeads: the case's outputs and every tile

``begin_fold`` may be called again for the same fold: nnU-Net retries a sliding window on the
CPU after running out of GPU memory, and the retry's tiles replace the failed attempt's.
Outside a case nothing is gathered (the predictor then behaves exactly like nnU-Net's).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch

from nnunet_mtl.inference.case_aggregation import Aggregation, average_folds


@dataclass
class FoldTiles:
    """One fold's sliding window over a case: per tile its foreground fraction and head outputs."""
    foreground: np.ndarray                       # (n_tiles,)
    outputs: Dict[str, np.ndarray]               # target -> (n_tiles, k)
    combined: Dict[str, np.ndarray]              # target -> (k,): the tiles aggregated


@dataclass
class CaseHeads:
    """The per-case result: ``outputs`` (target -> probabilities or value, folds averaged)."""
    case_id: Optional[str]
    outputs: Dict[str, np.ndarray]
    aggregation: Aggregation
    folds: List[FoldTiles] = field(default_factory=list)


class CaseCollector:
    def __init__(self):
        self._case_id: Optional[str] = None
        self._aggregation: Optional[Aggregation] = None
        self._folds: List[FoldTiles] = []
        self._tiles: Optional[list] = None       # (fg, outputs) of the open fold, still on the device
        self.in_case = False

    def begin_case(self, case_id: Optional[str], aggregation: Aggregation) -> None:
        if self.in_case:
            raise RuntimeError(f"case {self._case_id!r} is still open; end or abort it before {case_id!r}")
        self._case_id, self._aggregation, self._folds, self._tiles = case_id, aggregation, [], None
        self.in_case = True

    def begin_fold(self) -> None:
        self._require_case()
        self._tiles = []

    def add_tile(self, foreground: torch.Tensor, outputs: Dict[str, torch.Tensor]) -> None:
        """``foreground``: 0-d tensor; ``outputs``: target -> (k,) tensor. Kept on the device until
        the fold ends: converting here would make the CPU wait for the GPU on every tile."""
        if self._tiles is None:
            raise RuntimeError("add_tile outside a fold (call begin_fold first)")
        self._tiles.append((foreground, outputs))

    def end_fold(self) -> None:
        if not self._tiles:
            raise RuntimeError(f"case {self._case_id!r}: no tiles were predicted for this fold")
        fg = torch.stack([torch.as_tensor(f).float().reshape(()) for f, _ in self._tiles]).cpu().numpy()
        names = self._tiles[0][1].keys()
        outputs = {n: torch.stack([t[n].float() for _, t in self._tiles]).cpu().numpy() for n in names}
        self._folds.append(FoldTiles(fg, outputs, self._aggregation.combine(fg, outputs)))
        self._tiles = None

    def end_case(self) -> CaseHeads:
        self._require_case()
        if self._tiles is not None:
            raise RuntimeError(f"case {self._case_id!r}: a fold was begun but not ended")
        if not self._folds:
            raise RuntimeError(f"case {self._case_id!r}: no fold was predicted")
        heads = CaseHeads(self._case_id, average_folds([f.combined for f in self._folds]), self._aggregation,
                          self._folds)
        self.abort_case()
        return heads

    def abort_case(self) -> None:
        """Drop the open case (after an error), so the next one can begin."""
        self._case_id, self._aggregation, self._folds, self._tiles = None, None, [], None
        self.in_case = False

    def _require_case(self) -> None:
        if not self.in_case:
            raise RuntimeError("no case is open (call begin_case first)")
